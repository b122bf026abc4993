"""Attention-pooling classification head with class activation maps (BES/SBE stage 1, methods.md §4.2)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class AttentionPoolClassifier(nn.Module):
    """1×1 convolution classifier (no bias) over attention-pooled features.

    Training (``forward``): for each channel c of the feature map x, attention a_c = softmax over the h·w
    positions of k·x_c (detached, so no gradient flows through the weights of the pooling), pooled
    z_c = Σ_i a_c(i)·x_c(i), logits = W·z. With k → 0 this is global average pooling; the reference uses
    k = 1e-3, which slightly favours strongly activated positions.

    Inference (``cam``): ReLU(W·x) at every position, without attention.

    Args:
        in_channels: channels of the feature map (take it from the backbone's ``feature_info[-1].channels``).
        num_classes: number of foreground classes K (20 on VOC; background has no channel).
        k: attention temperature.
    """

    def __init__(self, in_channels: int, num_classes: int, k: float = 1e-3):
        super().__init__()
        self.classifier = nn.Conv2d(in_channels, num_classes, kernel_size=1, bias=False)
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """N×C×h×w float features → N×K float classification logits (for a multi-label soft-margin loss)."""
        if x.ndim != 4:
            raise ValueError(f"expected N×C×h×w features, got shape {tuple(x.shape)}")
        attn = torch.softmax(self.k * x.detach().flatten(2), dim=-1)  # N×C×hw, sums to 1 over positions
        pooled = (attn * x.flatten(2)).sum(-1)  # N×C
        weight = self.classifier.weight.flatten(1)  # K×C
        return pooled @ weight.t()

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """N×C×h×w float features → N×K×h×w non-negative class activation maps (same stride as x)."""
        if x.ndim != 4:
            raise ValueError(f"expected N×C×h×w features, got shape {tuple(x.shape)}")
        return F.relu(self.classifier(x))
