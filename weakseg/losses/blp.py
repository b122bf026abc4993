"""BLPSeg losses (spec ``methods.md`` §2.5): the annotation-probability CE of the scribble head and the BLP loss.

Target encoding (§2.2): 0..C−1 = annotated with that class, C = not annotated, 255 = outside the image (padding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AnnotationCELoss", "BLPLoss"]


def _float(x: Tensor) -> Tensor:
    """At least float32 (losses are computed in float32 also under fp16/bf16 autocast)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_target(logits: Tensor, target: Tensor, name: str) -> None:
    if logits.dim() != 4 or target.dim() != 3 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"{name}: expected logits N×K×H×W and target N×H×W, got {tuple(logits.shape)} and "
                         f"{tuple(target.shape)}")
    if target.dtype != torch.int64:
        raise ValueError(f"{name}: target must be int64, got {target.dtype}")


class AnnotationCELoss(nn.Module):
    """Weighted CE of the annotation-probability (scribble) head, spec §2.5(a).

    L = Σ_i w_{t_i}·(−log q_{i,t_i}) / Σ_i w_{t_i} over the non-ignored pixels of the whole batch (PyTorch's
    weighted-mean semantics), with w_k = 1 for real classes k < C and w_C = ``unlabeled_weight`` for "not
    annotated". The denominator is clamped to ≥ 1e-12, so a batch with every pixel ignored gives 0 (not NaN);
    otherwise the value equals ``F.cross_entropy(..., weight=w, ignore_index=ignore_index)``.

    Args:
        num_classes: C, the number of real classes (background included); the head has C + 1 outputs.
        unlabeled_weight: weight of the "not annotated" class C (BLPSeg: 0.02).
        ignore_index: target value excluded from the loss (padding). Other values outside 0..C are excluded too
            (no value check, which would cost a device synchronisation per call).
    """

    def __init__(self, num_classes: int, unlabeled_weight: float = 0.02, ignore_index: int = 255):
        super().__init__()
        if num_classes < 1 or unlabeled_weight < 0:
            raise ValueError(f"need num_classes >= 1 and unlabeled_weight >= 0, got {num_classes}, {unlabeled_weight}")
        self.num_classes = int(num_classes)
        self.unlabeled_weight = float(unlabeled_weight)
        self.ignore_index = int(ignore_index)

    def forward(self, annotation_logits: Tensor, target: Tensor) -> Tensor:
        """annotation_logits: N×(C+1)×H×W logits; target: N×H×W int64 in {0..C−1, C, ignore_index} → scalar."""
        _check_target(annotation_logits, target, "AnnotationCELoss")
        c = self.num_classes
        if annotation_logits.shape[1] != c + 1:
            raise ValueError(f"AnnotationCELoss: expected {c + 1} channels (C + 1), got {annotation_logits.shape[1]}")
        log_q = F.log_softmax(_float(annotation_logits), dim=1)
        valid = (target != self.ignore_index) & (target >= 0) & (target <= c)
        t = torch.where(valid, target, torch.zeros_like(target))
        nll = -log_q.gather(1, t.unsqueeze(1)).squeeze(1)
        weight = torch.ones_like(nll).masked_fill_(t == c, self.unlabeled_weight) * valid
        return (weight * nll).sum() / weight.sum().clamp(min=1e-12)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, unlabeled_weight={self.unlabeled_weight}"


class BLPLoss(nn.Module):
    """Balance-the-label-preference loss, spec §2.5(b).

    With p = softmax(seg_logits), q = softmax(annotation_logits)[:, :C] (detached) and y the one-hot supervision on
    real classes:

        w_{i,k} = y_{i,k}·(1 − q_{i,k}·p_{i,k})^γ            (no gradient)
        ℓ_n = Σ_{i,k} w_{i,k}·(−log p_{i,k}) / (Σ_{i,k} w_{i,k} + eps),   L = mean_n ℓ_n

    Pixels whose annotation is expected and already well predicted (q·p → 1) lose weight; rare annotations keep
    weight ≈ 1. An image without supervised pixels has ℓ_n = 0 and still counts in the mean over the N images
    (as in the spec's mean_n ℓ_n), so it lowers the batch loss rather than being skipped.

    Args:
        gamma: exponent γ (BLPSeg: 2).
        eps: added to the per-image normaliser Σw (spec: 1e-7).
        ignore_index: unsupervised target value; every value outside 0..C−1 (C = not annotated, 255) is
            unsupervised as well.
    """

    def __init__(self, gamma: float = 2.0, eps: float = 1e-7, ignore_index: int = 255):
        super().__init__()
        if gamma < 0 or eps <= 0:
            raise ValueError(f"need gamma >= 0 and eps > 0, got {gamma}, {eps}")
        self.gamma = float(gamma)
        self.eps = float(eps)
        self.ignore_index = int(ignore_index)

    def forward(self, seg_logits: Tensor, annotation_logits: Tensor, target: Tensor) -> Tensor:
        """seg_logits: N×C×H×W logits (after LAM, upsampled); annotation_logits: N×(C+1)×H×W logits (no gradient
        flows into them); target: N×H×W int64, 0..C−1 supervised, anything else unsupervised → scalar."""
        _check_target(seg_logits, target, "BLPLoss")
        n, c = seg_logits.shape[:2]
        if annotation_logits.shape != (n, c + 1, *seg_logits.shape[2:]):
            raise ValueError(f"BLPLoss: annotation_logits must be N×(C+1)×H×W = {(n, c + 1, *seg_logits.shape[2:])}, "
                             f"got {tuple(annotation_logits.shape)}")
        log_p = F.log_softmax(_float(seg_logits), dim=1)
        supervised = (target >= 0) & (target < c) & (target != self.ignore_index)
        t = torch.where(supervised, target, torch.zeros_like(target)).unsqueeze(1)
        nll = -log_p.gather(1, t).squeeze(1)  # −log p_{i, y_i}; only the target class has y_{i,k} ≠ 0
        with torch.no_grad():
            p_t = nll.detach().neg().exp()
            q_t = F.softmax(_float(annotation_logits.detach()), dim=1)[:, :c].gather(1, t).squeeze(1)
            weight = (1.0 - q_t * p_t).clamp(min=0.0).pow(self.gamma) * supervised
        per_image = (weight * nll).flatten(1).sum(1) / (weight.flatten(1).sum(1) + self.eps)
        return per_image.mean()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, eps={self.eps}"
