"""CDSP ("Scribble Hides Class", Zhang et al., AAAI 2024): scribbles plus the class labels hidden in them;
methods.md §3, with every script bug of §3.10 fixed (docs/cdsp.md lists them).

The pipeline (``weakseg run configs/cdsp/*.yaml``):

    stage 1: pseudo-labels from the scribbles' classes (the tags read off the scribbles, data.tags_source: scribble),
             method.pseudo.source:
      cam          train_cam, make_cam, eval_cam (the kit), then make_pseudo_labels = argmax([cam.eval_thres, CAMs])
                   (+ optional CRF)                                                                          (§3.1)
      bes | sbe    the kit's CAM stages + BES/SBE's boundary labels → boundary net → random walk
                   (method.bes sections); their make_pseudo_masks are the pseudo-labels
      folder       make_pseudo_labels checks and copies a folder of PNGs (downloaded BMP / AFA / SEAM labels)
    eval_pseudo_labels       mIoU of the pseudo-labels on the training split (where ground truth exists)
    make_scribble_distance   D_s from the foreground scribble pixels, λ_s                                   (§3.3)
    make_pseudo_distance     D_c from the pseudo-label contours, λ_c                                         (§3.3)
    train_seg                scribble CE + smoothed pseudo-label CE + LoRM + DEL(D_s) + DEL(D_c)            (§3.4-3.6)
    evaluate                 the final network on data.val_list (the eval section; §3.7 in the paper presets)

Stage 2's network is :class:`~weakseg.models.cdsp_net.CDSPNet` (the reference ResNet layout at OS8 with multi-grid
when the backbone is a ResNet, any head: the paper's C-channel ASPP ``aspp_c`` or DeepLab-v3+); LoRM runs on its last
backbone map during training only; predictions are the head's logits upsampled with align_corners=True.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from weakseg.data import keys as K
from weakseg.data.transforms import build_cdsp_train_transforms
from weakseg.losses.distance_entropy import DistanceEntropyLoss
from weakseg.losses.lorm import LoRMLoss
from weakseg.losses.partial_ce import PartialCrossEntropy
from weakseg.methods.base import Method
from weakseg.methods.kit import (DATA_IMAGES, DATA_TAGS, CAMSection, PerImageStage, Stage, StageContext,
                                 cam_stages, evaluate_stage, load_cams, score_masks_stage, train_seg_stage)
from weakseg.methods.sbe import PropagationConfig, propagation_stages
from weakseg.models.cdsp_net import CDSPNet, cdsp_backbone_options, cdsp_head_kwargs
from weakseg.modules.cam import cam_to_label
from weakseg.modules.crf import label_refiner, refine_class_map
from weakseg.modules.distance_maps import pseudo_boundary_distance_map, scribble_distance_map
from weakseg.modules.lorm import LoRM
from weakseg.utils.io import DataError, read_label, save_label_png

SOURCES = ("cam", "bes", "sbe", "folder")

# ----------------------------------------------------------------------------------------------------------------
# configuration


@dataclass
class PseudoSection:
    """Where the stage-1 pseudo-labels come from."""

    source: str = "cam"  # cam | bes | sbe | folder
    folder: str | None = None  # source folder: <id>.png class-id PNGs (relative to data.root), e.g. BMP labels
    crf: str | None = None  # source cam: CRF preset refining argmax([cam.eval_thres, CAMs]) (None = off)
    crf_backend: str = "auto"  # auto | pydensecrf | torch


@dataclass
class DistanceSection:
    """The two distance maps (§3.3)."""

    lambda_s: float = math.e  # decay of the scribble map D_s: 255 − min(255, ⌊√λ_s · d⌋)
    lambda_c: float = math.e ** 6  # decay of the pseudo-label boundary map D_c: min(255, ⌊√λ_c · d⌋)


@dataclass
class LossSection:
    """Loss weights (§3.4; all 1 in the paper's best setting); a weight of 0 switches a term off."""

    scribble: float = 1.0  # partial CE on the scribbles
    pseudo: float = 1.0  # label-smoothed CE on the pseudo-labels
    smoothing: float = 0.1  # ε of the pseudo-label CE
    lorm: float = 1.0  # LoRM reconstruction loss (0: no LoRM module at all)
    dist_scribble: float = 1.0  # distance entropy loss with D_s
    dist_pseudo: float = 1.0  # distance entropy loss with D_c


@dataclass
class AugSection:
    """Stage-2 augmentation (§3.6); the crop is ``data.crop_size`` (465 in the paper) with centred padding."""

    scale_range: tuple[float, float] = (0.5, 2.0)  # random scale
    max_angle: float = 10.0  # random rotation in ±max_angle degrees ...
    rotate_prob: float = 0.5  # ... with this probability (border: mean colour; maps: no supervision)
    blur_prob: float = 0.5  # 5×5 Gaussian blur probability (image only)
    flip_prob: float = 0.5  # horizontal flip probability


@dataclass
class CDSPConfig:
    name: str = "cdsp"  # method name
    pseudo: PseudoSection = field(default_factory=PseudoSection)  # stage-1 pseudo-label source
    cam: CAMSection = field(default_factory=CAMSection)  # CAM stages (source cam / bes / sbe)
    bes: PropagationConfig = field(default_factory=PropagationConfig)  # BES/SBE stages (source bes / sbe)
    distance: DistanceSection = field(default_factory=DistanceSection)  # D_s and D_c
    loss: LossSection = field(default_factory=LossSection)  # stage-2 loss weights
    aug: AugSection = field(default_factory=AugSection)  # stage-2 augmentation
    reference_layout: bool = True  # ResNet backbones: the reference's OS8 multi-grid layout, stride in the 1×1 conv
    head_init: str = "msra"  # msra: head convs N(0, 2/n) as the reference's init loop; module: the head's own
    score_list: str | None = None  # ids scored by eval_cam / eval_pseudo_labels (None = train_list ids with GT)


# ----------------------------------------------------------------------------------------------------------------
# stage 2: the method


class CDSP(Method):
    """Stage 2 (§3.5b): the segmentation network trained on scribbles, pseudo-labels and distance maps."""

    Config = CDSPConfig
    supervision = "scribble_pseudo"

    def __init__(self, cfg: CDSPConfig, model_cfg, num_classes: int):
        if cfg.pseudo.source not in SOURCES:
            raise ValueError(f"method.pseudo.source must be one of {', '.join(SOURCES)}, got {cfg.pseudo.source!r}")
        super().__init__(cfg, model_cfg, num_classes)
        w = cfg.loss
        self.lorm = LoRM(self.model.feat_channels) if w.lorm > 0 else None
        self.loss_scribble = PartialCrossEntropy()
        self.loss_pseudo = PartialCrossEntropy(label_smoothing=w.smoothing)
        self.loss_lorm = LoRMLoss()
        self.loss_dist = DistanceEntropyLoss()

    def build_model(self, model_cfg, num_classes: int) -> CDSPNet:
        options = {**(cdsp_backbone_options(model_cfg.backbone) if self.cfg.reference_layout else {}),
                   **dict(model_cfg.backbone_options)}
        head_kwargs = {**cdsp_head_kwargs(model_cfg.head), **dict(model_cfg.head_kwargs)}
        return CDSPNet(model_cfg.backbone, model_cfg.head, num_classes, pretrained=model_cfg.pretrained,
                       output_stride=model_cfg.output_stride, norm=model_cfg.norm, backbone_options=options,
                       head_kwargs=head_kwargs, head_init=self.cfg.head_init)

    @staticmethod
    def _upsample(logits: torch.Tensor, size) -> torch.Tensor:
        # the reference upsamples with align_corners=True before every loss and at test time (§3.2)
        if tuple(logits.shape[-2:]) == tuple(size):
            return logits
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=True)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self._upsample(self.model(images)["seg"], images.shape[-2:])

    def training_step(self, batch: dict, step: int) -> dict:
        w = self.cfg.loss
        scribble, pseudo = batch[K.SCRIBBLE], batch[K.PSEUDO]
        out = self.model(batch[K.IMAGE])
        logits = self._upsample(out["seg"], scribble.shape[-2:])
        valid = batch.get(K.VALID)
        losses = {}
        if w.scribble > 0:
            losses["loss_scribble"] = w.scribble * self.loss_scribble(logits, scribble)
        if w.pseudo > 0:
            losses["loss_pseudo"] = w.pseudo * self.loss_pseudo(logits, pseudo)
        if self.lorm is not None:  # LoRM reads the pseudo-label without changing it (the reference's bug 6)
            losses["loss_lorm"] = w.lorm * self.loss_lorm(out["feat"], self.lorm(out["feat"], pseudo))
        if w.dist_scribble > 0:
            losses["loss_dist_scribble"] = w.dist_scribble * self.loss_dist(logits, batch[K.DIST_SCRIBBLE], valid)
        if w.dist_pseudo > 0:
            losses["loss_dist_pseudo"] = w.dist_pseudo * self.loss_dist(logits, batch[K.DIST_PSEUDO], valid)
        return losses

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = self.model.param_groups()
        if self.lorm is not None:  # LoRM's query/key convs and γ learn at the head's rate
            groups["head"] = groups["head"] + [self.lorm.query.weight, self.lorm.key.weight, self.lorm.gamma]
            groups["head_norm_bias"] = groups["head_norm_bias"] + [self.lorm.query.bias, self.lorm.key.bias]
        return groups

    @classmethod
    def stages(cls, cfg) -> list[Stage]:
        m = cfg.method
        source = m.pseudo.source
        score = "method.score_list" if m.score_list else None
        stages: list[Stage] = []
        if source in ("cam", "bes", "sbe"):
            stages += cam_stages("method.cam", score_list=score)
        if source in ("bes", "sbe"):
            stages += propagation_stages(cfg, "method.bes", source == "sbe", "method.pseudo.source")
            pseudo_from = "make_pseudo_masks"
        else:
            reads = ("make_cam",) if source == "cam" else ()
            if source == "cam":
                config = ("method.pseudo.source", "method.pseudo.crf", "method.pseudo.crf_backend",
                          "method.cam.eval_thres")
            else:
                config = ("method.pseudo.source", "method.pseudo.folder")
            stages.append(PerImageStage(
                "make_pseudo_labels", _train_ids, _setup_pseudo_labels, make_pseudo_label_image, reads=reads,
                config=DATA_TAGS + config,
                doc="<id>.png: palette PNG of class ids (255 = ignore where the source says so)"))
            pseudo_from = "make_pseudo_labels"
        train_gt = ("data.root", "data.train_list", "data.label_dir")
        stages += [
            score_masks_stage("eval_pseudo_labels", pseudo_from, lambda c: c.method.score_list,
                              config=train_gt + ("method.score_list",)),
            PerImageStage("make_scribble_distance", _train_ids, _setup_distance, make_scribble_distance_image,
                          config=DATA_IMAGES + ("data.scribble_dir", "method.distance.lambda_s"),
                          doc="<id>.png: 8-bit D_s = 255 − min(255, ⌊√λ_s · d(x, foreground scribbles)⌋)"),
            PerImageStage("make_pseudo_distance", _train_ids,
                          functools.partial(_setup_distance, pseudo_from=pseudo_from), make_pseudo_distance_image,
                          reads=(pseudo_from,),
                          config=DATA_IMAGES + ("method.distance.lambda_c",),
                          doc="<id>.png: 8-bit D_c = min(255, ⌊√λ_c · d(x, pseudo-label contours)⌋)"),
            train_seg_stage(cls, pseudo_from, dataset=functools.partial(_train_dataset, pseudo_from=pseudo_from),
                            reads=("make_scribble_distance", "make_pseudo_distance"),
                            config=("method.loss", "method.aug", "method.reference_layout", "method.head_init"),
                            doc="stage 2 on scribbles + pseudo-labels + distance maps; train_seg/model_final.pth"),
            evaluate_stage(cls, "train_seg"),
        ]
        return stages


def _train_ids(ctx: StageContext) -> list[str]:
    return ctx.train_ids()


def _train_dataset(ctx: StageContext, pseudo_from: str):
    d, a = ctx.cfg.data, ctx.cfg.method.aug
    transform = build_cdsp_train_transforms(crop_size=d.crop_size, scale_range=tuple(a.scale_range),
                                            max_angle=a.max_angle, rotate_prob=a.rotate_prob, blur_prob=a.blur_prob,
                                            flip_prob=a.flip_prob, mean=d.mean, std=d.std)
    return ctx.dataset(supervision="scribble_pseudo", pseudo_dir=ctx.dir(pseudo_from), transform=transform,
                       maps={K.DIST_SCRIBBLE: ctx.dir("make_scribble_distance"),
                             K.DIST_PSEUDO: ctx.dir("make_pseudo_distance")})


# ----------------------------------------------------------------------------------------------------------------
# stage 1: make_pseudo_labels (source cam or folder)


@dataclass
class _State:
    ctx: StageContext
    dataset: Any
    crf: Any = None
    folder: Path | None = None


def _setup_pseudo_labels(ctx: StageContext) -> _State:
    p = ctx.cfg.method.pseudo
    crf = folder = None
    if p.source == "folder":
        if not p.folder:
            raise ValueError("method.pseudo.source = folder needs method.pseudo.folder (a folder of <id>.png)")
        folder = Path(p.folder) if Path(p.folder).is_absolute() else Path(ctx.cfg.data.root) / p.folder
        if not folder.is_dir():
            raise DataError(f"{folder}: method.pseudo.folder not found")
        dataset = ctx.dataset(supervision="pseudo", pseudo_dir=folder)  # checks ids, sizes and class values
    else:
        crf = label_refiner(p.crf, p.crf_backend, "method.pseudo.crf")
        dataset = ctx.dataset()
    return _State(ctx, dataset, crf, folder)


def make_pseudo_label_image(state: _State, sample_id: str, path: Path) -> None:
    """Write ``<id>.png``: H×W palette PNG of class ids. Source cam: argmax([cam.eval_thres, CAMs]) mapped to
    class ids (optionally CRF-refined over the image's classes); source folder: the checked PNG of the folder."""
    ctx = state.ctx
    sample = state.dataset.load_id(sample_id)
    if state.folder is not None:
        label = sample[K.PSEUDO]
    else:
        cams = load_cams(ctx, sample_id)
        keys = torch.from_numpy(cams["keys"])
        high = torch.from_numpy(cams["high_res"].astype(np.float32))
        label = cam_to_label(high, keys, ctx.cfg.method.cam.eval_thres)  # class ids
        if state.crf is not None and keys.numel():
            label = refine_class_map(state.crf, sample[K.IMAGE], label, keys)
        label = label.numpy().astype(np.uint8)
    save_label_png(path, label, ctx.meta.palette)


# ----------------------------------------------------------------------------------------------------------------
# make_scribble_distance / make_pseudo_distance (§3.3)


@dataclass
class _DistState:
    ctx: StageContext
    dataset: Any
    pseudo_dir: Path | None


def _setup_distance(ctx: StageContext, pseudo_from: str | None = None) -> _DistState:
    dataset = ctx.dataset(supervision="scribble")
    return _DistState(ctx, dataset, ctx.dir(pseudo_from) if pseudo_from else None)


def make_scribble_distance_image(state: _DistState, sample_id: str, path: Path) -> None:
    """Write ``<id>.png``: H×W uint8 D_s (255 on foreground strokes; all 0 without a foreground stroke)."""
    scribble = state.dataset.load_id(sample_id)[K.SCRIBBLE]
    save_label_png(path, scribble_distance_map(scribble, state.ctx.cfg.method.distance.lambda_s))


def make_pseudo_distance_image(state: _DistState, sample_id: str, path: Path) -> None:
    """Write ``<id>.png``: H×W uint8 D_c (0 on the pseudo-label contours; all 255 without foreground)."""
    pseudo = read_label(state.pseudo_dir / f"{sample_id}.png")
    save_label_png(path, pseudo_boundary_distance_map(pseudo, state.ctx.cfg.method.distance.lambda_c))


__all__ = ["CDSP", "CDSPConfig", "SOURCES"]
