"""BES (Chen et al., ECCV 2020) and SBE (Shi et al., IEEE SPL 2024): image-level WSSS by boundary-guided CAM
propagation; methods.md §4.

The pipeline (``weakseg run configs/{bes,sbe}/*.yaml``), in the paper's order (§4.1, §4.6b):

    train_cam              CAM net = backbone + attention pooling, multi-label soft-margin on the tags   (§4.2)
    make_cam               multi-scale + flip CAMs of the image's classes, per-class max-normalised       (§4.2)
    eval_cam               mIoU of argmax([cam_eval_thres, CAMs]) on the training split                    (§4.2)
    make_saliency          (SBE, when data.saliency_dir is null) U²-Net-p saliency maps                    (§4.1)
    make_boundary_labels   CRF-refined confident regions → window fractions → codes; SBE: saliency cues  (§4.3)
    train_boundary_net     frozen backbone + side branches, BES loss or SBE's saliency-split loss         (§4.4–4.5)
    make_pseudo_masks      B = flip-averaged boundary map; random walk of CAM·(1 − B); bg threshold      (§4.6)
    eval_pseudo_masks      mIoU / coverage / precision of the pseudo-masks on the training split           (§4.6)
    train_seg              DeepLab-v2 on the pseudo-masks (the run's model / optim / schedule sections)   (§4.7)
    evaluate               the final model on data.val_list                                                (§4.7)

SBE = BES + saliency: saliency S = 0 marks background and |Sobel(S)| > 0.5 marks a certain boundary in the labels
(§4.3); the boundary loss splits its boundary term into salient and non-salient pixels and does not halve the
fg/bg term (§4.5). Artefact formats are given in each stage's ``doc`` and in docs/sbe.md.

Reference bugs not reproduced (§4.9): SGD has real momentum (the reference passed weight decay into the momentum
slot; the paper presets use momentum 0.9 with 1/10 of the reference LR, the same steady-state step); artefacts are
npz and PNG, never pickles; every checkpoint loads strictly; the saliency background test is a threshold
(``sal_bg_thres``, 0 = the reference's exact-zero test); the Sobel edge is centred (boundary_labels); the saliency
map is read only where it is used (train_boundary_net, not train_cam, §4.9.1).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from weakseg.data import keys as K
from weakseg.data.dataset import SegDataset
from weakseg.data.transforms import (Compose, Normalize, RandomCrop, RandomHFlip, ResizeLongSide, ToTensor,
                                     build_eval_transforms, build_train_transforms)
from weakseg.losses.boundary import BESBoundaryLoss, SBEBoundaryLoss
from weakseg.losses.multilabel import MultiLabelSoftMarginLoss
from weakseg.losses.partial_ce import PartialCrossEntropy
from weakseg.methods.base import Method, upsample_to
from weakseg.methods.stages import EvalStage, PerImageStage, Stage, StageContext, TrainStage
from weakseg.models.boundary_net import BoundaryNet
from weakseg.models.cam_net import CAMNet
from weakseg.modules.boundary_labels import make_boundary_labels
from weakseg.modules.cam import cam_to_label, multiscale_cam
from weakseg.modules.crf import CRF_PRESETS, crf_label
from weakseg.modules.random_walk import propagate_to_label
from weakseg.utils import dist as wdist
from weakseg.utils.io import load_npz, read_label, save_label_png, save_npz_atomic
from weakseg.utils.metrics import ConfusionMatrix

log = logging.getLogger("weakseg")

# Stride of the stored low-resolution CAMs, of the boundary map and of the random walk (the boundary head's stride).
MAP_STRIDE = 4


# ----------------------------------------------------------------------------------------------------------------
# configuration


@dataclass
class BESConfig:
    name: str = "bes"  # method name
    # stage 1, CAM network (§4.2)
    cam_backbone: str = "resnet50"  # CAM network backbone
    cam_pretrained: str | None = None  # its ImageNet weights: None, "imagenet" (bundled files) or a .pth path
    cam_output_stride: int = 16  # CAM network output stride
    cam_dilated: bool = False  # dilate the stages past the output stride (False: IRN's strides (2, 2, 2, 1))
    cam_frozen_stages: int = 2  # stem + this many stages get no gradient (conv1/bn1, layer1, layer2)
    cam_attention_k: float = 1e-3  # temperature k of the attention pooling
    cam_epochs: float = 5.0  # training epochs over data.train_list (3,305 iterations on train_aug at batch 16)
    cam_batch_size: int = 16  # global batch of train_cam
    cam_optim: str = "sgd"  # optimiser of train_cam: sgd (reference) | adamw
    cam_lr: float = 0.01  # LR of the backbone (SGD: reference 0.1 without momentum, see the module docstring)
    cam_classifier_lr_mult: float = 10.0  # LR multiplier of the classifier
    cam_momentum: float = 0.9  # SGD momentum of train_cam (cam_optim: sgd)
    cam_weight_decay: float = 1e-4  # weight decay of train_cam
    cam_resize_long: tuple[int, int] = (320, 512)  # random long-side resize range of train_cam (inclusive)
    cam_crop_size: int = 512  # random crop of train_cam (padding 0 after normalisation)
    cam_scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)  # make_cam image scales
    cam_flip: bool = True  # make_cam adds the flipped image at every scale
    cam_eval_thres: float = 0.11  # eval_cam background score (BES 0.11, SBE 0.21)
    train_eval_list: str | None = None  # ids scored by eval_cam / eval_pseudo_masks (None = train_list ids with GT)
    # boundary labels (§4.3)
    conf_fg_thres: float = 0.30  # background score of the confident-foreground proposal
    conf_bg_thres: float = 0.07  # background score of the confident-background proposal
    conf_crf: str | None = "bes_label"  # CRF preset refining both proposals (None = no CRF)
    crf_backend: str = "auto"  # auto (pydensecrf when installed, else torch) | pydensecrf | torch
    window_size: int = 13  # side of the window of class fractions (odd)
    theta_scale: float = 0.30  # θ_s
    theta_diff: float = 0.10  # θ_d
    # boundary network and loss (§4.4, §4.5)
    bes_backbone: str = "resnet50"  # boundary network backbone (frozen)
    bes_pretrained: str | None = None  # its ImageNet weights: None, "imagenet" (bundled files) or a .pth path
    bes_output_stride: int = 16  # boundary network backbone output stride
    bes_dilated: bool = False  # dilate the stages past the output stride
    bes_epochs: float = 3.0  # training epochs over data.train_list (1,983 iterations on train_aug at batch 16)
    bes_batch_size: int = 16  # global batch of train_boundary_net
    bes_optim: str = "sgd"  # optimiser of train_boundary_net: sgd (reference) | adamw
    bes_lr: float = 0.01  # LR of the side branches (SGD: reference 0.1 without momentum)
    bes_momentum: float = 0.9  # SGD momentum of train_boundary_net (bes_optim: sgd)
    bes_weight_decay: float = 1e-4  # weight decay of train_boundary_net
    bes_scale_range: tuple[float, float] = (0.5, 1.5)  # random scale range of train_boundary_net
    bes_crop_size: int = 512  # random crop of train_boundary_net (labels padded with 255 = ignored)
    poly_power: float = 0.9  # power of the poly LR decay of train_cam and train_boundary_net
    # random walk (§4.6)
    beta: float = 5.0  # exponent β of the affinities
    exp_times: int = 8  # the walk takes 2^exp_times steps
    rw_radius: int = 5  # neighbourhood radius of the affinities (stride-4 cells)
    rw_normalize: str = "global"  # global (reference: one max over all classes) | per_class
    rw_threads: int | None = 1  # torch CPU threads during the walk (many small ops: 1 is fastest; None = keep)
    sem_seg_bg_thres: float = 0.25  # background score of the pseudo-masks (BES 0.25, SBE 0.21)
    pseudo_crf: str | None = None  # CRF preset applied to the pseudo-masks (§4.6 step 6: bes_semseg; None = raw)


@dataclass
class SBEConfig(BESConfig):
    name: str = "sbe"  # method name
    cam_eval_thres: float = 0.21  # eval_cam background score
    sem_seg_bg_thres: float = 0.21  # background score of the pseudo-masks
    salbound_thres: float = 0.5  # Sobel magnitude of the max-normalised saliency above which a boundary is certain
    sal_bg_thres: float = 0.0  # normalised saliency at or below which a pixel is background / non-salient (ref: 0)
    saliency_threads: int | None = None  # onnxruntime CPU threads of make_saliency (None = onnxruntime's choice)


# ----------------------------------------------------------------------------------------------------------------
# training objectives of the two auxiliary networks (the trainer calls forward(batch, step))


class CAMTraining(nn.Module):
    """train_cam objective: Loss_cls = multi-label soft-margin loss of the attention-pooled logits against the
    image's foreground tags (the background entry 0 of ``tags`` is dropped)."""

    find_unused_parameters: ClassVar[bool] = False

    def __init__(self, net: CAMNet):
        super().__init__()
        self.net = net
        self.loss_cls = MultiLabelSoftMarginLoss()

    def forward(self, batch: dict, step: int) -> dict:
        logits = self.net(batch[K.IMAGE])["logits"]
        return {"loss_cls": self.loss_cls(logits, batch[K.TAGS][:, 1:])}

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return self.net.param_groups()


class BoundaryTraining(nn.Module):
    """train_boundary_net objective: the BES loss, or SBE's saliency-guided loss when ``sal_bg_thres`` is given.

    The boundary codes (crop size) are downscaled to the logits' size (stride 4) by nearest sampling at cell
    centres; crop padding (255) and IGNORE (200) carry no loss. For SBE, saliency at or below ``sal_bg_thres``
    counts as non-salient (R = 1[S > sal_bg_thres]; the reference's R = 1[S > 0] is the threshold 0).
    """

    find_unused_parameters: ClassVar[bool] = False

    def __init__(self, net: BoundaryNet, sal_bg_thres: float | None = None):
        super().__init__()
        self.net = net
        self.sal_bg_thres = sal_bg_thres
        self.loss_boundary = BESBoundaryLoss() if sal_bg_thres is None else SBEBoundaryLoss()

    def forward(self, batch: dict, step: int) -> dict:
        logits = self.net(batch[K.IMAGE])["boundary"]
        codes = F.interpolate(batch[K.BOUNDARY][:, None].float(), size=logits.shape[-2:], mode="nearest-exact")
        codes = codes[:, 0].long()
        if self.sal_bg_thres is None:
            return {"loss_boundary": self.loss_boundary(logits, codes)}
        sal = batch[K.SALIENCY]
        sal = torch.where(sal > self.sal_bg_thres, sal, torch.zeros_like(sal))
        return {"loss_boundary": self.loss_boundary(logits, codes, sal)}

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return self.net.param_groups()


# ----------------------------------------------------------------------------------------------------------------
# the method: the final segmentation network and the stage list


class BES(Method):
    """BES; as a ``Method`` it is the final DeepLab-v2 trained with CE on the pseudo-masks (``train_seg``), so
    ``weakseg eval --ckpt <work_dir>/train_seg/model_final.pth`` and ``weakseg train`` with ``data.pseudo_dir``
    work like for any single-stage method. ``stages(cfg)`` gives the whole pipeline."""

    Config = BESConfig
    supervision = "pseudo"
    uses_saliency: ClassVar[bool] = False

    def __init__(self, cfg: BESConfig, model_cfg, num_classes: int):
        if model_cfg.head != "deeplabv2":
            raise ValueError(f"{cfg.name}: the final network is DeepLab-v2 (§4.7): set model.head: deeplabv2 "
                             f"(got {model_cfg.head!r})")
        super().__init__(cfg, model_cfg, num_classes)
        self.loss_seg = PartialCrossEntropy()

    def training_step(self, batch: dict, step: int) -> dict:
        target = batch[K.PSEUDO]
        logits = upsample_to(self.model(batch[K.IMAGE])["seg"], target.shape[-2:])
        return {"loss_seg": self.loss_seg(logits, target)}

    @classmethod
    def stages(cls, cfg) -> list[Stage]:
        """The pipeline of §4.1 for the run config ``cfg`` (see the module docstring)."""
        m = cfg.method
        saliency_stage = cls.uses_saliency and cfg.data.saliency_dir is None
        sal_reads = ("make_saliency",) if saliency_stage else ()
        stages: list[Stage] = [
            TrainStage("train_cam", functools.partial(_build_train_cam, cfg=cfg), doc=(
                "CAM net (attention pooling) on the image tags; train_cam/model_final.pth")),
            PerImageStage("make_cam", _train_ids, functools.partial(_setup_make_cam, cfg=cfg), make_cam_image,
                          ext=".npz", reads=("train_cam",), doc=(
                              "<id>.npz: cams K×⌈H/4⌉×⌈W/4⌉ float16, high_res K×H×W float16 (each class / its max), "
                              "keys K int64 0-based foreground indices (class id = key + 1)")),
            EvalStage("eval_cam", functools.partial(_eval_cam, threshold=m.cam_eval_thres), reads=("make_cam",),
                      doc="mIoU of argmax([cam_eval_thres, high_res]) on the training split; metrics.json"),
        ]
        if saliency_stage:
            stages.append(PerImageStage("make_saliency", _train_ids, _setup_make_saliency, make_saliency_image,
                                        doc="<id>.png: 8-bit single-channel U²-Net-p saliency, round(255·S)"))
        stages += [
            PerImageStage("make_boundary_labels", _train_ids, functools.partial(_setup_boundary_labels, cfg=cfg),
                          make_boundary_labels_image, reads=("make_cam",) + sal_reads, doc=(
                              "<id>.png: 8-bit boundary codes BG 0, FG 50, FG_FG 100, FG_BG 150, IGNORE 200, "
                              "CERTAIN_FG_BG 250 (SBE)")),
            TrainStage("train_boundary_net", functools.partial(_build_train_boundary, cfg=cfg),
                       reads=("make_boundary_labels",) + sal_reads,
                       doc="boundary net (frozen backbone + side branches); train_boundary_net/model_final.pth"),
            PerImageStage("make_pseudo_masks", _train_ids, functools.partial(_setup_pseudo_masks, cfg=cfg),
                          make_pseudo_mask_image, reads=("make_cam", "train_boundary_net"), doc=(
                              "<id>.png: palette PNG of class ids 0..C−1 (never 255)")),
            EvalStage("eval_pseudo_masks", _eval_pseudo_masks, reads=("make_pseudo_masks",),
                      doc="mIoU, coverage and precision of the pseudo-masks on the training split; metrics.json"),
            TrainStage("train_seg", functools.partial(_build_train_seg, cls=cls), reads=("make_pseudo_masks",),
                       doc="DeepLab-v2 on the pseudo-masks; train_seg/model_final.pth"),
            EvalStage("evaluate", functools.partial(_evaluate, cls=cls), reads=("train_seg",),
                      doc="the final model on data.val_list; metrics.json, report.md, predictions/"),
        ]
        return stages


class SBE(BES):
    """SBE = BES + saliency cues in the boundary labels (§4.3) and the saliency-split boundary loss (§4.5)."""

    Config = SBEConfig
    uses_saliency = True


# ----------------------------------------------------------------------------------------------------------------
# shared helpers


def _abs(path: Path) -> str:
    # work_dir may be relative to the current directory; the dataset resolves relative folders against data.root
    return str(Path(path).resolve())


def _saliency_dir(ctx: StageContext) -> str | None:
    """SBE's saliency folder: ``data.saliency_dir`` (relative to data.root) or the make_saliency artefacts."""
    if not isinstance(ctx.cfg.method, SBEConfig):
        return None
    return ctx.cfg.data.saliency_dir or _abs(ctx.dir("make_saliency"))


def _dataset(ctx: StageContext, list_file: str, *, supervision: str = "none", transform=None,
             with_label: bool = False, saliency: bool = False, pseudo_dir: str | None = None,
             extra_maps: dict | None = None) -> SegDataset:
    d = ctx.cfg.data
    return SegDataset(d.root, list_file, meta=ctx.meta, supervision=supervision, image_dir=d.image_dir,
                      image_ext=d.image_ext, label_dir=d.label_dir, scribble_dir=d.scribble_dir,
                      pseudo_dir=pseudo_dir, saliency_dir=_saliency_dir(ctx) if saliency else None,
                      tags_source=d.tags_source, tags_file=d.tags_file, extra_maps=extra_maps,
                      with_label=with_label, transform=transform, lenient=d.lenient)


def _train_ids(ctx: StageContext) -> list[str]:
    return _dataset(ctx, ctx.cfg.data.train_list).ids


def _image_tensor(ctx: StageContext, image: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 → 1×3×H×W normalised float on the stage's device."""
    sample = Compose([Normalize(ctx.cfg.data.mean, ctx.cfg.data.std), ToTensor()])({K.IMAGE: image})
    return sample[K.IMAGE][None].to(ctx.device)


def _autocast(ctx: StageContext):
    return torch.autocast(ctx.device.type, dtype=ctx.amp_dtype, enabled=ctx.amp_dtype is not None)


@contextlib.contextmanager
def _num_threads(n: int | None):
    if n is None or n == torch.get_num_threads():
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _optim_overrides(optim: str, epochs: float, batch_size: int, lr: float, momentum: float, weight_decay: float,
                     lr_mult: dict[str, float], power: float) -> list[str]:
    """Run-config overrides that make the engine's trainer run one auxiliary network's schedule (poly decay)."""
    mult = "{" + ", ".join(f"{k}: {v}" for k, v in lr_mult.items()) + "}"
    return [
        f"optim.name={optim}", f"optim.lr={lr}", f"optim.momentum={momentum}", f"optim.weight_decay={weight_decay}",
        f"optim.lr_mult={mult}", "optim.wd_mult={}", "schedule.name=poly", f"schedule.epochs={epochs}",
        f"schedule.power={power}", "schedule.warmup_iters=0", f"engine.batch_size={batch_size}",
        "engine.eval_interval=0",  # an auxiliary network has no segmentation output to validate
    ]


def _cam_net(cfg, num_classes: int, pretrained: str | None) -> CAMNet:
    m = cfg.method
    return CAMNet(m.cam_backbone, num_classes - 1, pretrained=pretrained, output_stride=m.cam_output_stride,
                  norm="fixed_bn", frozen_stages=m.cam_frozen_stages, dilated=m.cam_dilated,
                  attention_k=m.cam_attention_k)


def _boundary_net(cfg, pretrained: str | None) -> BoundaryNet:
    m = cfg.method
    return BoundaryNet(m.bes_backbone, pretrained=pretrained, output_stride=m.bes_output_stride,
                       dilated=m.bes_dilated)


def _final_checkpoint(ctx: StageContext, stage: str) -> Path:
    return ctx.dir(stage) / "model_final.pth"


def _load_cams(ctx: StageContext, sample_id: str) -> dict[str, np.ndarray]:
    return load_npz(ctx.dir("make_cam") / f"{sample_id}.npz")


# ----------------------------------------------------------------------------------------------------------------
# 1. train_cam (§4.2)


def _build_train_cam(ctx: StageContext, cfg) -> tuple[nn.Module, SegDataset, list[str]]:
    m, d = cfg.method, cfg.data
    transform = Compose([
        RandomHFlip(d.flip_prob), ResizeLongSide(tuple(m.cam_resize_long)), Normalize(d.mean, d.std),
        RandomCrop(m.cam_crop_size, policy="paste"), ToTensor(),
    ])
    dataset = _dataset(ctx, d.train_list, supervision="tags", transform=transform)
    module = CAMTraining(_cam_net(cfg, ctx.meta.num_classes, m.cam_pretrained))
    overrides = _optim_overrides(m.cam_optim, m.cam_epochs, m.cam_batch_size, m.cam_lr, m.cam_momentum,
                                 m.cam_weight_decay, {"classifier": m.cam_classifier_lr_mult}, m.poly_power)
    return module, dataset, overrides


# ----------------------------------------------------------------------------------------------------------------
# 2. make_cam (§4.2)


@dataclass
class _CamState:
    ctx: StageContext
    net: CAMNet
    dataset: SegDataset
    index: dict[str, int]


def _setup_make_cam(ctx: StageContext, cfg) -> _CamState:
    net = CAMTraining(_cam_net(cfg, ctx.meta.num_classes, None))  # weights come from the checkpoint
    ctx.load_weights(net, _final_checkpoint(ctx, "train_cam"))
    net.to(ctx.device).eval()
    dataset = _dataset(ctx, cfg.data.train_list, supervision="tags")
    return _CamState(ctx, net.net, dataset, {sid: i for i, sid in enumerate(dataset.ids)})


def make_cam_image(state: _CamState, sample_id: str, path: Path) -> None:
    """Write ``<id>.npz``: ``cams`` K×⌈H/4⌉×⌈W/4⌉ float16 (random-walk input), ``high_res`` K×H×W float16
    (boundary-label input), ``keys`` K int64 0-based foreground indices of the image's tags (class id = key + 1).
    Each class map is the sum over scales of CAM(image) + flip(CAM(flipped image)), divided by its max + 1e-5."""
    ctx, m = state.ctx, state.ctx.cfg.method
    sample = state.dataset.load(state.index[sample_id])
    keys = torch.nonzero(torch.as_tensor(sample[K.TAGS][1:]) > 0).flatten().to(torch.int64)
    height, width = sample[K.ORIG_SIZE]
    low_size = (-(-height // MAP_STRIDE), -(-width // MAP_STRIDE))
    if keys.numel() == 0:  # no foreground class: everything is background
        low = torch.zeros(0, *low_size)
        high = torch.zeros(0, height, width)
    else:
        image = _image_tensor(ctx, sample[K.IMAGE])

        def cam_fn(x: torch.Tensor) -> torch.Tensor:
            with _autocast(ctx):
                return state.net.cam(x).float()

        low, high = multiscale_cam(cam_fn, image, keys.to(ctx.device), scales=m.cam_scales, flip=m.cam_flip,
                                   stride=MAP_STRIDE, output_stride=state.net.stride)
    save_npz_atomic(path, cams=low.half().cpu().numpy(), high_res=high.half().cpu().numpy(),
                    keys=keys.cpu().numpy().astype(np.int64))


# ----------------------------------------------------------------------------------------------------------------
# 3. eval_cam / 8. eval_pseudo_masks: scores of the artefacts on the training split


def _score(ctx: StageContext, predict) -> dict:
    """Confusion-matrix scores of ``predict(id) -> H×W class ids`` against the ground truth of the training split.

    Ids: ``method.train_eval_list`` or ``data.train_list``, keeping those whose ground truth exists; sharded over
    ranks, matrices summed. Without any ground truth the result is ``{"miou": None, "note": ...}``.
    """
    cfg = ctx.cfg
    root = Path(cfg.data.root)
    ids = _dataset(ctx, cfg.method.train_eval_list or cfg.data.train_list).ids
    label_dir = root / cfg.data.label_dir
    with_gt = [i for i in ids if (label_dir / f"{i}.png").is_file()]
    if not with_gt:
        note = f"no ground truth in {label_dir} for the training split: nothing to score"
        log.info(note)
        return {"miou": None, "note": note, "images": 0}
    conf = ConfusionMatrix(ctx.meta.num_classes, ctx.meta.ignore_index)
    mine = wdist.shard(with_gt)
    for sample_id in mine:
        conf.update(np.array(predict(sample_id)), np.array(read_label(label_dir / f"{sample_id}.png")))
    count = torch.tensor([len(mine)], dtype=torch.int64)
    if wdist.is_distributed():
        device = ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
        for t in (conf.mat, conf.abstained, count):
            buf = t.to(device)
            dist.all_reduce(buf)
            t.copy_(buf.cpu())
    metrics = conf.compute(absent=cfg.eval.absent)
    metrics.update(images=int(count.item()), classes=list(ctx.meta.classes))
    if len(with_gt) < len(ids):
        metrics["note"] = f"{len(ids) - len(with_gt)} of {len(ids)} training images have no ground truth (skipped)"
    log.info("mIoU %.2f over %d training images", 100 * metrics["miou"], metrics["images"])
    return metrics


def _eval_cam(ctx: StageContext, threshold: float) -> dict:
    def predict(sample_id: str) -> np.ndarray:
        data = _load_cams(ctx, sample_id)
        cams = torch.from_numpy(data["high_res"].astype(np.float32))
        return cam_to_label(cams, torch.from_numpy(data["keys"]), threshold).numpy()

    metrics = _score(ctx, predict)
    metrics["bg_threshold"] = threshold
    return metrics


def _eval_pseudo_masks(ctx: StageContext) -> dict:
    folder = ctx.dir("make_pseudo_masks")
    return _score(ctx, lambda sample_id: read_label(folder / f"{sample_id}.png"))


# ----------------------------------------------------------------------------------------------------------------
# 4. make_saliency (SBE without data.saliency_dir, §4.1)


@dataclass
class _SaliencyState:
    model: Any
    dataset: SegDataset
    index: dict[str, int]


def _setup_make_saliency(ctx: StageContext) -> _SaliencyState:
    from weakseg.data.saliency import SaliencyModel  # onnxruntime is needed only here

    dataset = _dataset(ctx, ctx.cfg.data.train_list)
    return _SaliencyState(SaliencyModel(num_threads=ctx.cfg.method.saliency_threads), dataset,
                          {sid: i for i, sid in enumerate(dataset.ids)})


def make_saliency_image(state: _SaliencyState, sample_id: str, path: Path) -> None:
    """Write ``<id>.png``: H×W 8-bit single-channel saliency, round(255·S), S min-max normalised per image."""
    image = state.dataset.load(state.index[sample_id])[K.IMAGE]
    save_label_png(path, np.round(state.model.predict(image) * 255.0).astype(np.uint8))


# ----------------------------------------------------------------------------------------------------------------
# 5. make_boundary_labels (§4.3)


@dataclass
class _LabelState:
    ctx: StageContext
    dataset: SegDataset
    index: dict[str, int]
    crf: Any


def _setup_boundary_labels(ctx: StageContext, cfg) -> _LabelState:
    m = cfg.method
    crf = None
    if m.conf_crf is not None:
        if m.conf_crf not in CRF_PRESETS:
            raise ValueError(f"method.conf_crf: unknown CRF preset {m.conf_crf!r}; known: {', '.join(CRF_PRESETS)}")
        crf = functools.partial(crf_label, params=CRF_PRESETS[m.conf_crf], backend=m.crf_backend)
    dataset = _dataset(ctx, cfg.data.train_list, saliency=isinstance(m, SBEConfig))
    return _LabelState(ctx, dataset, {sid: i for i, sid in enumerate(dataset.ids)}, crf)


def make_boundary_labels_image(state: _LabelState, sample_id: str, path: Path) -> None:
    """Write ``<id>.png``: H×W uint8 codes BG 0, FG 50, FG_FG 100, FG_BG 150, IGNORE 200, CERTAIN_FG_BG 250 (SBE)
    from the CAM ``high_res`` (and, for SBE, the saliency map)."""
    m = state.ctx.cfg.method
    sample = state.dataset.load(state.index[sample_id])
    cams = _load_cams(state.ctx, sample_id)
    cues = {}
    if isinstance(m, SBEConfig):
        cues = dict(saliency=sample[K.SALIENCY], salbound_thres=m.salbound_thres, sal_bg_thres=m.sal_bg_thres)
    _, codes = make_boundary_labels(
        cams["high_res"].astype(np.float32), cams["keys"], sample[K.IMAGE], conf_fg_thres=m.conf_fg_thres,
        conf_bg_thres=m.conf_bg_thres, window=m.window_size, theta_scale=m.theta_scale, theta_diff=m.theta_diff,
        crf=state.crf, **cues)
    save_label_png(path, codes)


# ----------------------------------------------------------------------------------------------------------------
# 6. train_boundary_net (§4.4, §4.5)


def _build_train_boundary(ctx: StageContext, cfg) -> tuple[nn.Module, SegDataset, list[str]]:
    m, d = cfg.method, cfg.data
    sbe = isinstance(m, SBEConfig)
    transform = build_train_transforms(crop_size=m.bes_crop_size, scale_range=tuple(m.bes_scale_range),
                                       flip_prob=d.flip_prob, color_jitter=None, mean=d.mean, std=d.std,
                                       crop_policy="paste")
    dataset = _dataset(ctx, d.train_list, transform=transform, saliency=sbe,
                       extra_maps={K.BOUNDARY: _abs(ctx.dir("make_boundary_labels"))})
    module = BoundaryTraining(_boundary_net(cfg, m.bes_pretrained), m.sal_bg_thres if sbe else None)
    overrides = _optim_overrides(m.bes_optim, m.bes_epochs, m.bes_batch_size, m.bes_lr, m.bes_momentum,
                                 m.bes_weight_decay, {}, m.poly_power)
    return module, dataset, overrides


# ----------------------------------------------------------------------------------------------------------------
# 7. make_pseudo_masks (§4.6)


@dataclass
class _PseudoState:
    ctx: StageContext
    net: BoundaryNet
    dataset: SegDataset
    index: dict[str, int]
    crf: Any


def _setup_pseudo_masks(ctx: StageContext, cfg) -> _PseudoState:
    m = cfg.method
    if m.rw_normalize not in ("global", "per_class"):
        raise ValueError(f"method.rw_normalize must be global or per_class, got {m.rw_normalize!r}")
    crf = None
    if m.pseudo_crf is not None:
        if m.pseudo_crf not in CRF_PRESETS:
            raise ValueError(f"method.pseudo_crf: unknown CRF preset {m.pseudo_crf!r}; "
                             f"known: {', '.join(CRF_PRESETS)}")
        crf = functools.partial(crf_label, params=CRF_PRESETS[m.pseudo_crf], backend=m.crf_backend)
    module = BoundaryTraining(_boundary_net(cfg, None), None)  # weights come from the checkpoint
    ctx.load_weights(module, _final_checkpoint(ctx, "train_boundary_net"))
    module.to(ctx.device).eval()
    dataset = _dataset(ctx, cfg.data.train_list)
    return _PseudoState(ctx, module.net, dataset, {sid: i for i, sid in enumerate(dataset.ids)}, crf)


def make_pseudo_mask_image(state: _PseudoState, sample_id: str, path: Path) -> None:
    """Write ``<id>.png``: H×W palette PNG of class ids (0 = background, key + 1 = class), never 255.

    B = flip-averaged boundary map (stride 4); the CAMs ``cams`` walk with T = colnorm(a^β) for 2^exp_times steps
    from V ⊙ (1 − B); upsampled ×4, divided by the max, argmax([sem_seg_bg_thres, scores]); optionally CRF-refined.
    """
    ctx, m = state.ctx, state.ctx.cfg.method
    sample = state.dataset.load(state.index[sample_id])
    cams = _load_cams(ctx, sample_id)
    keys = torch.from_numpy(cams["keys"])
    height, width = sample[K.ORIG_SIZE]
    if keys.numel() == 0:
        label = np.zeros((height, width), dtype=np.uint8)
    else:
        with _autocast(ctx):
            boundary = state.net.boundary_map(_image_tensor(ctx, sample[K.IMAGE])).float()
        v = torch.from_numpy(cams["cams"].astype(np.float32)).to(ctx.device)
        if boundary.shape != v.shape[1:]:
            raise ValueError(f"{sample_id}: boundary map {tuple(boundary.shape)} and CAMs {tuple(v.shape[1:])} differ "
                             f"in size (both must be at stride {MAP_STRIDE})")
        with _num_threads(m.rw_threads if ctx.device.type == "cpu" else None):
            label = propagate_to_label(v, boundary, keys.to(ctx.device), (height, width), m.sem_seg_bg_thres,
                                       beta=m.beta, exp_times=m.exp_times, radius=m.rw_radius, stride=MAP_STRIDE,
                                       normalize=m.rw_normalize).cpu()
        if state.crf is not None:
            lut = torch.cat([torch.zeros(1, dtype=torch.int64), keys + 1])  # channel index → class id
            channel = torch.searchsorted(lut, label)  # lut is sorted: class id → channel index
            label = lut[torch.from_numpy(state.crf(sample[K.IMAGE], channel.numpy(), len(lut)))]
        label = label.numpy().astype(np.uint8)
    save_label_png(path, label, ctx.meta.palette)


# ----------------------------------------------------------------------------------------------------------------
# 9. train_seg and 10. evaluate (§4.7)


def _final_model_config(cfg):
    # the final network gets its ImageNet weights in train_seg only; later stages load the trained checkpoint
    return dataclasses.replace(cfg.model, pretrained=None)


def _build_train_seg(ctx: StageContext, cls) -> tuple[nn.Module, SegDataset, list[str]]:
    cfg = ctx.cfg
    d = cfg.data
    transform = build_train_transforms(crop_size=d.crop_size, scale_range=tuple(d.scale_range),
                                       flip_prob=d.flip_prob, color_jitter=d.color_jitter, mean=d.mean, std=d.std)
    dataset = _dataset(ctx, d.train_list, supervision="pseudo", transform=transform,
                       pseudo_dir=_abs(ctx.dir("make_pseudo_masks")))
    return cls(cfg.method, cfg.model, ctx.meta.num_classes), dataset, []


def _evaluate(ctx: StageContext, cls) -> dict:
    cfg = ctx.cfg
    method = cls(cfg.method, _final_model_config(cfg), ctx.meta.num_classes)
    ctx.load_weights(method, _final_checkpoint(ctx, "train_seg"))
    dataset = _dataset(ctx, cfg.data.val_list, with_label=True,
                       transform=build_eval_transforms(mean=cfg.data.mean, std=cfg.data.std))
    return ctx.evaluate(method, dataset, ctx.dir("evaluate"))
