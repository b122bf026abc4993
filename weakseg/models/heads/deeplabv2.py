"""DeepLab-v2 ASPP classifier (Chen et al., TPAMI 2018), the final segmentation network of SBE/BES (spec §4.7).

Four parallel 3×3 convolutions with dilations 6/12/18/24 each map the last backbone map straight to class logits;
the logits are summed. This is the "ASPP-L" classifier of DeepLab-v2 (kazuto1011/deeplab-pytorch), not the
DeepLab-v3 ASPP with image pooling and a projection. The reference rates are for output stride 8; they are
used as given at any stride.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from weakseg.models.backbones.base import FeatureInfo


class DeepLabV2Head(nn.Module):
    """Sum of dilated 3×3 classifiers on the last feature map.

    Args:
        feature_info: the backbone's feature_info; the last entry gives the input channels and the stride.
        num_classes: number of output classes C.
        rates: dilation (= padding) of each branch.

    Attributes:
        stride: reduction of the output logits (that of the last backbone map).
        rates: the dilations, as built.
    """

    def __init__(self, feature_info: Sequence[FeatureInfo], num_classes: int, rates: Sequence[int] = (6, 12, 18, 24)):
        super().__init__()
        if not feature_info:
            raise ValueError("feature_info is empty")
        if num_classes < 1:
            raise ValueError(f"num_classes must be ≥ 1, got {num_classes}")
        if not rates or any(int(r) != r or r < 1 for r in rates):
            raise ValueError(f"rates must be a non-empty sequence of positive integers, got {tuple(rates)}")
        in_channels = feature_info[-1].channels
        self.stride = feature_info[-1].reduction
        self.rates = tuple(int(r) for r in rates)
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r, bias=True) for r in self.rates
        )
        # DeepLab-v2's reference init for these classifier layers: N(0, 0.01) weights, zero bias.
        for conv in self.branches:
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Backbone maps → N×C×h×w logits at ``stride`` (h = ⌈H/stride⌉), from the last map only."""
        x = features[-1]
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out
