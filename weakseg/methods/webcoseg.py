"""WebCoseg (Shen et al., BMVC 2017): segmentation from image-level tags and web images with co-segmentation
masks; methods.md §5 and §1.5. The reference's co-segmentation is an external MATLAB pipeline; weakseg runs its own
(weakseg/modules/coseg.py, docs/coseg.md) or reads ready-made web masks.

The pipeline (``weakseg run configs/webcoseg/*.yaml``):

    index_web             index the web folder (one sub-folder per class name, or the reference's flat
                          ``<class>_<number>`` layout) into a list; unreadable / tiny / duplicate images skipped
    cosegment             per class (sharded over ranks): the shared object of the class's web images
                          → masks/<web id>.png (0, class id, 255 unsure); skipped with method.web.mask_dir
    train_init            the initial mask generator on the web images and their masks only (method.init:
                          its network, constant LR, window-then-resize crops, best-snapshot selection)       (§5.2-5.3)
    eval_init             the chosen initial generator on data.val_list with the eval section (the reference's
                          ``eval_seg_model.py --model init``)
    estimate_masks        target training images: 3 scales, summed probabilities, classes not in the image's
                          tags zeroed (background kept), argmax, optional CRF                                (§5.4)
    eval_estimated_masks  their mIoU on the training split (where ground truth exists)
    train_seg             the final model (the run's sections): segmentation branch + global branch, fused
                          logits s + g, CE on the estimated masks + BCE of g on the classes present in them  (§5.2)
    evaluate              the fused network on data.val_list (§5.5: 0.7 / 1.0 / 1.3, summed probabilities, CRF)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from weakseg.data import keys as K
from weakseg.data.transforms import Compose, Normalize, RandomCrop, RandomHFlip, RandomScale, ToTensor
from weakseg.data.web import DEFAULT_LIST, check_web_masks, group_by_class, index_web_images, read_web_list
from weakseg.data.web_dataset import WebSegDataset
from weakseg.engine.config import ModelConfig, OptimConfig, ScheduleConfig
from weakseg.losses.partial_ce import PartialCrossEntropy
from weakseg.methods.base import Method, upsample_to
from weakseg.methods.kit import (DATA_TAGS, RUN_EVAL, EvalStage, PerImageStage, Stage, StageContext, TrainJob,
                                 TrainSection, TrainStage, evaluate_stage, run_train_transforms, score_masks_stage,
                                 train_seg_stage)
from weakseg.models.webcoseg_net import WebCosegNet
from weakseg.modules.coseg import CosegConfig, CosegModels, cosegment_class
from weakseg.modules.crf import label_refiner, refine_class_map
from weakseg.modules.inference import infer_probs
from weakseg.utils import dist as wdist
from weakseg.utils.io import DataError, save_label_png, write_json_atomic, write_text_atomic

log = logging.getLogger("weakseg")

# ----------------------------------------------------------------------------------------------------------------
# configuration


@dataclass
class WebSection:
    """The web image set."""

    root: str = "web"  # web folder (relative to data.root unless absolute)
    layout: str = "auto"  # folders (one sub-folder per class name) | flat (<class>_<number> stems) | auto
    image_dir: str = "web_images"  # flat layout: the image folder under the root
    min_side: int = 32  # images with a shorter side are skipped as tiny
    mask_dir: str | None = None  # ready-made web masks (relative to the web root unless absolute): no co-segmentation
    flat_masks: bool = False  # ready-made masks named by the image stem (the reference's web_labels/)


def _init_model() -> ModelConfig:
    return ModelConfig(backbone="resnet50", output_stride=8, norm="frozen_bn", head="largefov")


@dataclass
class InitSection(TrainSection):
    """The initial mask generator (§5.2-5.3): trained on web images only, constant LR, snapshot selection on
    ``best`` (split ``holdout``: the fraction ``best.holdout`` of the *target* training ids with ground truth, which
    this network never trains on; ``val``: data.val_list, as the reference, stated in the metrics)."""

    model: ModelConfig = field(default_factory=_init_model)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="sgd", lr=1.6e-3, momentum=0.9,
                                                                   weight_decay=5e-4))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="poly", iters=8000, power=0.0))
    crop_size: int = 320  # window-then-resize crop
    scale_range: tuple[float, float] = (0.7, 1.3)  # window side = crop_size / s
    flip_prob: float = 0.5  # horizontal flip probability


@dataclass
class EstimateSection:
    """Mask estimation on the target training images (§5.4)."""

    scales: tuple[float, ...] = (0.7, 1.0, 1.3)  # image scales; probabilities summed
    crf: str | None = None  # CRF preset on the estimated masks (None: the reference's argmax)


@dataclass
class WebCosegConfig:
    name: str = "webcoseg"  # method name
    web: WebSection = field(default_factory=WebSection)  # the web images
    coseg: CosegConfig = field(default_factory=CosegConfig)  # the built-in co-segmentation
    init: InitSection = field(default_factory=InitSection)  # the initial mask generator
    estimate: EstimateSection = field(default_factory=EstimateSection)  # mask estimation
    global_branch: bool = True  # the final model's image-classification branch (fused logits s + g)
    global_weight: float = 1.0  # weight of the global branch's BCE (the reference: 1/16 per image of 16 = mean)
    score_list: str | None = None  # ids scored by eval_estimated_masks (None = train_list ids with GT)


# ----------------------------------------------------------------------------------------------------------------
# the networks' training objectives


def _network(model_cfg, num_classes: int, global_branch: bool) -> WebCosegNet:
    return WebCosegNet(model_cfg.backbone, model_cfg.head, num_classes, pretrained=model_cfg.pretrained,
                       output_stride=model_cfg.output_stride, norm=model_cfg.norm,
                       head_kwargs=dict(model_cfg.head_kwargs), backbone_options=dict(model_cfg.backbone_options),
                       global_branch=global_branch)


class WebCoseg(Method):
    """The final model (§5.2): CE of softmax(s + g) on the estimated mask + BCE of σ(g) on the classes present in
    it (``tags``, read off the mask). ``predict`` is the fused network."""

    Config = WebCosegConfig
    supervision = "pseudo"

    def __init__(self, cfg: WebCosegConfig, model_cfg, num_classes: int):
        super().__init__(cfg, model_cfg, num_classes)
        self.loss_seg = PartialCrossEntropy()

    def build_model(self, model_cfg, num_classes: int) -> WebCosegNet:
        return _network(model_cfg, num_classes, self.cfg.global_branch)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return upsample_to(self.model(images)["fused"], images.shape[-2:])

    def training_step(self, batch: dict, step: int) -> dict:
        target = batch[K.PSEUDO]
        out = self.model(batch[K.IMAGE])
        losses = {"loss_seg": self.loss_seg(upsample_to(out["fused"], target.shape[-2:]), target)}
        if "global" in out and self.cfg.global_weight > 0:
            # summed over classes, averaged over the batch (the reference's gradient scale 1/batch)
            bce = F.binary_cross_entropy_with_logits(out["global"].float(), batch[K.TAGS].float(), reduction="sum")
            losses["loss_global"] = self.cfg.global_weight * bce / target.shape[0]
        return losses

    @classmethod
    def stages(cls, cfg) -> list[Stage]:
        m = cfg.method
        web_cfg = ("method.web.root", "method.web.layout", "method.web.image_dir", "method.web.min_side")
        stages: list[Stage] = [
            EvalStage("index_web", _index_web, config=("data.root",) + web_cfg,
                      doc=f"{DEFAULT_LIST}: '<image path> <class id>' per kept web image; metrics.json: counts"),
        ]
        mask_reads: tuple[str, ...] = ()
        if m.web.mask_dir is None:
            stages.append(PerImageStage(
                "cosegment", _classes, _setup_coseg, cosegment_image_class, ext=".json", reads=("index_web",),
                config=("method.coseg", "engine.seed"),
                doc="masks/<web id>.png: 0, the class id, 255 unsure; <class>.json per class (counts, seconds)"))
            mask_reads = ("cosegment",)
        masks = ("method.web.mask_dir", "method.web.flat_masks")
        stages += [
            TrainStage("train_init", _build_train_init, section="method.init", reads=("index_web",) + mask_reads,
                       config=masks + ("method.init", "data.mean", "data.std", "data.label_dir", "data.train_list",
                                       "data.val_list", "engine.seed", "engine.amp"),
                       doc="the initial mask generator; train_init/model_final.pth (+ model_best.pth)"),
            EvalStage("eval_init", _eval_init, reads=("train_init",), config=RUN_EVAL + ("method.init.model",),
                      doc="the initial generator (model_best.pth, else model_final.pth) on data.val_list; "
                          "metrics.json, report.md, predictions/"),
            PerImageStage("estimate_masks", lambda ctx: ctx.train_ids(), _setup_estimate, estimate_mask_image,
                          reads=("train_init",), config=DATA_TAGS + ("method.estimate", "eval.amp"),
                          doc="<id>.png: palette PNG of class ids (argmax of the tag-masked summed probabilities)"),
            score_masks_stage("eval_estimated_masks", "estimate_masks", lambda c: c.method.score_list,
                              config=("data.root", "data.train_list", "method.score_list")),
            train_seg_stage(cls, "estimate_masks", dataset=_final_dataset,
                            config=("method.global_branch", "method.global_weight"),
                            doc="the final two-branch model on the estimated masks; train_seg/model_final.pth"),
            evaluate_stage(cls, "train_seg"),
        ]
        return stages


class InitGenerator(Method):
    """The initial mask generator (§5.2): the segmentation FCN alone, CE on the web masks (255 = unsure)."""

    supervision = "pseudo"
    find_unused_parameters: ClassVar[bool] = False

    def __init__(self, cfg, model_cfg, num_classes: int):
        super().__init__(cfg, model_cfg, num_classes)
        self.loss_seg = PartialCrossEntropy()

    def build_model(self, model_cfg, num_classes: int) -> WebCosegNet:
        return _network(model_cfg, num_classes, global_branch=False)

    def training_step(self, batch: dict, step: int) -> dict:
        target = batch[K.PSEUDO]
        logits = upsample_to(self.model(batch[K.IMAGE])["seg"], target.shape[-2:])
        return {"loss_seg": self.loss_seg(logits, target)}


# ----------------------------------------------------------------------------------------------------------------
# index_web and cosegment


def _web_root(ctx: StageContext) -> Path:
    root = Path(ctx.cfg.method.web.root)
    return root if root.is_absolute() else Path(ctx.cfg.data.root) / root


def _web_items(ctx: StageContext):
    return read_web_list(ctx.dir("index_web") / DEFAULT_LIST, _web_root(ctx), ctx.meta.num_classes)


def _index_web(ctx: StageContext) -> dict:
    w = ctx.cfg.method.web
    summary = index_web_images(_web_root(ctx), ctx.meta, layout=w.layout, image_dir=w.image_dir, min_side=w.min_side,
                               out=ctx.dir("index_web") / DEFAULT_LIST)
    if summary.problems:
        write_text_atomic(ctx.dir("index_web") / "skipped.txt", "\n".join(summary.problems) + "\n")
    return {"miou": None, "layout": summary.layout, "images": len(summary.items), "skipped": summary.skipped,
            "per_class": {ctx.meta.classes[c]: n for c, n in summary.per_class.items()}}


def _classes(ctx: StageContext) -> list[str]:
    return [f"class_{c:03d}" for c in group_by_class(_web_items(ctx))]


@dataclass
class _CosegState:
    ctx: StageContext
    models: CosegModels
    groups: dict[int, list]


def _setup_coseg(ctx: StageContext) -> _CosegState:
    cfg = ctx.cfg.method.coseg
    return _CosegState(ctx, CosegModels(cfg, device=ctx.device), group_by_class(_web_items(ctx)))


def cosegment_image_class(state: _CosegState, item: str, path: Path) -> None:
    """Co-segment the web images of one class (item ``class_<id>``): masks/<web id>.png, then ``<item>.json``
    (written last: its existence marks the class done)."""
    class_id = int(item.split("_")[1])
    items = state.groups[class_id]
    cfg = state.ctx.cfg
    result = cosegment_class([i.path for i in items], class_id, cfg.method.coseg, models=state.models,
                             seed=cfg.engine.seed)
    masks = path.parent / "masks"
    for web_item, mask in zip(items, result.masks):
        save_label_png(masks / f"{web_item.id}.png", mask, state.ctx.meta.palette)
    write_json_atomic(path, {"class_id": class_id, "class": state.ctx.meta.classes[class_id], "images": len(items),
                             "outliers": int(np.sum(result.outliers)), "clusters": result.num_clusters,
                             "foreground_clusters": list(map(int, result.foreground_clusters)),
                             "seconds_per_image": result.seconds_per_image()})


# ----------------------------------------------------------------------------------------------------------------
# train_init


def _mask_dir(ctx: StageContext) -> Path:
    w = ctx.cfg.method.web
    if w.mask_dir is None:
        return ctx.dir("cosegment") / "masks"
    folder = Path(w.mask_dir)
    return folder if folder.is_absolute() else _web_root(ctx) / folder


def _build_train_init(ctx: StageContext) -> TrainJob:
    s: InitSection = ctx.cfg.method.init
    d = ctx.cfg.data
    transform = Compose([RandomHFlip(s.flip_prob), RandomScale(tuple(s.scale_range), image_mode="bilinear"),
                         Normalize(d.mean, d.std), RandomCrop(s.crop_size, policy="corner"), ToTensor()])
    mask_dir = _mask_dir(ctx)
    if not mask_dir.is_dir():
        raise DataError(f"{mask_dir}: web mask folder not found")
    items = _web_items(ctx)
    if ctx.cfg.method.web.mask_dir is not None:
        # ready-made masks (e.g. the reference's 52k downloaded web_labels/) are checked once here, so that one
        # missing or malformed file is skipped and listed instead of stopping the training thousands of steps in
        items, problems = check_web_masks(mask_dir, items, flat=ctx.cfg.method.web.flat_masks)
        skipped = ctx.dir("train_init") / "skipped_masks.txt"
        if problems and wdist.is_main():
            write_text_atomic(skipped, "\n".join(problems) + "\n")
            log.warning("train_init: %d web images skipped for their masks (listed in %s)", len(problems), skipped)
        if not items:
            raise DataError(f"{mask_dir}: no usable web mask (problems listed in {skipped})")
    dataset = WebSegDataset(items, mask_dir, ctx.meta, flat=ctx.cfg.method.web.flat_masks, transform=transform)
    holdout = None
    if s.best.interval > 0:
        holdout = _selection_set(ctx, s)
    return TrainJob(InitGenerator(ctx.cfg.method, s.model, ctx.meta.num_classes), dataset, holdout=holdout)


def _selection_set(ctx: StageContext, s: InitSection):
    """The target images the init generator is selected on (with ground truth, eval transforms)."""
    from weakseg.data.dataset import hashed_subset
    from weakseg.data.transforms import build_eval_transforms

    d = ctx.cfg.data
    if s.best.split == "val":
        list_file = d.val_list
    elif s.best.split == "holdout":
        ids = ctx.train_ids()
        chosen = hashed_subset(ids, max(1, int(round(s.best.holdout * len(ids)))))
        list_file = str(ctx.dir("train_init") / "selection.txt")
        write_text_atomic(Path(list_file), "\n".join(chosen) + "\n")
    else:
        list_file = s.best.split
    return ctx.dataset(list_file, with_label=True, transform=build_eval_transforms(mean=d.mean, std=d.std))


def _eval_init(ctx: StageContext) -> dict:
    from weakseg.data.transforms import build_eval_transforms

    net = InitGenerator(ctx.cfg.method, _no_weights(ctx.cfg.method.init.model), ctx.meta.num_classes)
    ctx.load_weights(net, ctx.checkpoint("train_init"))
    d = ctx.cfg.data
    dataset = ctx.dataset(split="val", with_label=True, transform=build_eval_transforms(mean=d.mean, std=d.std))
    return ctx.evaluate(net, dataset, ctx.dir("eval_init"))


# ----------------------------------------------------------------------------------------------------------------
# estimate_masks (§5.4)


@dataclass
class _EstimateState:
    ctx: StageContext
    net: InitGenerator
    dataset: Any
    crf: Any


def _setup_estimate(ctx: StageContext) -> _EstimateState:
    m = ctx.cfg.method
    net = InitGenerator(m, _no_weights(m.init.model), ctx.meta.num_classes)
    ctx.load_weights(net, ctx.checkpoint("train_init"))
    net.to(ctx.device).eval()
    crf = label_refiner(m.estimate.crf, key="method.estimate.crf")
    return _EstimateState(ctx, net, ctx.dataset(supervision="tags"), crf)


def _no_weights(model_cfg: ModelConfig) -> ModelConfig:
    import dataclasses

    return dataclasses.replace(model_cfg, pretrained=None)


@torch.no_grad()
def estimate_mask_image(state: _EstimateState, sample_id: str, path: Path) -> None:
    """Write ``<id>.png``: argmax over classes of (Σ_scales P) ⊙ v, v = the image's tags (background always 1)."""
    ctx = state.ctx
    sample = state.dataset.load_id(sample_id)
    image = ctx.image_tensor(sample[K.IMAGE])
    with ctx.autocast():
        probs = infer_probs(state.net.predict, image, scales=tuple(ctx.cfg.method.estimate.scales), average="prob")
    tags = torch.as_tensor(sample[K.TAGS], device=probs.device) > 0
    probs = probs[0] * tags[:, None, None]  # classes not in the image's tags: 0 (background is always tagged)
    label = probs.argmax(0).cpu()  # an untagged class (probability 0) never wins over a tagged one
    if state.crf is not None:  # over the tagged channels only (background is always tagged)
        label = refine_class_map(state.crf, sample[K.IMAGE], label, torch.nonzero(tags[1:]).flatten().cpu())
    save_label_png(path, label.cpu().numpy().astype(np.uint8), ctx.meta.palette)


# ----------------------------------------------------------------------------------------------------------------
# train_seg: the final model on the estimated masks, image labels read off them


def _final_dataset(ctx: StageContext):
    masks = ctx.dir("estimate_masks")
    return ctx.dataset(supervision="pseudo", pseudo_dir=masks, tags_source="pseudo", tags_dir=masks,
                       transform=run_train_transforms(ctx.cfg))


__all__ = ["InitGenerator", "WebCoseg", "WebCosegConfig"]
