"""UPerNet decoder (PPM + FPN) exactly as BLPSeg builds it (spec §2.3), and a plain classifier on top of it.

With maps C1..C4 (strides 4/8/16/32 at OS 32):

- PPM on C4: for each pool scale s, adaptive average pooling to s×s → 1×1 conv (no bias) + norm (no ReLU) →
  bilinear upsampling to C4's size (align_corners=True); concatenated with C4; 1×1 conv → ``channels`` + norm +
  ReLU + Dropout2d(``dropout``). This is level L4.
- Laterals: 1×1 conv + norm + ReLU on C1..C3 → L1..L3.
- Top-down: L3 += up(L4), L2 += up(L3), L1 += up(L2) (bilinear, align_corners=False).
- 3×3 conv + norm + ReLU on L1..L3 (L4 passes through); all four upsampled to L1's size (bilinear,
  align_corners=False), concatenated, 3×3 conv → ``channels`` + norm + ReLU → decoder feature D at stride 4.

The 1×1 PPM level normalises 1×1 maps, so BatchNorm training needs at least two images per device. ONNX: the
TorchScript exporter turns s×s adaptive pooling into fixed pooling, so export at a fixed input size whose last map
is divisible by every pool scale (e.g. 96×96 at OS 16 → 6×6); DeepLab heads export with dynamic sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from weakseg.models.backbones.base import FeatureInfo
from weakseg.models.layers import AdaptiveAvgPool2d, ConvNormAct, kaiming_init


class UPerDecoder(nn.Module):
    """PPM + FPN decoder producing one fused map at the stride of the first backbone map.

    Args:
        feature_info: the backbone's feature_info (at least two maps).
        channels: width of every decoder level and of the output D.
        pool_scales: PPM output sizes.
        norm: norm name.
        dropout: Dropout2d probability after the PPM bottleneck.

    Attributes:
        out_channels: channels of D (= ``channels``).
        stride: reduction of D (that of the first map).
    """

    def __init__(self, feature_info: Sequence[FeatureInfo], channels: int = 256,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), norm: str = "bn", dropout: float = 0.1):
        super().__init__()
        if len(feature_info) < 2:
            raise ValueError(f"UPerNet needs at least two feature maps, got {len(feature_info)}")
        if not pool_scales or any(int(s) != s or s < 1 for s in pool_scales):
            raise ValueError(f"pool_scales must be positive integers, got {tuple(pool_scales)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.num_levels = len(feature_info)
        self.out_channels = channels
        self.stride = feature_info[0].reduction
        self.pool_scales = tuple(int(s) for s in pool_scales)
        top = feature_info[-1].channels
        self.ppm = nn.ModuleList(
            nn.Sequential(AdaptiveAvgPool2d(s), ConvNormAct(top, channels, 1, norm=norm, act=None))
            for s in self.pool_scales
        )
        self.ppm_bottleneck = nn.Sequential(
            ConvNormAct(top + len(self.pool_scales) * channels, channels, 1, norm=norm), nn.Dropout2d(dropout)
        )
        self.lateral_convs = nn.ModuleList(ConvNormAct(f.channels, channels, 1, norm=norm) for f in feature_info[:-1])
        self.fpn_convs = nn.ModuleList(ConvNormAct(channels, channels, 3, norm=norm) for _ in feature_info[:-1])
        self.fpn_bottleneck = ConvNormAct(self.num_levels * channels, channels, 3, norm=norm)
        kaiming_init(self)

    def pyramid_pooling(self, x: torch.Tensor) -> torch.Tensor:
        """Last map N×C4×h×w → PPM level N×channels×h×w."""
        size = x.shape[-2:]
        outs = [x] + [F.interpolate(branch(x), size=size, mode="bilinear", align_corners=True) for branch in self.ppm]
        return self.ppm_bottleneck(torch.cat(outs, dim=1))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Backbone maps → decoder feature D, N×channels×h×w at ``stride`` (h = ⌈H/stride⌉)."""
        if len(features) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature maps, got {len(features)}")
        levels = [conv(f) for conv, f in zip(self.lateral_convs, features[:-1])]
        levels.append(self.pyramid_pooling(features[-1]))
        for i in range(self.num_levels - 1, 0, -1):
            up = F.interpolate(levels[i], size=levels[i - 1].shape[-2:], mode="bilinear", align_corners=False)
            levels[i - 1] = levels[i - 1] + up
        outs = [conv(level) for conv, level in zip(self.fpn_convs, levels[:-1])] + [levels[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]]
        return self.fpn_bottleneck(torch.cat(outs, dim=1))


class UPerHead(nn.Module):
    """UPerDecoder followed by Dropout2d and a 1×1 classifier.

    Args:
        feature_info: the backbone's feature_info.
        num_classes: number of output classes C.
        channels: decoder width.
        pool_scales: PPM output sizes.
        norm: norm name.
        dropout: Dropout2d probability, after the PPM bottleneck and before the classifier.

    Attributes:
        stride: reduction of the output logits (that of the first map).
    """

    def __init__(self, feature_info: Sequence[FeatureInfo], num_classes: int, channels: int = 256,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), norm: str = "bn", dropout: float = 0.1):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be ≥ 1, got {num_classes}")
        self.decoder = UPerDecoder(feature_info, channels, pool_scales, norm, dropout)
        self.stride = self.decoder.stride
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        kaiming_init(self.classifier)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Backbone maps → N×C×h×w logits at ``stride`` (h = ⌈H/stride⌉)."""
        return self.classifier(self.dropout(self.decoder(features)))
