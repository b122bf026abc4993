"""Test-time inference (below methods/ so that stages and the engine share it): multi-scale + flip averaging and
sliding-window prediction.

``predict_fn`` maps N×3×h×w normalised images to N×C×h×w logits at the same resolution (``Method.predict``).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

PredictFn = Callable[[torch.Tensor], torch.Tensor]


def _resize(x: torch.Tensor, size, mode: str = "bilinear") -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


def slide_logits(predict_fn: PredictFn, images: torch.Tensor, crop: int, stride: int) -> torch.Tensor:
    """Sliding-window logits for N×3×H×W images: windows of ``crop``×``crop`` with ``stride``; images smaller
    than the window are zero-padded (the normalised mean colour) and the padding is cropped off again; overlapping
    window logits are averaged."""
    n, _, h, w = images.shape
    ph, pw = max(crop - h, 0), max(crop - w, 0)
    if ph or pw:
        images = F.pad(images, (0, pw, 0, ph))
    H, W = images.shape[-2:]
    rows = max(math.ceil((H - crop) / stride), 0) + 1
    cols = max(math.ceil((W - crop) / stride), 0) + 1
    out = None
    count = torch.zeros(1, 1, H, W, device=images.device)
    for r in range(rows):
        for c in range(cols):
            y0 = min(r * stride, H - crop)
            x0 = min(c * stride, W - crop)
            logits = predict_fn(images[:, :, y0:y0 + crop, x0:x0 + crop]).float()
            if out is None:
                out = torch.zeros(n, logits.shape[1], H, W, device=images.device)
            out[:, :, y0:y0 + crop, x0:x0 + crop] += logits
            count[:, :, y0:y0 + crop, x0:x0 + crop] += 1
    return (out / count)[:, :, :h, :w]


@torch.no_grad()
def infer_probs(predict_fn: PredictFn, images: torch.Tensor, *, scales: Sequence[float] = (1.0,), flip: bool = False,
                average: str = "logit", mode: str = "whole", crop: int = 513, stride: int = 341) -> torch.Tensor:
    """Class probabilities N×C×H×W (float32) of N×3×H×W normalised images.

    For each scale s the image is resized (bilinear) to round(s·H)×round(s·W), predicted (whole image or sliding
    window), optionally also flipped horizontally (the flipped prediction is flipped back), and resized back to
    H×W. ``average="logit"`` averages logits then applies softmax (BLPSeg §2.7); ``"prob"`` averages softmax
    probabilities (CDSP, WebCoseg).
    """
    if average not in ("logit", "prob"):
        raise ValueError(f"average must be 'logit' or 'prob', got {average!r}")
    h, w = images.shape[-2:]
    acc = None
    passes = 0
    for s in scales:
        size = (max(1, int(round(h * s))), max(1, int(round(w * s))))
        scaled = _resize(images, size)
        variants = [scaled, scaled.flip(-1)] if flip else [scaled]
        for k, x in enumerate(variants):
            if mode == "slide":
                logits = slide_logits(predict_fn, x, crop, stride)
            else:
                logits = predict_fn(x).float()
            if k == 1:
                logits = logits.flip(-1)
            logits = _resize(logits, (h, w))
            term = logits if average == "logit" else logits.softmax(1)
            acc = term if acc is None else acc + term
            passes += 1
    acc = acc / passes
    return acc.softmax(1) if average == "logit" else acc
