"""The final stages shared by multi-stage methods: train the method's own segmentation network on a previous stage's
masks (the run's top-level ``model`` / ``optim`` / ``schedule`` / ``data`` sections, like ``weakseg train``), then
evaluate it on ``data.val_list``.

The trained checkpoint is an ordinary single-stage checkpoint of the method, so ``weakseg eval / predict / export
--ckpt <work_dir>/train_seg/model_final.pth`` work on it like on any run.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from weakseg.data.transforms import build_eval_transforms, build_train_transforms
from weakseg.methods.kit.stage import RUN_EVAL, RUN_TRAINING, EvalStage, StageContext, TrainJob, TrainStage


def run_train_transforms(cfg):
    """The run's training augmentation (``data`` section), as ``weakseg train`` builds it."""
    d = cfg.data
    return build_train_transforms(crop_size=d.crop_size, scale_range=tuple(d.scale_range), flip_prob=d.flip_prob,
                                  color_jitter=d.color_jitter, mean=d.mean, std=d.std, crop_policy=d.crop_policy,
                                  scale_choices=d.scale_choices, image_resize=d.image_resize)


def build_final_method(ctx: StageContext, cls, pretrained: bool):
    """The method's network from the run's sections; ``pretrained=False`` skips ImageNet weights (a checkpoint
    follows)."""
    model_cfg = ctx.cfg.model if pretrained else dataclasses.replace(ctx.cfg.model, pretrained=None)
    return cls(ctx.cfg.method, model_cfg, ctx.meta.num_classes)


def train_seg_stage(cls, masks_from: str, name: str = "train_seg", dataset: Callable | None = None,
                    config: tuple[str, ...] = (), reads: tuple[str, ...] = (), doc: str = "") -> TrainStage:
    """Train ``cls`` (a Method) with ``supervision="pseudo"`` on the ``<id>.png`` masks of stage ``masks_from``.

    ``dataset(ctx) -> SegDataset`` replaces the default training set (pseudo-masks + the run's augmentation) for
    methods that also read scribbles or per-image maps; ``config`` adds the method's own settings to the stage's
    fingerprint (e.g. ``"method.loss"``).
    """

    def default_dataset(ctx: StageContext):
        return ctx.dataset(supervision="pseudo", pseudo_dir=ctx.dir(masks_from),
                           transform=run_train_transforms(ctx.cfg))

    def build(ctx: StageContext) -> TrainJob:
        return TrainJob(build_final_method(ctx, cls, pretrained=True), (dataset or default_dataset)(ctx))

    return TrainStage(name, build, section=None, reads=(masks_from,) + tuple(reads),
                      config=RUN_TRAINING + ("method.name",) + tuple(config),
                      doc=doc or f"the final network on the {masks_from} masks; {name}/model_final.pth")


def evaluate_stage(cls, ckpt_from: str = "train_seg", name: str = "evaluate") -> EvalStage:
    """Evaluate the method trained by stage ``ckpt_from`` on ``data.val_list`` with the ``eval`` section."""

    def run(ctx: StageContext) -> dict:
        method = build_final_method(ctx, cls, pretrained=False)
        ctx.load_weights(method, ctx.checkpoint(ckpt_from))
        d = ctx.cfg.data
        dataset = ctx.dataset(split="val", with_label=True, transform=build_eval_transforms(mean=d.mean, std=d.std))
        return ctx.evaluate(method, dataset, ctx.dir(name))

    return EvalStage(name, run, reads=(ckpt_from,), config=RUN_EVAL,
                     doc="the final model on data.val_list; metrics.json, report.md, predictions/")
