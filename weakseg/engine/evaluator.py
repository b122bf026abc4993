"""Evaluation: sharded over torchrun ranks, confusion matrices summed, optional dense CRF spread over worker
processes, palette PNGs, overlay pictures and a JSON + Markdown report."""

from __future__ import annotations

import logging
import multiprocessing as mp
import sys
from collections import deque
from pathlib import Path

import numpy as np
import torch

from weakseg.data.meta import DatasetMeta
from weakseg.engine.amp import autocast
from weakseg.modules.inference import infer_probs
from weakseg.engine.report import metrics_markdown, overlay, picture_grid, colorize
from weakseg.utils import dist as wdist
from weakseg.utils.io import save_image, save_label_png, write_json_atomic, write_text_atomic
from weakseg.utils.metrics import ConfusionMatrix

log = logging.getLogger("weakseg")


def denormalize(image: torch.Tensor, mean, std) -> np.ndarray:
    """3×H×W normalised float tensor → H×W×3 uint8 RGB."""
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    x = (image.float().cpu() * s + m).clamp(0, 1) * 255.0
    return x.round().byte().permute(1, 2, 0).numpy()


def _crf_job(args):
    from weakseg.modules.crf import CRF_PRESETS, dense_crf

    image, probs, preset = args
    torch.set_num_threads(1)
    return dense_crf(image, probs, CRF_PRESETS[preset], backend="auto").argmax(0).astype(np.uint8)


class CRFPool:
    """Runs the dense CRF in ``workers`` processes (inline when workers ≤ 1), keeping results in submission order
    and at most 2×workers jobs in flight."""

    def __init__(self, preset: str | None, workers: int):
        from weakseg.modules.crf import CRF_PRESETS

        if preset is not None and preset not in CRF_PRESETS:
            raise ValueError(f"unknown CRF preset {preset!r}; known: {', '.join(sorted(CRF_PRESETS))}")
        self.preset = preset
        self.pool = mp.get_context("spawn").Pool(workers) if preset and workers > 1 else None
        self.limit = 2 * max(workers, 1)
        self.pending: deque = deque()

    def submit(self, key, image: np.ndarray, probs: np.ndarray) -> list:
        """Queue a job; returns the (key, labels) pairs that are finished and must be consumed now."""
        if self.pool is None:
            return [(key, _crf_job((image, probs, self.preset)))]
        self.pending.append((key, self.pool.apply_async(_crf_job, ((image, probs, self.preset),))))
        out = []
        while len(self.pending) >= self.limit or (self.pending and self.pending[0][1].ready()):
            k, res = self.pending.popleft()
            out.append((k, res.get()))
        return out

    def drain(self) -> list:
        out = [(k, res.get()) for k, res in self.pending]
        self.pending.clear()
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
        return out


@torch.no_grad()
def evaluate(method, dataset, ev, meta: DatasetMeta, out_dir: Path, device: torch.device, *,
             mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), amp_dtype: torch.dtype | None = None,
             channels_last: bool = False, crf_workers: int = 1, progress: bool = True) -> dict:
    """mIoU of ``method.predict`` on ``dataset`` (samples with ``image`` and ``label``) under the eval config ``ev``.

    Each rank evaluates ``ids[rank::world]``; confusion matrices are all-reduced; rank 0 writes
    ``metrics.json`` and ``report.md`` (and predictions/overlays when asked) under ``out_dir``. ``mean``/``std``
    undo the normalisation for the CRF and the overlay pictures.
    """
    out_dir = Path(out_dir)
    method.eval()
    rank, world = wdist.rank(), wdist.world_size()
    indices = list(range(len(dataset)))[rank::world]
    conf = ConfusionMatrix(meta.num_classes, meta.ignore_index)
    crf = CRFPool(ev.crf, crf_workers) if ev.crf else None
    overlays = []

    def predict_fn(x: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            return method.predict(x).float()

    def finish(sample_id: str, pred: np.ndarray, label: np.ndarray, image: np.ndarray | None) -> None:
        conf.update(pred, label)
        if ev.save_predictions:
            save_label_png(out_dir / "predictions" / f"{sample_id}.png", pred, meta.palette)
        if image is not None and len(overlays) < ev.save_overlays:
            overlays.append((sample_id, image, pred, label))

    bar = None
    if progress and wdist.is_main():
        from tqdm import tqdm

        bar = tqdm(total=len(indices), desc="eval", dynamic_ncols=True, mininterval=2.0, file=sys.stderr)
    pending_meta: dict = {}

    def run_group(group: list[dict]) -> None:
        images_t = torch.stack([g["image"] for g in group]).to(device)
        probs = infer_probs(predict_fn, images_t, scales=ev.scales, flip=ev.flip, average=ev.average, mode=ev.mode,
                            crop=ev.crop_size, stride=ev.stride, resize=ev.resize, long_side=ev.long_side,
                            pad=ev.pad, align_corners=ev.align_corners,
                            image_resize=ev.image_resize)
        for sample, p in zip(group, probs):
            label = np.asarray(sample["label"])
            need_image = crf is not None or len(overlays) < ev.save_overlays
            image = denormalize(sample["image"], mean, std) if need_image else None
            if crf is not None:
                pending_meta[sample["id"]] = (label, image)
                for key, pred in crf.submit(sample["id"], image, p.cpu().numpy()):
                    lab, img = pending_meta.pop(key)
                    finish(key, pred, lab, img)
            else:
                finish(sample["id"], p.argmax(0).byte().cpu().numpy(), label, image)
        if bar is not None:
            bar.update(len(group))

    # consecutive images of the same size are predicted together, up to eval.batch_size
    group: list[dict] = []
    for i in indices:
        sample = dataset[i]
        if group and (len(group) == ev.batch_size or group[0]["image"].shape != sample["image"].shape):
            run_group(group)
            group = []
        group.append(sample)
    if group:
        run_group(group)
    if crf is not None:
        for key, pred in crf.drain():
            lab, img = pending_meta.pop(key)
            finish(key, pred, lab, img)
    if bar is not None:
        bar.close()

    n_images = torch.tensor([len(indices)], dtype=torch.int64)
    wdist.all_reduce_sum(conf.mat, conf.abstained, n_images, device=device)
    metrics = conf.compute(absent=ev.absent)
    metrics["images"] = int(n_images.item())
    metrics["classes"] = list(meta.classes)
    metrics["eval"] = {"scales": list(ev.scales), "flip": ev.flip, "average": ev.average, "mode": ev.mode,
                       "crf": ev.crf}
    if wdist.is_main():
        write_json_atomic(out_dir / "metrics.json", metrics)
        write_text_atomic(out_dir / "report.md", metrics_markdown(metrics, meta.classes))
        if overlays:
            rows = [[img, overlay(img, pred, meta.palette), colorize(pred, meta.palette),
                     colorize(lab.astype(np.uint8), meta.palette)] for _, img, pred, lab in overlays]
            save_image(out_dir / "overlays.png", picture_grid(rows, ["image", "overlay", "prediction", "ground truth"]))
        log.info("mIoU %.2f over %d images (%s)", 100 * metrics["miou"], metrics["images"], out_dir)
    wdist.barrier()
    return metrics
