"""BES (Chen et al., ECCV 2020) and SBE (Shi et al., IEEE SPL 2024): image-level WSSS by boundary-guided CAM
propagation; methods.md §4.

The pipeline (``weakseg run configs/{bes,sbe}/*.yaml``), in the paper's order (§4.1, §4.6b):

    train_cam, make_cam, eval_cam   the kit's CAM stages (method.cam)                                      (§4.2)
    make_saliency          (SBE, when data.saliency_dir is null) U²-Net-p saliency maps                    (§4.1)
    make_boundary_labels   CRF-refined confident regions → window fractions → codes; SBE: saliency cues  (§4.3)
    train_boundary_net     frozen backbone + side branches, BES loss or SBE's saliency-split loss         (§4.4–4.5)
    make_pseudo_masks      B = flip-averaged boundary map; random walk of CAM·(1 − B); bg threshold      (§4.6)
    eval_pseudo_masks      mIoU of the pseudo-masks on the training split                                 (§4.6)
    train_seg, evaluate    DeepLab-v2 on the pseudo-masks (the run's own sections), then val            (§4.7)

One switch, ``method.saliency``, turns BES into SBE: saliency S = 0 marks background and |Sobel(S)| > 0.5 marks a
certain boundary in the labels (§4.3); the boundary loss splits its boundary term into salient and non-salient
pixels and does not halve the fg/bg term (§4.5). ``method.name: sbe`` is BES with the switch on and SBE's thresholds.

Reference bugs not reproduced (§4.9): SGD has real momentum (the reference passed weight decay into the momentum
slot; the paper presets use momentum 0.9 with 1/10 of the reference LR, the same steady-state step); artefacts are
npz and PNG, never pickles; every checkpoint loads strictly; the saliency background test is a threshold
(``labels.sal_bg_thres``, 0 = the reference's exact-zero test); the Sobel edge is centred; the saliency map is read
only where it is used (train_boundary_net, not train_cam, §4.9.1).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from weakseg.data import keys as K
from weakseg.data.transforms import build_train_transforms
from weakseg.engine.config import ModelConfig, OptimConfig, ScheduleConfig
from weakseg.losses.boundary import BESBoundaryLoss, SBEBoundaryLoss
from weakseg.losses.partial_ce import PartialCrossEntropy
from weakseg.methods.base import Method, upsample_to
from weakseg.methods.kit import (DATA_IMAGES, DATA_TAGS, MAP_STRIDE, CAMSection, PerImageStage, Stage, StageContext,
                                 TrainJob, TrainSection, TrainStage, cam_stages, evaluate_stage, get_path, load_cams,
                                 saliency_stage, score_masks_stage, section_paths, train_seg_stage)
from weakseg.models.boundary_net import BoundaryNet
from weakseg.modules.boundary_labels import make_boundary_labels
from weakseg.modules.crf import label_refiner, refine_class_map
from weakseg.modules.random_walk import propagate_to_label
from weakseg.utils.io import save_label_png
from weakseg.utils.threads import num_threads

log = logging.getLogger("weakseg")

# ----------------------------------------------------------------------------------------------------------------
# configuration: one typed section per stage


@dataclass
class BoundaryLabelsSection:
    """make_boundary_labels (§4.3)."""

    conf_fg_thres: float = 0.30  # background score of the confident-foreground proposal
    conf_bg_thres: float = 0.07  # background score of the confident-background proposal
    crf: str | None = "bes_label"  # CRF preset refining both proposals (None = no CRF)
    window_size: int = 13  # side of the window of class fractions (odd)
    theta_scale: float = 0.30  # θ_s
    theta_diff: float = 0.10  # θ_d
    salbound_thres: float = 0.5  # SBE: Sobel magnitude of the max-normalised saliency above which a boundary is certain
    sal_bg_thres: float = 0.0  # SBE: saliency at or below which a pixel is background / non-salient (reference: 0)


@dataclass
class BoundaryNetSection(TrainSection):
    """train_boundary_net (§4.4, §4.5): a frozen backbone (``model.norm: frozen_bn``) with trainable side
    branches (``model.head: side_branches``)."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(backbone="resnet50", output_stride=16,
                                                                   norm="frozen_bn", head="side_branches"))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="sgd", lr=0.01, weight_decay=1e-4))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="poly", epochs=3.0))
    dilated: bool = False  # dilate the stages past the output stride
    crop_size: int = 512  # random crop (labels padded with 255 = ignored)
    scale_range: tuple[float, float] = (0.5, 1.5)  # random scale range
    flip_prob: float = 0.5  # horizontal flip probability


@dataclass
class WalkSection:
    """make_pseudo_masks (§4.6)."""

    beta: float = 5.0  # exponent β of the affinities
    exp_times: int = 8  # the walk takes 2^exp_times steps
    radius: int = 5  # neighbourhood radius of the affinities (stride-4 cells)
    normalize: str = "global"  # global (reference: one max over all classes) | per_class
    threads: int | None = 1  # torch CPU threads during the walk (many small ops: 1 is fastest; None = keep)
    bg_thres: float = 0.25  # background score of the pseudo-masks (BES 0.25, SBE 0.21)
    crf: str | None = None  # CRF preset applied to the pseudo-masks (§4.6 step 6: bes_semseg; None = raw)


@dataclass
class PropagationConfig:
    """The sections of the stages after the CAMs (boundary labels → boundary net → random walk); CDSP embeds them
    as ``method.bes`` to make its pseudo-labels with BES/SBE."""

    labels: BoundaryLabelsSection = field(default_factory=BoundaryLabelsSection)  # make_boundary_labels
    boundary: BoundaryNetSection = field(default_factory=BoundaryNetSection)  # train_boundary_net
    walk: WalkSection = field(default_factory=WalkSection)  # make_pseudo_masks
    crf_backend: str = "auto"  # auto (pydensecrf when installed, else torch) | pydensecrf | torch
    saliency_threads: int | None = None  # onnxruntime CPU threads of make_saliency (None = onnxruntime's choice)


@dataclass
class BESConfig(PropagationConfig):
    name: str = "bes"  # method name
    saliency: bool = False  # the BES → SBE switch: saliency cues in the labels and the saliency-split loss
    cam: CAMSection = field(default_factory=CAMSection)  # train_cam / make_cam / eval_cam
    score_list: str | None = None  # ids scored by eval_cam / eval_pseudo_masks (None = train_list ids with GT)


@dataclass
class SBEConfig(BESConfig):
    name: str = "sbe"
    saliency: bool = True
    cam: CAMSection = field(default_factory=lambda: CAMSection(eval_thres=0.21))
    walk: WalkSection = field(default_factory=lambda: WalkSection(bg_thres=0.21))


# ----------------------------------------------------------------------------------------------------------------
# the boundary network's training objective (the trainer calls forward(batch, step))


class BoundaryTraining(nn.Module):
    """BES loss, or SBE's saliency-guided loss when ``sal_bg_thres`` is given. The boundary codes are sampled at
    the logits' cell centres (stride 4); crop padding (255) and IGNORE (200) carry no loss. Saliency at or below
    ``sal_bg_thres`` counts as non-salient (the reference's R = 1[S > 0] is the threshold 0)."""

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


def _boundary_net(s: BoundaryNetSection, pretrained: bool) -> BoundaryNet:
    m = s.model
    if m.head != "side_branches" or m.norm != "frozen_bn":
        raise ValueError(f"method.boundary.model: the boundary network is a frozen backbone (norm: frozen_bn) with "
                         f"side branches (head: side_branches); got norm {m.norm!r}, head {m.head!r}")
    return BoundaryNet(m.backbone, pretrained=m.pretrained if pretrained else None, output_stride=m.output_stride,
                       dilated=s.dilated, **m.head_kwargs)


# ----------------------------------------------------------------------------------------------------------------
# the method: the final segmentation network and the stage list


class BES(Method):
    """BES; as a ``Method`` it is the final network (DeepLab-v2 in the paper) trained with CE on the pseudo-masks
    (``train_seg``), so ``weakseg eval --ckpt <work_dir>/train_seg/model_final.pth`` works like for any single-stage
    method."""

    Config = BESConfig
    supervision = "pseudo"

    def __init__(self, cfg: BESConfig, model_cfg, num_classes: int):
        # The papers' final network is DeepLab-v2 (§4.7; every paper preset sets it); any other segmentor can be
        # trained on the same pseudo-masks (the demo trains the network every other row of its table uses), and the
        # run says so.
        if model_cfg.head != "deeplabv2":
            log.info("%s: final network head %s (the paper's is DeepLab-v2, §4.7)", cfg.name, model_cfg.head)
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
        stages: list[Stage] = cam_stages("method.cam", score_list="method.score_list" if m.score_list else None)
        stages += propagation_stages(cfg, "method", m.saliency, "method.saliency")
        stages += [
            score_masks_stage("eval_pseudo_masks", "make_pseudo_masks",
                              lambda c: c.method.score_list, config=("method.score_list",)),
            train_seg_stage(cls, "make_pseudo_masks", doc="the final network (DeepLab-v2) on the pseudo-masks; "
                                                               "train_seg/model_final.pth"),
            evaluate_stage(cls, "train_seg"),
        ]
        return stages


def propagation_stages(cfg, prefix: str, saliency: bool, switch: str) -> list[Stage]:
    """[make_saliency (when needed),] make_boundary_labels → train_boundary_net → make_pseudo_masks, reading the
    :class:`PropagationConfig` at ``prefix`` and the CAMs of the kit's ``make_cam``; ``saliency`` is the SBE switch
    (``switch``: the config path that decides it, for the fingerprints)."""
    sal_stage = saliency and cfg.data.saliency_dir is None
    sal_reads = ("make_saliency",) if sal_stage else ()
    sal_config = (switch, "data.saliency_dir")
    p = functools.partial
    stages: list[Stage] = [saliency_stage(f"{prefix}.saliency_threads")] if sal_stage else []
    return stages + [
        PerImageStage("make_boundary_labels", _train_ids, p(_setup_boundary_labels, prefix=prefix, saliency=saliency),
                      make_boundary_labels_image, reads=("make_cam",) + sal_reads,
                      config=DATA_IMAGES + sal_config + (f"{prefix}.labels", f"{prefix}.crf_backend"), doc=(
                          "<id>.png: 8-bit boundary codes BG 0, FG 50, FG_FG 100, FG_BG 150, IGNORE 200, "
                          "CERTAIN_FG_BG 250 (SBE)")),
        TrainStage("train_boundary_net", p(_build_train_boundary, prefix=prefix, saliency=saliency),
                   section=f"{prefix}.boundary", reads=("make_boundary_labels",) + sal_reads,
                   config=DATA_IMAGES + sal_config + (f"{prefix}.boundary", f"{prefix}.labels.sal_bg_thres",
                                                      "engine.seed", "engine.amp"),
                   doc="boundary net (frozen backbone + side branches); train_boundary_net/model_final.pth"),
        PerImageStage("make_pseudo_masks", _train_ids, p(_setup_pseudo_masks, prefix=prefix),
                      make_pseudo_mask_image, reads=("make_cam", "train_boundary_net"),
                      config=DATA_TAGS + section_paths(f"{prefix}.boundary", "model", "dilated")
                      + (f"{prefix}.walk", f"{prefix}.crf_backend", "eval.amp"),
                      doc="<id>.png: palette PNG of class ids 0..C−1 (never 255)"),
    ]


def _train_ids(ctx: StageContext) -> list[str]:
    return ctx.train_ids()


class SBE(BES):
    """SBE = BES with ``method.saliency`` on and SBE's thresholds (the defaults of :class:`SBEConfig`)."""

    Config = SBEConfig


def _saliency_dir(ctx: StageContext, saliency: bool) -> str | None:
    """The saliency folder when the switch is on: ``data.saliency_dir`` (relative to data.root) or make_saliency's."""
    if not saliency:
        return None
    return ctx.cfg.data.saliency_dir or str(ctx.dir("make_saliency"))


# ----------------------------------------------------------------------------------------------------------------
# make_boundary_labels (§4.3)


@dataclass
class _State:
    ctx: StageContext
    section: Any  # the PropagationConfig
    dataset: Any
    crf: Any = None
    net: Any = None
    saliency: bool = False


def _setup_boundary_labels(ctx: StageContext, prefix: str, saliency: bool) -> _State:
    m = get_path(ctx.cfg, prefix)
    return _State(ctx, m, ctx.dataset(saliency_dir=_saliency_dir(ctx, saliency)),
                  label_refiner(m.labels.crf, m.crf_backend, f"{prefix}.labels.crf"), saliency=saliency)


def make_boundary_labels_image(state: _State, sample_id: str, path: Path) -> None:
    """Write ``<id>.png``: H×W uint8 codes BG 0, FG 50, FG_FG 100, FG_BG 150, IGNORE 200, CERTAIN_FG_BG 250 (SBE)
    from the CAM ``high_res`` (and, with the saliency switch, the saliency map)."""
    s = state.section.labels
    sample = state.dataset.load_id(sample_id)
    cams = load_cams(state.ctx, sample_id)
    cues = {}
    if state.saliency:
        cues = dict(saliency=sample[K.SALIENCY], salbound_thres=s.salbound_thres, sal_bg_thres=s.sal_bg_thres)
    _, codes = make_boundary_labels(
        cams["high_res"].astype(np.float32), cams["keys"], sample[K.IMAGE], conf_fg_thres=s.conf_fg_thres,
        conf_bg_thres=s.conf_bg_thres, window=s.window_size, theta_scale=s.theta_scale, theta_diff=s.theta_diff,
        crf=state.crf, **cues)
    save_label_png(path, codes)


# ----------------------------------------------------------------------------------------------------------------
# train_boundary_net (§4.4, §4.5)


def _build_train_boundary(ctx: StageContext, prefix: str, saliency: bool) -> TrainJob:
    m, d = get_path(ctx.cfg, prefix), ctx.cfg.data
    s = m.boundary
    transform = build_train_transforms(crop_size=s.crop_size, scale_range=tuple(s.scale_range),
                                       flip_prob=s.flip_prob, color_jitter=None, mean=d.mean, std=d.std,
                                       crop_policy="paste")
    dataset = ctx.dataset(transform=transform, saliency_dir=_saliency_dir(ctx, saliency),
                          maps={K.BOUNDARY: ctx.dir("make_boundary_labels")})
    return TrainJob(BoundaryTraining(_boundary_net(s, pretrained=True),
                                     m.labels.sal_bg_thres if saliency else None), dataset)


# ----------------------------------------------------------------------------------------------------------------
# make_pseudo_masks (§4.6)


def _setup_pseudo_masks(ctx: StageContext, prefix: str) -> _State:
    m = get_path(ctx.cfg, prefix)
    if m.walk.normalize not in ("global", "per_class"):
        raise ValueError(f"{prefix}.walk.normalize must be global or per_class, got {m.walk.normalize!r}")
    module = BoundaryTraining(_boundary_net(m.boundary, pretrained=False))  # weights come from the checkpoint
    ctx.load_weights(module, ctx.checkpoint("train_boundary_net"))
    module.to(ctx.device).eval()
    return _State(ctx, m, ctx.dataset(), label_refiner(m.walk.crf, m.crf_backend, f"{prefix}.walk.crf"), module.net)


@torch.no_grad()
def make_pseudo_mask_image(state: _State, sample_id: str, path: Path) -> None:
    """Write ``<id>.png``: H×W palette PNG of class ids (0 = background, key + 1 = class), never 255.

    B = flip-averaged boundary map (stride 4); the CAMs ``cams`` walk with T = colnorm(a^β) for 2^exp_times steps
    from V ⊙ (1 − B); upsampled ×4, divided by the max, argmax([bg_thres, scores]); optionally CRF-refined.
    """
    ctx, w = state.ctx, state.section.walk
    sample = state.dataset.load_id(sample_id)
    cams = load_cams(ctx, sample_id)
    keys = torch.from_numpy(cams["keys"])
    height, width = sample[K.ORIG_SIZE]
    if keys.numel() == 0:
        label = np.zeros((height, width), dtype=np.uint8)
    else:
        with ctx.autocast():
            boundary = state.net.boundary_map(ctx.image_tensor(sample[K.IMAGE])).float()
        v = torch.from_numpy(cams["cams"].astype(np.float32)).to(ctx.device)
        if boundary.shape != v.shape[1:]:
            raise ValueError(f"{sample_id}: boundary map {tuple(boundary.shape)} and CAMs {tuple(v.shape[1:])} differ "
                             f"in size (both must be at stride {MAP_STRIDE})")
        with num_threads(w.threads if ctx.device.type == "cpu" else None):
            label = propagate_to_label(v, boundary, keys.to(ctx.device), (height, width), w.bg_thres, beta=w.beta,
                                       exp_times=w.exp_times, radius=w.radius, stride=MAP_STRIDE,
                                       normalize=w.normalize).cpu()
        if state.crf is not None:
            label = refine_class_map(state.crf, sample[K.IMAGE], label, keys)
        label = label.numpy().astype(np.uint8)
    save_label_png(path, label, ctx.meta.palette)


__all__ = ["BES", "SBE", "BESConfig", "SBEConfig", "BoundaryTraining", "PropagationConfig", "propagation_stages"]
