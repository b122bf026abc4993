"""Multi-label soft-margin loss for image-level tags (CAM classifier training, methods.md §4.2 Loss_cls)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class MultiLabelSoftMarginLoss(nn.Module):
    """Mean over classes (then over the batch) of binary cross-entropy with logits.

    For logits x (N×K) and multi-hot targets y (N×K, 1 = class present):
    L = mean_n mean_k −[y·log σ(x) + (1 − y)·log(1 − σ(x))], i.e. ``F.multilabel_soft_margin_loss``. The
    background class has no channel: on VOC K = 20.
    """

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """N×K float logits and N×K float {0, 1} targets → scalar loss."""
        if logits.ndim != 2 or logits.shape != targets.shape:
            raise ValueError(
                f"expected N×K logits and targets of the same shape, got {tuple(logits.shape)} and "
                f"{tuple(targets.shape)}"
            )
        return F.multilabel_soft_margin_loss(logits, targets.to(logits.dtype))
