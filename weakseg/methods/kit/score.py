"""Scoring a stage's per-image label maps (CAMs thresholded, pseudo-masks, estimated masks) against the ground truth
of the training split: the confusion matrix of §1.6, sharded over ranks and summed with one all-reduce."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from weakseg.methods.kit.stage import EvalStage, StageContext
from weakseg.utils import dist as wdist
from weakseg.utils.io import read_label
from weakseg.utils.metrics import ConfusionMatrix

log = logging.getLogger("weakseg")


def score_labels(ctx: StageContext, predict: Callable[[str], np.ndarray], list_file: str | None = None) -> dict:
    """Scores of ``predict(id) -> H×W class ids`` against ``data.label_dir`` on the training split.

    Ids: ``list_file`` (e.g. the method's ``score_list``) or ``data.train_list``, keeping those whose ground truth
    exists (weak-label users often have none: then ``{"miou": None, "note": ...}``).
    """
    cfg = ctx.cfg
    ids = ctx.dataset(list_file).ids
    label_dir = Path(cfg.data.root) / cfg.data.label_dir
    with_gt = [i for i in ids if (label_dir / f"{i}.png").is_file()]
    if not with_gt:
        note = f"no ground truth in {label_dir} for the training split: nothing to score"
        log.info(note)
        return {"miou": None, "note": note, "images": 0}
    conf = ConfusionMatrix(ctx.meta.num_classes, ctx.meta.ignore_index)
    mine = wdist.shard(with_gt)
    for sample_id in mine:
        conf.update(np.asarray(predict(sample_id)), np.asarray(read_label(label_dir / f"{sample_id}.png")))
    count = torch.tensor([len(mine)], dtype=torch.int64)
    wdist.all_reduce_sum(conf.mat, conf.abstained, count, device=ctx.device)
    metrics = conf.compute(absent=cfg.eval.absent)
    metrics.update(images=int(count.item()), classes=list(ctx.meta.classes))
    if len(with_gt) < len(ids):
        metrics["note"] = f"{len(ids) - len(with_gt)} of {len(ids)} training images have no ground truth (skipped)"
    log.info("mIoU %.2f over %d training images", 100 * metrics["miou"], metrics["images"])
    return metrics


def score_masks_stage(name: str, masks_from: str, list_file: Callable[[object], str | None] = lambda cfg: None,
                      config: tuple[str, ...] = (), doc: str = "") -> EvalStage:
    """An EvalStage scoring the ``<id>.png`` class-id masks written by stage ``masks_from``."""

    def run(ctx: StageContext) -> dict:
        folder = ctx.dir(masks_from)
        return score_labels(ctx, lambda sample_id: read_label(folder / f"{sample_id}.png"), list_file(ctx.cfg))

    return EvalStage(name, run, reads=(masks_from,), config=("data.label_dir", "eval.absent") + tuple(config),
                     doc=doc or f"mIoU of the {masks_from} masks on the training split; metrics.json")
