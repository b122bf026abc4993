"""DeepLab-v3+ head (Chen et al., ECCV 2018): ASPP with image pooling on the last map, plus a low-level decoder.

ASPP: a 1×1 branch, three dilated 3×3 branches and an image-pooling branch (global average → 1×1 conv → norm →
ReLU → broadcast), each ``aspp_channels`` wide, concatenated and projected by a 1×1 conv + norm + ReLU.
Decoder: the low-level map is reduced to ``low_level_channels`` by 1×1 conv + norm + ReLU, the ASPP output is
bilinearly upsampled to its size (align_corners=False) and concatenated, two 3×3 conv + norm + ReLU fuse them, and
a 1×1 classifier (dropout before it, as in mmseg) gives the logits at the low-level map's stride.

The ASPP rates are given for output stride 16 and scaled by 16 / (stride of the last map): (6, 12, 18) become
(12, 24, 36) at OS 8 and (3, 6, 9) at OS 32. The image-pooling branch normalises 1×1 maps, so BatchNorm training
needs at least two images per device (as in torchvision and mmseg).

CDSP's DeepLab-v3+ (spec §3.2(3)) is this head with ``rates_output_stride=None`` (rates 6, 12, 18 used as given at
output stride 8), ``aspp_dropout=0.5`` (after the ASPP projection), ``dropout=0.0`` and ``align_corners=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from weakseg.models.backbones.base import FeatureInfo
from weakseg.models.layers import ConvNormAct, kaiming_init

RATES_OUTPUT_STRIDE = 16


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLab-v3).

    Args:
        in_channels: channels of the input map.
        channels: width of every branch and of the output.
        rates: dilations of the 3×3 branches (already scaled to the map's stride).
        norm: norm name.
        dropout: Dropout2d probability after the projection (DeepLab-v3+ reference code: 0.5).
    """

    def __init__(self, in_channels: int, channels: int, rates: Sequence[int], norm: str = "bn", dropout: float = 0.0):
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvNormAct(in_channels, channels, 1, norm=norm)]
            + [ConvNormAct(in_channels, channels, 3, dilation=r, norm=norm) for r in rates]
        )
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvNormAct(in_channels, channels, 1, norm=norm))
        self.project = ConvNormAct(channels * (len(rates) + 2), channels, 1, norm=norm)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """N×C_in×h×w → N×channels×h×w."""
        outs = [branch(x) for branch in self.branches]
        pooled = self.image_pool(x)
        outs.append(F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False))
        return self.dropout(self.project(torch.cat(outs, dim=1)))


class DeepLabV3PlusHead(nn.Module):
    """ASPP on the last map + decoder on a low-level map.

    Args:
        feature_info: the backbone's feature_info.
        num_classes: number of output classes C.
        aspp_channels: width of the ASPP branches and of the decoder.
        rates: ASPP dilations at output stride ``rates_output_stride`` (scaled to the actual stride of the last map).
        low_level_index: index of the low-level map in the backbone's output (0 = stride 4).
        low_level_channels: width of the reduced low-level map.
        norm: norm name for every conv + norm block.
        dropout: Dropout2d probability before the classifier.
        rates_output_stride: the stride ``rates`` are given for; None uses them as given at any stride.
        aspp_dropout: Dropout2d probability after the ASPP projection.
        align_corners: of the bilinear upsampling of the ASPP output to the low-level map.

    Attributes:
        stride: reduction of the output logits (that of the low-level map).
        rates: the ASPP dilations, as built.
    """

    def __init__(self, feature_info: Sequence[FeatureInfo], num_classes: int, aspp_channels: int = 256,
                 rates: Sequence[int] = (6, 12, 18), low_level_index: int = 0, low_level_channels: int = 48,
                 norm: str = "bn", dropout: float = 0.1, rates_output_stride: int | None = RATES_OUTPUT_STRIDE,
                 aspp_dropout: float = 0.0, align_corners: bool = False):
        super().__init__()
        if len(feature_info) < 2:
            raise ValueError(f"DeepLab-v3+ needs at least two feature maps, got {len(feature_info)}")
        if not 0 <= low_level_index < len(feature_info) - 1:
            raise ValueError(f"low_level_index must be in 0..{len(feature_info) - 2}, got {low_level_index}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be ≥ 1, got {num_classes}")
        if not rates or any(int(r) != r or r < 1 for r in rates):
            raise ValueError(f"rates must be a non-empty sequence of positive integers, got {tuple(rates)}")
        if not (0.0 <= dropout < 1.0 and 0.0 <= aspp_dropout < 1.0):
            raise ValueError(f"dropout and aspp_dropout must be in [0, 1), got {dropout}, {aspp_dropout}")
        if rates_output_stride is not None and rates_output_stride < 1:
            raise ValueError(f"rates_output_stride must be positive or None, got {rates_output_stride}")
        last, low = feature_info[-1], feature_info[low_level_index]
        self.stride = low.reduction
        self.low_level_index = low_level_index
        scale = 1.0 if rates_output_stride is None else rates_output_stride / last.reduction
        self.rates = tuple(max(1, round(r * scale)) for r in rates)
        self.align_corners = align_corners
        self.aspp = ASPP(last.channels, aspp_channels, self.rates, norm, aspp_dropout)
        self.low_level = ConvNormAct(low.channels, low_level_channels, 1, norm=norm)
        self.fuse = nn.Sequential(
            ConvNormAct(aspp_channels + low_level_channels, aspp_channels, 3, norm=norm),
            ConvNormAct(aspp_channels, aspp_channels, 3, norm=norm),
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(aspp_channels, num_classes, 1)
        kaiming_init(self)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Backbone maps → N×C×h×w logits at ``stride`` (h = ⌈H/stride⌉)."""
        x = self.aspp(features[-1])
        low = self.low_level(features[self.low_level_index])
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        x = self.fuse(torch.cat([x, low], dim=1))
        return self.classifier(self.dropout(x))
