"""The DeepLab-LargeFOV-like FCN head of WebCoseg's networks (methods.md §5.2).

3×3 convolution with dilation 12 (→ 512, bias) → ReLU → Dropout(0.5) → 1×1 convolution (512 → 512) → ReLU →
1×1 convolution (512 → C) "score". New layers start from N(0, 0.01) weights and zero biases (MXNet's default
initializer in the reference). The dilation is the reference's for output stride 8; it is used as given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from weakseg.models.backbones.base import FeatureInfo


class LargeFOVHead(nn.Module):
    """FCN head on the last feature map.

    Args:
        feature_info: the backbone's feature_info; the last entry gives the input channels and the stride.
        num_classes: number of output classes C.
        channels: width of the hidden layers (512).
        dilation: dilation of the 3×3 convolution (12).
        dropout: dropout after the first layer (0.5).

    Attributes:
        stride: reduction of the output logits (that of the last backbone map).
    """

    def __init__(self, feature_info: Sequence[FeatureInfo], num_classes: int, channels: int = 512,
                 dilation: int = 12, dropout: float = 0.5):
        super().__init__()
        if not feature_info:
            raise ValueError("feature_info is empty")
        if num_classes < 1 or channels < 1 or dilation < 1:
            raise ValueError(f"num_classes, channels and dilation must be ≥ 1, got {num_classes}, {channels}, "
                             f"{dilation}")
        self.stride = feature_info[-1].reduction
        self.fc6 = nn.Conv2d(feature_info[-1].channels, channels, 3, padding=dilation, dilation=dilation)
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.fc7 = nn.Conv2d(channels, channels, 1)
        self.score = nn.Conv2d(channels, num_classes, 1)
        self.relu = nn.ReLU(inplace=True)
        for conv in (self.fc6, self.fc7, self.score):
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Backbone maps → N×C×h×w logits at ``stride``."""
        x = self.drop(self.relu(self.fc6(features[-1])))
        return self.score(self.relu(self.fc7(x)))
