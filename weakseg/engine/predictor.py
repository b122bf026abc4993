"""``weakseg predict``: batched prediction on files, folders or list files, resumable (finished images are
skipped), writing palette PNGs and optionally overlays and probability maps (``.npy``, C×H×W float16)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from weakseg.data.meta import DatasetMeta
from weakseg.engine.amp import autocast
from weakseg.engine.evaluator import CRFPool
from weakseg.engine.runtime import progress
from weakseg.modules.inference import infer_probs
from weakseg.engine.report import overlay
from weakseg.utils.io import DataError, atomic_path, read_rgb, save_image, save_label_png

log = logging.getLogger("weakseg")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def collect_inputs(inputs: list[str]) -> list[tuple[str, Path]]:
    """(id, path) pairs from image files, folders (non-recursive, sorted) and ``.txt`` list files of paths.
    Ids are file stems; a duplicate stem is an error (outputs would overwrite each other)."""
    items: list[Path] = []
    for text in inputs:
        p = Path(text)
        if p.is_dir():
            items += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.suffix.lower() == ".txt" and p.is_file():
            for n, line in enumerate(p.read_text().splitlines(), 1):
                line = line.strip()
                if line and not line.startswith("#"):
                    q = Path(line) if Path(line).is_absolute() else p.parent / line
                    if not q.is_file():
                        raise DataError(f"{p}:{n}: image {q} not found")
                    items.append(q)
        elif p.is_file():
            items.append(p)
        else:
            raise DataError(f"{p}: no such image, folder or list file")
    if not items:
        raise DataError(f"no images found in {', '.join(inputs)}")
    seen: dict[str, Path] = {}
    for q in items:
        if q.stem in seen and seen[q.stem] != q:
            raise DataError(f"two inputs share the name {q.stem!r}: {seen[q.stem]} and {q}")
        seen[q.stem] = q
    return list(seen.items())


def _normalize(image: np.ndarray, mean, std) -> torch.Tensor:
    x = torch.from_numpy(image).float().div_(255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


@torch.no_grad()
def predict_images(method, meta: DatasetMeta, inputs: list[str], out_dir: Path, *, ev, mean, std,
                   device: torch.device, amp_dtype=None, channels_last: bool = False, batch_size: int = 1,
                   save_overlay: bool = False, save_probs: bool = False, crf_workers: int = 1,
                   overwrite: bool = False, skip_bad: bool = False) -> dict:
    """Predict every input image; returns counts ``{"done": n, "skipped": n, "bad": n, "problems": [...]}``.

    An image whose PNG already exists in ``out_dir`` is skipped (resume) unless ``overwrite``. Consecutive images
    of the same size are batched up to ``batch_size``. An unreadable image stops the run with a ``DataError``
    naming it, after the images read before it have been predicted and written; with ``skip_bad`` it is skipped,
    counted (``bad``) and listed (``problems``) instead.
    """
    out_dir = Path(out_dir)
    items = collect_inputs(inputs)
    todo = [(i, p) for i, p in items if overwrite or not (out_dir / f"{i}.png").exists()]
    skipped = len(items) - len(todo)
    method.eval()
    crf = CRFPool(ev.crf, crf_workers) if ev.crf else None
    problems: list[str] = []
    done = 0

    def predict_fn(x):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            return method.predict(x).float()

    def write(sample_id: str, image: np.ndarray, pred: np.ndarray) -> None:
        nonlocal done
        if save_overlay:
            save_image(out_dir / "overlays" / f"{sample_id}.jpg", overlay(image, pred, meta.palette))
        save_label_png(out_dir / f"{sample_id}.png", pred, meta.palette)  # last: its existence marks completion
        done += 1

    bar = progress(total=len(todo), desc="predict")

    def readable():
        for sample_id, path in todo:
            try:
                image = read_rgb(path)
            except DataError as exc:
                if not skip_bad:
                    raise
                problems.append(str(exc))
                bar.update(1)
                continue
            yield sample_id, image

    pending: dict[str, np.ndarray] = {}

    def run_group(group: list[tuple[str, np.ndarray]]) -> None:
        batch = torch.stack([_normalize(img, mean, std) for _, img in group]).to(device)
        probs = infer_probs(predict_fn, batch, scales=ev.scales, flip=ev.flip, average=ev.average, mode=ev.mode,
                            crop=ev.crop_size, stride=ev.stride, resize=ev.resize, long_side=ev.long_side,
                            pad=ev.pad, align_corners=ev.align_corners,
                            image_resize=ev.image_resize).cpu()
        for (sample_id, img), p in zip(group, probs):
            if save_probs:
                with atomic_path(out_dir / "probs" / f"{sample_id}.npy") as tmp:
                    np.save(tmp, p.numpy().astype(np.float16))
            if crf is not None:
                pending[sample_id] = img
                for key, pred in crf.submit(sample_id, img, p.numpy()):
                    write(key, pending.pop(key), pred)
            else:
                write(sample_id, img, p.argmax(0).byte().numpy())
        bar.update(len(group))

    group: list[tuple[str, np.ndarray]] = []
    error: DataError | None = None
    images = readable()
    while True:
        try:
            sample_id, img = next(images)
        except StopIteration:
            break
        except DataError as exc:  # finish what was read before the bad image, then report it
            error = exc
            break
        if group and (len(group) == batch_size or img.shape != group[0][1].shape):
            run_group(group)
            group = []
        group.append((sample_id, img))
    if group:
        run_group(group)
    if crf is not None:
        for key, pred in crf.drain():
            write(key, pending.pop(key), pred)
    bar.close()
    if error is not None:
        raise DataError(f"{error} ({done} images before it were written to {out_dir}; --skip-bad skips "
                        f"unreadable images)") from error
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        log.warning("skipped %d unreadable image(s): %s", len(problems), shown)
    log.info("predicted %d images (%d already done, %d unreadable skipped) into %s", done, skipped, len(problems),
             out_dir)
    return {"done": done, "skipped": skipped, "bad": len(problems), "problems": problems}
