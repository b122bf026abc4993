"""Paper presets pinned to the protocols of the spec (/work/shared/spec/methods.md): every value its tables give.

One table per preset, {dotted config key: expected value  # spec section}, read through the real config loader
(``load_config``: ``_base_`` merge, type checks, method section), so a changed value fails with the key's name and the
preset file. Keys of the ``method`` section follow the method's config dataclass (SBE/BES: ``method.cam.*``,
``method.labels.*``, ``method.boundary.*``, ``method.walk.*``); update the table when a key moves.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from weakseg.engine.config import load_config
from weakseg.modules.crf import CRF_PRESETS

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

# ---- BLPSeg (spec §2.3 network, §2.5 losses, §2.6 hyper-parameters, §2.7 test protocol, §2.9 oddities) ----------
BLPSEG_COMMON = {
    "data.tags_source": "scribble",                  # §2.2: class vector from the scribbles
    "data.crop_size": 384,                           # §2.6 DATA_RANDOMCROP
    "data.scale_range": (0.75, 1.25),                # §2.6 DATA_RANDOMSCALE
    "data.scale_choices": None,
    "data.image_resize": "bicubic",                  # §2.6: bicubic image / nearest labels
    "data.crop_policy": "paste",                     # §2.6: paste at a uniform random offset, image 0 / labels 255
    "data.flip_prob": 0.5,                           # §2.6 DATA_RANDOMFLIP
    "data.color_jitter": None,                       # §2.9.1: the jitter is computed but never used
    "data.mean": (0.485, 0.456, 0.406),              # §2.6 DATA_MEAN
    "data.std": (0.229, 0.224, 0.225),               # §2.6 DATA_STD
    "model.backbone": "resnet101s",                  # §2.3: PyTorch-Encoding deep-stem ResNet-101
    "model.pretrained": "pretrained/resnet101s-03a0f310.pth",  # §2.3 ImageNet file
    "model.output_stride": 32,                       # §2.3: strides 1, 2, 2, 2, no dilation
    "model.norm": "syncbn",                          # §2.3: synchronized BN
    "model.head": "uper",                            # §2.3: PPM + UPerNet
    "model.head_kwargs": {"pool_scales": [1, 2, 3, 6], "dropout": 0.1},  # §2.3 PPM bins, Dropout2d(0.1)
    "method.name": "blpseg",
    "method.decoder_channels": 256,                  # §2.6 MODEL_PPM_DIM
    "method.use_lam": True,
    "method.lam_sigma": 6.0,                         # §2.6 MODEL_LAM_SIGMA
    "method.use_blp": True,
    "method.gamma": 2.0,                             # §2.6 LOSS_GAMMA
    "method.unlabeled_weight": 0.02,                 # §2.6 LOSS_UNLABEL_CLASS_W
    "method.annotation_weight": 1.0,                 # §2.5(c): L = L_scrib + L_BLP
    "method.pseudo_threshold": 0.9,                  # §2.5(d)
    "optim.name": "adamw",                           # §2.6
    "optim.betas": (0.9, 0.999),                     # §2.6: AdamW defaults
    "optim.weight_decay": 0.01,                      # §2.6 TRAIN_WEIGHT_DECAY
    "optim.lr_mult": {},                             # §2.6: one parameter group, backbone = heads
    "schedule.name": "poly",                         # §2.5b
    "schedule.power": 0.9,                           # §2.6 TRAIN_POWER
    "schedule.warmup_iters": 0,
    "engine.amp": "auto",                            # §2.6: fp16 autocast + GradScaler on CUDA
    "eval.scales": (0.5, 0.75, 1.0, 1.25),           # §2.6 TEST_MULTISCALE
    "eval.flip": True,                               # §2.6 TEST_FLIP
    "eval.average": "logit",                         # §2.7 step 3
    "eval.mode": "whole",                            # §2.7 step 1: whole image, batch 1
    "eval.image_resize": "bicubic",                  # §2.7 step 1
    "eval.align_corners": True,                      # §2.7 step 2
    "eval.crf": None,                                # §2.8: README numbers w/o CRF (§2.9.3)
    "eval.amp": "none",                              # evaluation in fp32
}
BLPSEG_VOC = {
    **BLPSEG_COMMON,
    "data.train_list": "ImageSets/Segmentation/train_aug.txt",  # §2.6 DATA_AUG: train_aug (10,582)
    "data.val_list": "ImageSets/Segmentation/val.txt",          # §2.7 step 5: VOC val (1,449)
    "data.label_dir": "SegmentationClassAug",                   # §2.7 step 5
    "data.scribble_dir": "pascal_2012_label",                   # §2.1: BLPSeg's 1-px scribble folder
    "method.self_training_start": 10000,             # §2.6 TRAIN_ST_POINT
    "optim.lr": 3e-5,                                # §2.6 TRAIN_LR
    "schedule.epochs": 40.0,                         # §2.6 TRAIN_EPOCHS
    "engine.batch_size": 10,                         # §2.6 TRAIN_BATCHES
}
BLPSEG_CONTEXT = {
    **BLPSEG_COMMON,
    "data.root": "data/VOCdevkit/Context",           # §1.3
    "data.train_list": "ImageSets/Segmentation/train.txt",      # §1.3: 4,998
    "data.val_list": "ImageSets/Segmentation/val.txt",          # §1.3: 5,105
    "data.label_dir": "SegmentationClassContext",    # `weakseg data context` (single LUT, §1.3)
    "data.scribble_dir": "pascal_context_scribble",
    "method.self_training_start": 20000,             # §2.6 TRAIN_ST_POINT
    "optim.lr": 2.4e-5,                              # §2.6 TRAIN_LR
    "schedule.epochs": 85.0,                         # §2.6 TRAIN_EPOCHS
    "engine.batch_size": 8,                          # §2.6 TRAIN_BATCHES
}
JITTER = {"data.color_jitter": (0.5, 0.5, 0.5, 0.25)}  # §2.6 DATA_RANDOM_H/S/V: the jitter, applied in `_plus`

# ---- full supervision and partial CE: CDSP's recipe (spec §3.6 training, §3.7 test, §3.8 the F row) -------------
CDSP_RECIPE = {
    "data.train_list": "ImageSets/Segmentation/train_aug.txt",
    "data.val_list": "ImageSets/Segmentation/val.txt",  # §3.7: val (1,449)
    "data.label_dir": "SegmentationClassAug",        # §3.7 GT
    "data.crop_size": 465,                           # §3.6 step 5
    "data.crop_policy": "center",                    # §3.6 step 5: pad evenly around
    "data.scale_range": (0.5, 2.0),                  # §3.6 step 1
    "data.scale_choices": None,
    "data.image_resize": "bilinear",                 # §3.6 step 1
    "data.flip_prob": 0.5,                           # §3.6 step 4
    "data.color_jitter": None,
    "data.mean": (0.485, 0.456, 0.406),              # §3.6: ImageNet mean/std
    "data.std": (0.229, 0.224, 0.225),
    "model.backbone": "resnet101",                   # §3.8: res101 rows
    "model.output_stride": 8,                        # §0: OS 8
    "model.norm": "syncbn",                          # §3.2: synchronized BN
    "model.head": "deeplabv3plus",                   # §3.8: deeplabv3p
    "optim.name": "sgd",                             # §3.6
    "optim.lr": 1e-3,                                # §3.6
    "optim.momentum": 0.9,                           # §3.6
    "optim.weight_decay": 5e-4,                      # §3.6
    "optim.lr_mult": {},                             # §3.6: one group
    "schedule.name": "cosine",                       # §3.6
    "schedule.iters": 33100,                         # §3.6: 662 it/epoch × 50 epochs
    "schedule.epochs": None,
    "schedule.warmup_iters": 3310,                   # §3.6: 5 epochs
    "schedule.warmup_ratio": 0.0,                    # §3.6: linear warm-up from 0
    "schedule.min_lr_ratio": 0.0,                    # §3.6: cosine to 0
    "engine.batch_size": 16,                         # §3.6
    "engine.seed": 1000,                             # §3.6
    "eval.scales": (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0),  # §3.7
    "eval.resize": "long_side",                      # §3.7: long side = round(512·s)
    "eval.long_side": 512,
    "eval.image_resize": "bilinear",
    "eval.mode": "slide",                            # §3.7
    "eval.crop_size": 465,
    "eval.stride": 310,                              # §3.7: ceil(465·2/3)
    "eval.pad": "center",
    "eval.average": "prob",                          # §3.7: probabilities accumulated
    "eval.align_corners": True,                      # §3.7
    "eval.flip": False,                              # §3.7
    "eval.crf": None,                                # §3.7
}
FULL_VOC = {**CDSP_RECIPE, "method.name": "full", "method.label_smoothing": 0.0}
PARTIAL_CE_VOC = {**CDSP_RECIPE, "method.name": "partial_ce",
                  "data.scribble_dir": "pascal_2012_scribble"}  # §1.2: rloss/CDSP 3-px scribbles

# ---- SBE / BES (spec §4.2–4.8); keys of the typed method sections ----------------------------------------------
SBE_VOC = {
    "data.tags_source": "xml",                       # §4.2: tags from the XML object names
    "data.saliency_dir": "Sal",                      # §4.1
    "method.name": "sbe",
    "method.score_list": "ImageSets/Segmentation/train.txt",   # §4.8 --chainer_eval_set train
    "method.cam.model.backbone": "resnet50",         # §4.2
    "method.cam.model.output_stride": 16,            # §4.2: strides (2, 2, 2, 1)
    "method.cam.dilated": False,
    "method.cam.frozen_stages": 2,                   # §4.2: stem, layer1, layer2 receive no gradient
    "method.cam.attention_k": 1e-3,                  # §4.2
    "method.cam.optim.name": "sgd",
    # §4.2: lr 0.1 with momentum ≈ 0 (quirk §4.9.2); 0.01 with momentum 0.9 gives the same long-run step
    "method.cam.optim.lr": 0.01,
    "method.cam.optim.momentum": 0.9,
    "method.cam.optim.weight_decay": 1e-4,           # §4.8 --cam_weight_decay
    "method.cam.optim.lr_mult": {"classifier": 10.0},  # §4.2: classifier 10×
    "method.cam.schedule.name": "poly",
    "method.cam.schedule.power": 0.9,
    "method.cam.schedule.epochs": 5.0,               # §4.8 --cam_num_epoches
    "method.cam.batch_size": 16,                     # §4.8 --cam_batch_size
    "method.cam.resize_long": (320, 512),            # §4.2
    "method.cam.crop_size": 512,                     # §4.8 --cam_crop_size
    "method.cam.scales": (1.0, 0.5, 1.5, 2.0),       # §4.8 --cam_scales
    "method.cam.flip": True,                         # §4.2
    "method.cam.eval_thres": 0.21,                   # §4.8 --cam_eval_thres
    "method.labels.conf_fg_thres": 0.30,             # §4.8
    "method.labels.conf_bg_thres": 0.07,             # §4.8
    "method.labels.crf": "bes_label",                # §4.3 step 1
    "method.labels.window_size": 13,                 # §4.8
    "method.labels.theta_scale": 0.30,               # §4.8
    "method.labels.theta_diff": 0.10,                # §4.8
    "method.labels.salbound_thres": 0.5,             # §4.8 --salbound_thres
    "method.labels.sal_bg_thres": 0.0,               # §4.3: exact S = 0 test
    "method.boundary.model.backbone": "resnet50",    # §4.4
    "method.boundary.model.output_stride": 16,
    "method.boundary.dilated": False,
    "method.boundary.optim.name": "sgd",
    "method.boundary.optim.lr": 0.01,                # §4.5: 0.1 with the momentum quirk, as for the CAM net
    "method.boundary.optim.momentum": 0.9,
    "method.boundary.optim.weight_decay": 1e-4,      # §4.5
    "method.boundary.schedule.name": "poly",
    "method.boundary.schedule.epochs": 3.0,          # §4.8 --bes_num_epoches
    "method.boundary.batch_size": 16,                # §4.8 --bes_batch_size
    "method.boundary.scale_range": (0.5, 1.5),       # §4.5
    "method.boundary.crop_size": 512,                # §4.8 --bes_crop_size
    "method.walk.beta": 5.0,                         # §4.8 --beta
    "method.walk.exp_times": 8,                      # §4.8 --exp_times
    "method.walk.radius": 5,                         # §4.6
    "method.walk.bg_thres": 0.21,                    # §4.8 --sem_seg_bg_thres
    # final DeepLab-v2 (§4.7, kazuto1011/deeplab-pytorch configs/voc12.yaml)
    "model.backbone": "resnet101",
    "model.output_stride": 8,
    "model.head": "deeplabv2",
    "model.head_kwargs": {"rates": [6, 12, 18, 24]},
    "data.crop_size": 321,                           # §4.7 SIZE.TRAIN
    "optim.name": "sgd",
    "optim.lr": 2.5e-4,                              # §4.7
    "optim.momentum": 0.9,
    "optim.weight_decay": 5e-4,
    "optim.lr_mult": {"head": 10.0, "head_norm_bias": 20.0},   # §4.7: ASPP weights 10×, biases 20×
    "optim.wd_mult": {"head_norm_bias": 0.0},        # §4.7: biases without weight decay
    "schedule.name": "poly",
    "schedule.power": 0.9,
    "schedule.iters": 20000,                         # §4.7 ITER_MAX
    "engine.batch_size": 10,                         # §4.7: 5 × iter_size 2
    "eval.crf": "deeplabv2",                         # §4.7: CRF 10 iterations, pos 3/1, bilateral 4/67/3
}
BES_VOC = {
    **{k: v for k, v in SBE_VOC.items() if k not in ("data.saliency_dir", "method.labels.salbound_thres",
                                                     "method.labels.sal_bg_thres")},
    "method.name": "bes",
    "method.cam.eval_thres": 0.11,                   # §4.8 [BES]
    "method.walk.bg_thres": 0.25,                    # §4.8 [BES]
}
# DeepLab-v2's own recipe for the final network (§4.7, kazuto1011/deeplab-pytorch): discrete scales, bottom/right
# padding (mean colour / 255), bilinear image scaling; test: MSC = max over scales 1.0, 0.5, 0.75, no flip
DEEPLABV2_RECIPE = {
    "data.scale_choices": (0.5, 0.75, 1.0, 1.25, 1.5),
    "data.crop_policy": "corner",
    "data.image_resize": "bilinear",
    "eval.scales": (1.0, 0.5, 0.75),
    "eval.average": "max",
    "eval.flip": False,
}
# COCO 2014 (SBE §4.7: 39.1 on COCO val): same stages and recipe on `weakseg data coco` output
COCO_DATA = {
    "data.root": "data/coco",
    "data.image_dir": ".",
    "data.train_list": "ImageSets/Segmentation/train.txt",
    "data.val_list": "ImageSets/Segmentation/val.txt",
    "data.label_dir": "SegmentationClass",
    "data.tags_source": "file",
    "data.tags_file": "tags.json",
    "method.score_list": None,
    "schedule.iters": 100000,                        # kazuto1011 cocostuff164k.yaml ITER_MAX (VOC: 20,000)
}
SBE_COCO = {**{k: v for k, v in SBE_VOC.items() if not k.startswith("data.")}, **DEEPLABV2_RECIPE, **COCO_DATA,
            "data.crop_size": 321, "data.saliency_dir": "Sal"}
BES_COCO = {**{k: v for k, v in BES_VOC.items() if not k.startswith("data.")}, **DEEPLABV2_RECIPE, **COCO_DATA,
            "data.crop_size": 321}

# ---- CDSP (spec §3.2 networks, §3.3 distance maps, §3.4 losses, §3.6 training, §3.7 evaluation) ---------------
CDSP_R50 = {
    "data.tags_source": "scribble",                  # §3.1: the class labels hidden in the scribbles
    "data.crop_size": 465,                           # §3.6(5)
    "data.scale_range": (0.5, 2.0),                  # §3.6(1)
    "model.backbone": "resnet50",                    # §3.2(1) res50_ASPP_lorm (the released checkpoint)
    "model.output_stride": 8,                        # §3.2: layer3 dilation 2, layer4 multi-grid 4/8/16
    "model.norm": "syncbn",                          # §3.2: synchronized BN
    "model.head": "aspp_c",                          # §3.2(1): C-channel ASPP branches
    "model.head_kwargs": {"rates": [12, 18, 24]},    # §3.2(1): 1×1 + dilations 12, 18, 24 (+ image pooling)
    "method.reference_layout": True,                 # §3.2: stride in the 1×1 conv, multi-grid
    "method.head_init": "msra",                      # §3.2: N(0, 2/n) over every non-backbone conv
    "method.distance.lambda_s": math.e,              # §3.3: λ_s = e
    "method.distance.lambda_c": math.e ** 6,         # §3.3: λ_c = e⁶
    "method.loss.scribble": 1.0,                     # §3.4(5): all weights 1
    "method.loss.pseudo": 1.0,
    "method.loss.smoothing": 0.1,                    # §3.4(2): ε = 0.1
    "method.loss.lorm": 1.0,
    "method.loss.dist_scribble": 1.0,
    "method.loss.dist_pseudo": 1.0,
    "method.aug.scale_range": (0.5, 2.0),            # §3.6(1)
    "method.aug.max_angle": 10.0,                    # §3.6(2): ±10°
    "method.aug.rotate_prob": 0.5,
    "method.aug.blur_prob": 0.5,                     # §3.6(3): 5×5 Gaussian blur, p 0.5
    "method.aug.flip_prob": 0.5,                     # §3.6(4)
    "optim.name": "sgd",                             # §3.6: SGD, momentum 0.9, wd 5e-4, lr 1e-3, one group
    "optim.lr": 1e-3,
    "optim.momentum": 0.9,
    "optim.weight_decay": 5e-4,
    "optim.lr_mult": {},
    "schedule.name": "cosine",                       # §3.6: 5 warm-up epochs from 0, then cosine to 0
    "schedule.epochs": 50.0,
    "schedule.warmup_iters": 3310,                   # 5 × ceil(10582 / 16)
    "schedule.warmup_ratio": 0.0,
    "schedule.min_lr_ratio": 0.0,
    "engine.batch_size": 16,                         # §3.6
    "engine.seed": 1000,                             # §3.6
    "eval.scales": (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0),  # §3.7: long side round(512·s)
    "eval.resize": "long_side",
    "eval.long_side": 512,
    "eval.mode": "slide",                            # §3.7: 465 windows, stride 310, centred mean padding
    "eval.crop_size": 465,
    "eval.stride": 310,
    "eval.pad": "center",
    "eval.average": "prob",                          # §3.7: probabilities averaged
    "eval.align_corners": True,                      # §3.2: align_corners=True upsampling
    "eval.flip": False,
    "eval.crf": None,                                # §3.7: no CRF
}
CDSP_R101 = {**CDSP_R50, "model.backbone": "resnet101", "model.head": "deeplabv3plus", "model.head_kwargs": {}}

# ---- WebCoseg (spec §5.2 networks, §5.3 training, §5.4 mask estimation, §5.5 evaluation) ------------------------
WEBCOSEG_VOC = {
    "data.tags_source": "label",                     # §5.7.2: image labels from the masks
    "data.crop_size": 320,                           # §5.3 CROP_SIZE
    "data.scale_range": (0.7, 1.3),                  # §5.3 SCALE_RANGE
    "data.mean": (123 / 255, 117 / 255, 104 / 255),  # §5.2: RGB minus (123, 117, 104) ...
    "data.std": (1 / 255, 1 / 255, 1 / 255),         # ... without std division
    "model.backbone": "resnet50",                    # §5.2
    "model.output_stride": 8,                        # §5.2: res4 dilation 2, res5 dilation 4
    "model.norm": "frozen_bn",                       # §5.2: use_global_stats
    "model.backbone_options": {"stride_in_1x1": True},  # §5.2: Caffe-style bottleneck
    "model.head": "largefov",                        # §5.2: 3×3 dil 12 → 512, dropout 0.5, 1×1 512, 1×1 C
    "model.head_kwargs": {"channels": 512, "dilation": 12, "dropout": 0.5},
    "optim.name": "sgd",                             # §5.3: SGD 0.9, wd 5e-4, lr 1.6e-3 constant
    "optim.lr": 1.6e-3,
    "optim.momentum": 0.9,
    "optim.weight_decay": 5e-4,
    "schedule.power": 0.0,                           # constant LR
    "schedule.iters": 28000,                         # §5.3: 40 × 700
    "engine.batch_size": 16,
    "method.global_branch": True,                    # §5.2 final model
    "method.init.model.backbone": "resnet50",
    "method.init.model.output_stride": 8,
    "method.init.model.head": "largefov",
    "method.init.optim.lr": 1.6e-3,
    "method.init.schedule.power": 0.0,
    "method.init.schedule.iters": 8000,              # §5.3: 40 × 200
    "method.init.batch_size": 16,
    "method.init.crop_size": 320,
    "method.init.scale_range": (0.7, 1.3),
    "method.estimate.scales": (0.7, 1.0, 1.3),       # §5.4: summed probabilities, tags zeroed
    "method.estimate.crf": None,                     # §5.4: no CRF
    "eval.scales": (0.7, 1.0, 1.3),                  # §5.5 --ms
    "eval.average": "prob",                          # §5.5: summed probabilities
    "eval.flip": False,
    "eval.crf": "webcoseg",                          # §5.5 --crf
}

PRESETS = {
    "blpseg/blpseg_r101-os32_b10-40e_voc12aug-384.yaml": BLPSEG_VOC,
    "blpseg/blpseg_r101-os32_b10-40e_voc12aug-384_plus.yaml": {**BLPSEG_VOC, **JITTER},
    "blpseg/blpseg_r101-os32_b8-85e_context-384.yaml": BLPSEG_CONTEXT,
    "blpseg/blpseg_r101-os32_b8-85e_context-384_plus.yaml": {**BLPSEG_CONTEXT, **JITTER},
    "full/full_r101-os8_b16-50e_voc12aug-465.yaml": FULL_VOC,
    "partial_ce/partial-ce_r101-os8_b16-50e_voc12aug-465.yaml": PARTIAL_CE_VOC,
    "sbe/sbe_r50-os16_b16-5e_voc12aug-512.yaml": SBE_VOC,
    "bes/bes_r50-os16_b16-5e_voc12aug-512.yaml": BES_VOC,
    "sbe/sbe_r50-os16_b16-5e_coco14-512.yaml": SBE_COCO,
    "bes/bes_r50-os16_b16-5e_coco14-512.yaml": BES_COCO,
    "cdsp/cdsp_r50-deeplabv2-lorm_b16-50e_voc12aug-465.yaml": CDSP_R50,
    "cdsp/cdsp_r101-deeplabv3p-lorm_b16-50e_voc12aug-465.yaml": CDSP_R101,
    "webcoseg/webcoseg_r50-os8_b16-28ki_voc12aug-320.yaml": WEBCOSEG_VOC,
}


def lookup(cfg, dotted: str):
    """The value at a dotted key of a Config (dataclass attributes, then mapping keys); KeyError naming the key."""
    node = cfg
    for part in dotted.split("."):
        if dataclasses.is_dataclass(node) and part in {f.name for f in dataclasses.fields(node)}:
            node = getattr(node, part)
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise KeyError(f"config key {dotted!r} does not exist (at {part!r})")
    return node


def same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b if not isinstance(a, (int, float)) else a == b


@pytest.mark.parametrize("preset", list(PRESETS))
def test_paper_preset_values(preset):
    cfg = load_config(CONFIGS / preset)
    wrong = []
    for key, expected in PRESETS[preset].items():
        actual = lookup(cfg, key)
        if not same(actual, expected):
            wrong.append(f"{key} = {actual!r}, expected {expected!r}")
    assert not wrong, f"{preset}: " + "; ".join(wrong)


def test_a_changed_value_fails_with_the_key_name(tmp_path):
    text = (CONFIGS / "blpseg/blpseg_r101-os32_b10-40e_voc12aug-384.yaml").read_text()
    text = text.replace("lam_sigma: 6.0", "lam_sigma: 5.0").replace("_base_: ../_base_/", f"_base_: {CONFIGS}/_base_/")
    (tmp_path / "typo.yaml").write_text(text)
    cfg = load_config(tmp_path / "typo.yaml")
    bad = [k for k, v in BLPSEG_VOC.items() if not same(lookup(cfg, k), v)]
    assert bad == ["method.lam_sigma"]
    with pytest.raises(KeyError, match="method.cam.nope"):
        lookup(load_config(CONFIGS / "sbe/sbe_r50-os16_b16-5e_voc12aug-512.yaml"), "method.cam.nope")


def test_plus_presets_differ_from_the_paper_presets_only_by_the_jitter():
    from weakseg.engine.config import to_dict

    for paper in ("blpseg/blpseg_r101-os32_b10-40e_voc12aug-384", "blpseg/blpseg_r101-os32_b8-85e_context-384"):
        a = to_dict(load_config(CONFIGS / f"{paper}.yaml"))
        b = to_dict(load_config(CONFIGS / f"{paper}_plus.yaml"))
        diff = sorted(k for k in set(a["data"]) | set(b["data"]) if a["data"].get(k) != b["data"].get(k))
        assert diff == ["color_jitter"] and b["data"]["color_jitter"] == [0.5, 0.5, 0.5, 0.25]
        assert {s: a[s] for s in a if s not in ("data", "name")} == {s: b[s] for s in b if s not in ("data", "name")}


def test_crf_presets_of_the_paper_presets():
    assert CRF_PRESETS["deeplabv2"].iterations == 10                           # §4.7: ITER_MAX 10
    assert (CRF_PRESETS["deeplabv2"].gauss_sxy, CRF_PRESETS["deeplabv2"].gauss_compat) == (1, 3)   # POS_XY_STD, POS_W
    p = CRF_PRESETS["deeplabv2"]
    assert (p.bilateral_sxy, p.bilateral_srgb, p.bilateral_compat) == (67, 3, 4)   # BI_XY_STD, BI_RGB_STD, BI_W
    p = CRF_PRESETS["blpseg"]                                                  # §2.7 step 4 (optional)
    assert (p.gauss_sxy, p.gauss_compat, p.bilateral_sxy, p.bilateral_srgb, p.bilateral_compat, p.iterations) == (
        3, 3, 32, 13, 10, 1)


def test_resnet101s_reads_a_pytorch_encoding_layout_file(tmp_path):
    """PyTorch-Encoding files carry ``fc.*``, may come from a DataParallel ``module.`` wrapper and, from PyTorch
    < 0.4.1, lack BN ``num_batches_tracked``: all three must load strictly into the deep-stem ResNet."""
    from weakseg.models.backbones.resnet import Bottleneck, ResNet
    from weakseg.models.weights import load_pretrained

    torch.manual_seed(0)
    src = ResNet(Bottleneck, (1, 1, 1, 1), deep_stem=True)          # resnet101s's layout with fewer blocks
    state = {f"module.{k}": v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    state["module.fc.weight"], state["module.fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    torch.save(state, tmp_path / "resnet101s-03a0f310.pth")
    dst = ResNet(Bottleneck, (1, 1, 1, 1), deep_stem=True)
    load_pretrained(dst, "resnet101s", tmp_path / "resnet101s-03a0f310.pth")
    for k, v in src.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(dst.state_dict()[k], v), k


def test_inference_options_of_the_presets():
    """BLPSeg's bicubic rescale + align_corners and DeepLab-v2's max fusion (weakseg.modules.inference)."""
    import torch.nn.functional as F

    from weakseg.modules.inference import infer_probs

    torch.manual_seed(0)
    x = torch.randn(1, 3, 12, 16)
    seen = []

    def predict(t):
        seen.append(t)
        return t[:, :2] * 3.0

    p = infer_probs(predict, x, scales=(0.5,), image_resize="bicubic", align_corners=True)
    small = F.interpolate(x, size=(6, 8), mode="bicubic", align_corners=False)
    assert torch.allclose(seen[0], small)
    back = F.interpolate(small[:, :2] * 3.0, size=(12, 16), mode="bilinear", align_corners=True)
    assert torch.allclose(p, back.softmax(1), atol=1e-6)
    seen.clear()
    p = infer_probs(predict, x, scales=(1.0, 0.5, 0.75), average="max")
    ups = [F.interpolate(t[:, :2] * 3.0, size=(12, 16), mode="bilinear", align_corners=False) for t in seen]
    assert torch.allclose(p, torch.stack(ups).amax(0).softmax(1), atol=1e-6)


def test_deeplabv2_training_scales_and_corner_padding():
    from weakseg.data import keys as K
    from weakseg.data.transforms import build_train_transforms

    t = build_train_transforms(crop_size=8, flip_prob=0.0, crop_policy="corner", scale_choices=(0.5, 1.5),
                               image_resize="bilinear")
    sample = {K.IMAGE: np.full((6, 6, 3), 200, np.uint8), K.LABEL: np.ones((6, 6), np.uint8)}
    sizes = set()
    for seed in range(20):
        out = t(dict(sample), np.random.default_rng(seed))
        label = out[K.LABEL].numpy()
        n = int((label == 1).sum() ** 0.5)
        sizes.add(n)
        assert (label[:n, :n] == 1).all() and (label[n:, :] == 255).all() and (label[:, n:] == 255).all()
        assert torch.all(out[K.IMAGE][:, n:, :] == 0) and torch.all(out[K.IMAGE][:, :, n:] == 0)  # the mean colour
    assert sizes == {3, 8}  # 6·0.5 = 3 (padded bottom/right), 6·1.5 = 9 → cropped to 8


@pytest.mark.parametrize("preset", ["sbe/sbe_r50-os16_b16-5e_voc12aug-512.yaml",
                                    "bes/bes_r50-os16_b16-5e_voc12aug-512.yaml"])
def test_voc_sbe_bes_final_network_follows_the_deeplabv2_recipe(preset):
    cfg = load_config(CONFIGS / preset)
    wrong = [f"{k} = {lookup(cfg, k)!r}" for k, v in DEEPLABV2_RECIPE.items() if not same(lookup(cfg, k), v)]
    assert not wrong, f"{preset}: " + "; ".join(wrong)


def test_coco_pretrained_deeplab_weights_load_into_a_caffe_style_resnet(tmp_path):
    """kazuto1011/deeplab-pytorch's Caffe-converted DeepLab layout (MSC ``base.`` prefix, ``layer1.conv1`` stem,
    ``layer2..5.block<j>.{reduce,conv3x3,increase,proj}``, a COCO ``aspp``) → a stride-in-1×1 ResNet, conv1 BGR → RGB."""
    from weakseg.engine.config import load_config
    from weakseg.engine.builders import build_method

    torch.manual_seed(0)
    cfg = load_config(CONFIGS / "sbe/sbe_r50-os16_b16-5e_coco14-512.yaml",
                      ["model.backbone=resnet50", "model.pretrained=null", "model.backbone_options={stride_in_1x1: true}"])
    src = build_method(cfg, 81).model.backbone
    assert src.layer2[0].conv1.stride == (2, 2) and src.layer2[0].conv2.stride == (1, 1)    # Caffe: stride on 1×1
    names = {"conv1": ("reduce", "conv"), "bn1": ("reduce", "bn"), "conv2": ("conv3x3", "conv"),
             "bn2": ("conv3x3", "bn"), "conv3": ("increase", "conv"), "bn3": ("increase", "bn"),
             "downsample.0": ("proj", "conv"), "downsample.1": ("proj", "bn")}
    caffe = {}
    for key, value in src.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.startswith(("conv1.", "bn1.")):
            head, rest = key.split(".", 1)
            new = f"layer1.conv1.{'conv' if head == 'conv1' else 'bn'}.{rest}"
            value = value.flip(1) if key == "conv1.weight" else value             # the Caffe file reads BGR
        else:
            layer, block, rest = key.split(".", 2)
            part = next(p for p in names if rest.startswith(p + "."))
            unit, kind = names[part]
            new = f"layer{int(layer[5:]) + 1}.block{int(block) + 1}.{unit}.{kind}.{rest[len(part) + 1:]}"
        caffe[f"base.{new}"] = value
    caffe["base.aspp.c0.weight"], caffe["base.aspp.c0.bias"] = torch.zeros(91, 2048, 3, 3), torch.zeros(91)
    torch.save(caffe, tmp_path / "deeplabv1_resnet101-coco.pth")
    cfg.model.pretrained = str(tmp_path / "deeplabv1_resnet101-coco.pth")
    dst = build_method(cfg, 81).model.backbone
    for key, value in src.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(dst.state_dict()[key], value), key
    cfg.model.backbone_options = {}                 # a torchvision-style ResNet does not take these weights silently
    with pytest.raises(ValueError, match="stride_in_1x1"):
        build_method(cfg, 81)
