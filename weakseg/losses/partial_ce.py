"""Cross-entropy on the labelled pixels only (partial CE), the scribble baseline; with dense labels it is the
ordinary fully supervised loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PartialCrossEntropy(nn.Module):
    """Mean cross-entropy over pixels whose target is not ``ignore_index``.

    Args:
        ignore_index: target value that carries no supervision (255: unlabeled scribble pixel or crop padding).
        label_smoothing: ε of label-smoothed CE (0 = plain CE).

    Shapes: logits N×C×H×W float (any dtype; computed in float32), target N×H×W int64. Returns a scalar; 0 (with a
    gradient path) when no pixel is labelled, instead of PyTorch's NaN.
    """

    def __init__(self, ignore_index: int = 255, label_smoothing: float = 0.0):
        super().__init__()
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[-2:] != target.shape[-2:] or logits.shape[0] != target.shape[0]:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match")
        loss = F.cross_entropy(
            logits.float(), target, ignore_index=self.ignore_index, reduction="sum",
            label_smoothing=self.label_smoothing,
        )
        count = (target != self.ignore_index).sum().clamp(min=1)
        return loss / count
