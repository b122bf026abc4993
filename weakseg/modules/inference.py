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


RESIZES = ("scale", "long_side")
PADS = ("corner", "center")


def _resize(x: torch.Tensor, size, mode: str = "bilinear", align_corners: bool = False) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=align_corners)


def scaled_size(h: int, w: int, s: float, resize: str = "scale", long_side: int = 512) -> tuple[int, int]:
    """Test size of an H×W image at scale ``s``: ``scale`` → (round(s·H), round(s·W)); ``long_side`` → the long
    side becomes round(long_side·s) and the short one keeps the aspect ratio (CDSP / semseg evaluation, §3.7)."""
    if resize == "scale":
        return max(1, int(round(h * s))), max(1, int(round(w * s)))
    target = max(1, int(round(long_side * s)))
    if h > w:
        return target, max(1, int(round(target / h * w)))
    return max(1, int(round(target / w * h))), target


def slide_logits(predict_fn: PredictFn, images: torch.Tensor, crop: int, stride: int, *, pad: str = "corner",
                 softmax: bool = False) -> torch.Tensor:
    """Sliding-window logits for N×3×H×W images: windows of ``crop``×``crop`` with ``stride``; images smaller
    than the window are zero-padded (the normalised mean colour) at the bottom/right (``pad="corner"``) or evenly
    around (``"center"``, the extra pixel at the bottom/right; CDSP) and the padding is cropped off again;
    overlapping window logits are averaged (``softmax=True``: window probabilities are averaged and returned)."""
    if pad not in PADS:
        raise ValueError(f"pad must be one of {PADS}, got {pad!r}")
    n, _, h, w = images.shape
    ph, pw = max(crop - h, 0), max(crop - w, 0)
    top, left = (ph // 2, pw // 2) if pad == "center" else (0, 0)
    if ph or pw:
        images = F.pad(images, (left, pw - left, top, ph - top))
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
            if softmax:
                logits = logits.softmax(1)
            if out is None:
                out = torch.zeros(n, logits.shape[1], H, W, device=images.device)
            out[:, :, y0:y0 + crop, x0:x0 + crop] += logits
            count[:, :, y0:y0 + crop, x0:x0 + crop] += 1
    return (out / count)[:, :, top:top + h, left:left + w]


@torch.no_grad()
def infer_probs(predict_fn: PredictFn, images: torch.Tensor, *, scales: Sequence[float] = (1.0,), flip: bool = False,
                average: str = "logit", mode: str = "whole", crop: int = 513, stride: int = 341,
                resize: str = "scale", long_side: int = 512, pad: str = "corner",
                align_corners: bool = False, image_resize: str = "bilinear") -> torch.Tensor:
    """Class probabilities N×C×H×W (float32) of N×3×H×W normalised images.

    For each scale s the image is resized (bilinear) to round(s·H)×round(s·W), predicted (whole image or sliding
    window), optionally also flipped horizontally (the flipped prediction is flipped back), and resized back to
    H×W. ``average="logit"`` averages logits then applies softmax (BLPSeg §2.7); ``"prob"`` averages softmax
    probabilities (CDSP, WebCoseg); with ``"prob"`` sliding windows are averaged as probabilities too.

    ``resize="long_side"`` sizes each scale by its long side, round(``long_side``·s) (CDSP: 512 ×
    {0.5, …, 2.0}); ``pad`` places the sliding-window padding (``corner`` or ``center``); ``align_corners`` is that
    of the bilinear resize of the predictions back to H×W. CDSP's protocol (§3.7): ``resize="long_side"``,
    ``mode="slide"``, crop 465, stride 310, ``pad="center"``, ``average="prob"`` (the method's ``predict`` upsamples
    each window's logits with align_corners=True).

    ``image_resize`` is the interpolation of the image rescale (``bicubic`` in BLPSeg's test, §2.7).
    ``average="max"`` takes the element-wise maximum of the logits over all passes, then softmax (DeepLab-v2's
    multi-scale max fusion, the MSC test of kazuto1011/deeplab-pytorch, §4.7).
    """
    if average not in ("logit", "prob", "max"):
        raise ValueError(f"average must be 'logit', 'prob' or 'max', got {average!r}")
    if image_resize not in ("bilinear", "bicubic"):
        raise ValueError(f"image_resize must be 'bilinear' or 'bicubic', got {image_resize!r}")
    if resize not in RESIZES:
        raise ValueError(f"resize must be one of {RESIZES}, got {resize!r}")
    h, w = images.shape[-2:]
    acc = None
    passes = 0
    for s in scales:
        scaled = _resize(images, scaled_size(h, w, s, resize, long_side), image_resize)
        variants = [scaled, scaled.flip(-1)] if flip else [scaled]
        for k, x in enumerate(variants):
            if mode == "slide":
                logits = slide_logits(predict_fn, x, crop, stride, pad=pad, softmax=average == "prob")
            else:
                logits = predict_fn(x).float()
            if k == 1:
                logits = logits.flip(-1)
            logits = _resize(logits, (h, w), align_corners=align_corners)
            if average == "max":  # DeepLab-v2 MSC: maximum over passes of the logits
                acc = logits if acc is None else torch.maximum(acc, logits)
                continue
            windows_are_probs = mode == "slide" and average == "prob"
            term = logits if average == "logit" or windows_are_probs else logits.softmax(1)
            acc = term if acc is None else acc + term
            passes += 1
    if average == "max":
        return acc.softmax(1)
    acc = acc / passes
    return acc.softmax(1) if average == "logit" else acc
