"""BLPSeg scribble targets, image class vector and online self-training pseudo-labels (``methods.md`` §2.2, §2.5d).

Scribble target encoding (§2.2), N×H×W int64: 0..C−1 = scribbled with that class, C = not annotated (inside the
image), 255 = padding outside the image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["class_vector_from_scribble", "online_pseudo_label", "scribble_targets"]


def scribble_targets(
    scribble: Tensor | np.ndarray,
    num_classes: int,
    valid: Tensor | np.ndarray | None = None,
    unlabeled_value: int = 255,
    ignore_index: int = 255,
) -> Tensor:
    """Encode a scribble map as BLPSeg targets (§2.2).

    Args:
        scribble: H×W (or any shape) uint8/int PNG values: 0..C−1 on strokes, ``unlabeled_value`` elsewhere
            (a crop's padding carries the same value; ``valid`` tells them apart).
        num_classes: C.
        valid: same shape, nonzero = real image pixel, 0 = padding added by the crop; ``None`` = all real.
        unlabeled_value: PNG value of unlabeled pixels.
        ignore_index: value written on padding.

    Returns:
        int64 tensor of the same shape: class ids on strokes, C on unlabeled image pixels, ``ignore_index`` on padding.
    """
    s = torch.as_tensor(scribble).long()
    real = (s >= 0) & (s < num_classes)
    bad = ~real & (s != unlabeled_value)
    if bad.any():
        raise ValueError(f"scribble values must be 0..{num_classes - 1} or {unlabeled_value}, "
                         f"found {torch.unique(s[bad]).tolist()}")
    out = torch.where(real, s, torch.full_like(s, num_classes))
    if valid is not None:
        v = torch.as_tensor(valid, device=s.device)
        if v.shape != s.shape:
            raise ValueError(f"valid mask shape {tuple(v.shape)} differs from scribble shape {tuple(s.shape)}")
        out = torch.where(v != 0, out, torch.full_like(s, ignore_index))
    return out


def class_vector_from_scribble(scribble: Tensor | np.ndarray, num_classes: int) -> Tensor:
    """Image class vector c ∈ {0,1}^C (§2.2): classes present among the scribbled pixels, background always on.

    Values outside 0..C−1 (unlabeled 255, "not annotated" C, padding) are not classes. BLPSeg computes c on the
    full, uncropped scribble map (§2.9.7), so call this before cropping.

    Args:
        scribble: H×W (one image → C) or N×H×W (batch → N×C) integer map.
        num_classes: C.

    Returns:
        float32 C or N×C tensor of 0/1.
    """
    s = torch.as_tensor(scribble).long()
    single = s.dim() == 2
    if s.dim() not in (2, 3):
        raise ValueError(f"scribble must be H×W or N×H×W, got shape {tuple(s.shape)}")
    s = s.reshape(1 if single else s.shape[0], -1)
    idx = torch.where((s >= 0) & (s < num_classes), s, torch.full_like(s, num_classes))
    vec = torch.zeros(s.shape[0], num_classes + 1, device=s.device).scatter_(1, idx, 1.0)[:, :num_classes]
    vec[:, 0] = 1.0
    return vec[0] if single else vec


@torch.no_grad()
def online_pseudo_label(
    seg_logits: Tensor,
    class_vector: Tensor,
    scribble: Tensor,
    threshold: float = 0.9,
    ignore_index: int = 255,
) -> Tensor:
    """Online self-training pseudo-label of BLPSeg, spec §2.5(d) (computed without gradient).

    1. P = softmax(seg_logits) ⊙ c — masked by the image class vector, *not* renormalised;
    2. ŷ = argmax_k P_k, and ŷ = ``ignore_index`` where max_k P_k < ``threshold``;
    3. where the scribble target is a real class (< C), ŷ = that class;
    4. where the scribble target is ``ignore_index`` (padding), ŷ = ``ignore_index``.

    Args:
        seg_logits: N×C×H×W float logits (BLPSeg: LAM output upsampled to the crop size).
        class_vector: N×C (or N×C×1×1) 0/1 image class vector.
        scribble: N×H×W int64 scribble targets: 0..C−1 real, C = not annotated, ``ignore_index`` = padding.
        threshold: confidence below which a pixel is ignored (BLPSeg: 0.9).
        ignore_index: ignore value.

    Returns:
        N×H×W int64 labels in 0..C−1 or ``ignore_index``.
    """
    n, c = seg_logits.shape[:2]
    if seg_logits.dim() != 4 or scribble.shape != (n, *seg_logits.shape[2:]):
        raise ValueError(f"expected seg_logits N×C×H×W and scribble N×H×W, got {tuple(seg_logits.shape)} and "
                         f"{tuple(scribble.shape)}")
    if class_vector.numel() != n * c:
        raise ValueError(f"class_vector must be N×C = {(n, c)}, got {tuple(class_vector.shape)}")
    prob = F.softmax(seg_logits.float(), dim=1) * class_vector.reshape(n, c, 1, 1).float()
    conf, label = prob.max(dim=1)
    label = label.masked_fill(conf < threshold, ignore_index)
    real = (scribble >= 0) & (scribble < c)
    label = torch.where(real, scribble, label)
    return label.masked_fill(scribble == ignore_index, ignore_index)
