"""ResNet-18/34/50/101 and the deep-stem ResNet-101 ("resnet101s") with torchvision's module names.

Attribute names are exactly torchvision's (``conv1``, ``bn1``, ``layer1``..``layer4``; blocks ``conv1..3``,
``bn1..3``, ``downsample.0/1``), so a torchvision or timm ``resnet*.pth`` loads strictly once
:func:`remap_resnet_checkpoint` has dropped ``fc.*`` — keep them when editing this file. The stride sits on the
3×3 convolution (ResNet v1.5, torchvision and IRN). The deep stem of ``resnet101s`` is PyTorch-Encoding's
(``conv1.0/1/3/4/6``: 3×3/2 3→64, 64→64, 64→128), used by BLPSeg (spec §2.3).

Maps: layer1..layer4 at strides 4, 8, 16, 32 (dilated past ``output_stride``); channels 64/128/256/512 for
BasicBlock nets, 256/512/1024/2048 for Bottleneck nets.

Options of the DeepLab-v2 / CDSP layout (spec §3.2), all off by default: ``stride_in_1x1`` (Caffe-style Bottleneck,
the stride on the first 1×1 convolution; the weights keep their names), ``dilate_first_block`` (the first block of
a dilated stage already uses the stage's dilation instead of the previous one) and ``multi_grid`` (the blocks of
layer4 use the stage dilation × these factors, e.g. (1, 2, 4) at output stride 8 → dilations 4, 8, 16).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import torch
import torch.nn as nn

from weakseg.models.backbones.base import Backbone, FeatureInfo, StridePlan
from weakseg.models.layers import kaiming_init
from weakseg.models.norm import make_norm


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


# kazuto1011/deeplab-pytorch's Caffe-converted DeepLab layout: layer1 = stem, layer2..5 = our layer1..4 of
# "block<j>" units with reduce / conv3x3 / increase / proj ConvBatchNorm pairs
_CAFFE_BLOCK = re.compile(r"^layer([2-5])\.block(\d+)\.(reduce|conv3x3|increase|proj)\.(conv|bn)\.(.+)$")
_CAFFE_PARTS = {("reduce", "conv"): "conv1", ("reduce", "bn"): "bn1", ("conv3x3", "conv"): "conv2",
                ("conv3x3", "bn"): "bn2", ("increase", "conv"): "conv3", ("increase", "bn"): "bn3",
                ("proj", "conv"): "downsample.0", ("proj", "bn"): "downsample.1"}


def _remap_caffe_deeplab(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """kazuto1011/deeplab-pytorch DeepLab checkpoint (e.g. the COCO-pretrained ``deeplabv1_resnet101-coco.pth`` of
    the DeepLab-v2 recipe, spec §4.7) → this module's keys. The ``aspp.*`` classifier is dropped (its classes are
    COCO's), and conv1's input channels are reversed: Caffe's weights read BGR, weakseg feeds RGB. Such a backbone
    needs ``stride_in_1x1=True`` and Caffe's input scaling (``data.mean`` = (122.675, 116.669, 104.008) / 255,
    ``data.std`` = 1/255: x·255 − mean, no division)."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("aspp."):
            continue
        if key.startswith("layer1.conv1."):
            kind, rest = key[len("layer1.conv1."):].split(".", 1)
            key = ("conv1." if kind == "conv" else "bn1.") + rest
            if key == "conv1.weight":
                value = value.flip(1)
        else:
            m = _CAFFE_BLOCK.match(key)
            if m is not None:
                stage, block, part, kind, rest = m.groups()
                key = f"layer{int(stage) - 1}.{int(block) - 1}.{_CAFFE_PARTS[(part, kind)]}.{rest}"
        out[key] = value
    return out


def remap_resnet_checkpoint(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Torchvision / timm / PyTorch-Encoding ResNet checkpoint → this module's keys.

    The three share the layout; this strips DataParallel/DDP ``module.`` (and DeepLab MSC ``base.``) prefixes and
    drops the ``fc.*`` classifier. A kazuto1011/deeplab-pytorch Caffe-converted DeepLab file (recognised by its
    ``layer2.block1.reduce.conv.weight`` key) is converted by :func:`_remap_caffe_deeplab`. Everything else must
    then match exactly (the loader is strict).
    """
    stripped = {}
    for key, value in state_dict.items():
        while key.startswith(("module.", "base.")):
            key = key.split(".", 1)[1]
        stripped[key] = value
    if "layer2.block1.reduce.conv.weight" in stripped:
        return _remap_caffe_deeplab(stripped)
    out = {}
    for key, value in stripped.items():
        if key.startswith("fc."):
            continue
        out[key] = value
    return out


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual (ResNet-18/34).

    Args:
        in_channels: input channels.
        planes: width; output channels = planes.
        stride: stride of the first convolution.
        downsample: projection of the identity when shape changes, or None.
        first_dilation: dilation of the first convolution.
        dilation: dilation of the second convolution.
        norm: norm name.
    """

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 first_dilation: int = 1, dilation: int = 1, norm: str = "bn"):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, planes, stride, first_dilation)
        self.bn1 = make_norm(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = make_norm(norm, planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 → 3×3 (strided, dilated) → 1×1 bottleneck with a residual (ResNet-50/101).

    Args:
        in_channels: input channels.
        planes: bottleneck width; output channels = 4·planes.
        stride: stride of the 3×3 convolution (of the first 1×1 convolution with ``stride_in_1x1``).
        downsample: projection of the identity when shape changes, or None.
        first_dilation: dilation of the 3×3 convolution (a Bottleneck has only one).
        dilation: unused by this block type (kept so both block types share one signature).
        norm: norm name.
        stride_in_1x1: Caffe-style block (original ResNet / DeepLab-v2 / CDSP): the stride sits on the 1×1 conv.
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 first_dilation: int = 1, dilation: int = 1, norm: str = "bn", stride_in_1x1: bool = False):
        super().__init__()
        out_channels = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, planes, 1, stride=stride_1x1, bias=False)
        self.bn1 = make_norm(norm, planes)
        self.conv2 = _conv3x3(planes, planes, stride_3x3, first_dilation)
        self.bn2 = make_norm(norm, planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = make_norm(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(Backbone):
    """ResNet feature extractor returning the outputs of layer1..layer4.

    Args:
        block: BasicBlock or Bottleneck.
        layers: number of blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
        output_stride: 8, 16 or 32.
        norm: norm name (bn, syncbn, frozen_bn, fixed_bn, gn).
        deep_stem: PyTorch-Encoding's three-conv stem (128 channels out) instead of the 7×7 convolution.
        dilated: dilate the stages that give up their stride (False: IRN-style stride 1 without dilation).
        multi_grid: per-block factors of layer4's dilation (DeepLab-v3 multi-grid; CDSP: (1, 2, 4) at output
            stride 8 → 4, 8, 16); one factor per layer4 block; None = every block uses the stage dilation.
        stride_in_1x1: Caffe-style Bottleneck (stride on the first 1×1 conv); Bottleneck nets only.
        dilate_first_block: the first block of a stage that gives up its stride is dilated like the others
            (DeepLab-v2 / CDSP) instead of keeping the previous dilation (torchvision).
    """

    def remap_checkpoint(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """:func:`remap_resnet_checkpoint`, refusing Caffe-converted DeepLab weights for a block with the stride on
        the 3×3 convolution: every shape would match, so they would load silently into the wrong strides."""
        out = remap_resnet_checkpoint(state_dict)
        if any(k.endswith("layer2.block1.reduce.conv.weight") for k in state_dict) and not self.stride_in_1x1:
            raise ValueError("Caffe-converted DeepLab weights (kazuto1011/deeplab-pytorch layout) need the Caffe "
                             "block: set model.backbone_options: {stride_in_1x1: true}")
        return out

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: tuple[int, int, int, int], *,
                 output_stride: int = 32, norm: str = "bn", deep_stem: bool = False, dilated: bool = True,
                 multi_grid: Sequence[int] | None = None, stride_in_1x1: bool = False,
                 dilate_first_block: bool = False):
        super().__init__()
        if multi_grid is not None and (len(multi_grid) != layers[3] or any(int(g) != g or g < 1 for g in multi_grid)):
            raise ValueError(f"multi_grid must give one positive integer per layer4 block ({layers[3]}), "
                             f"got {tuple(multi_grid)}")
        self.stride_in_1x1 = stride_in_1x1
        if stride_in_1x1 and block is not Bottleneck:
            raise ValueError("stride_in_1x1 applies to Bottleneck ResNets (50/101) only")
        block_options = {"stride_in_1x1": True} if stride_in_1x1 else {}
        plan = StridePlan(output_stride, dilated)
        if deep_stem:
            self.conv1 = nn.Sequential(
                _conv3x3(3, 64, stride=2), make_norm(norm, 64), nn.ReLU(inplace=True),
                _conv3x3(64, 64), make_norm(norm, 64), nn.ReLU(inplace=True),
                _conv3x3(64, 128),
            )
            in_channels = 128
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
            in_channels = 64
        plan.step(2)
        self.bn1 = make_norm(norm, in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        plan.step(2)
        self.stage_modules = [["conv1", "bn1"]]
        for index, (planes, num_blocks, nominal_stride) in enumerate(zip((64, 128, 256, 512), layers, (1, 2, 2, 2))):
            stride, first_dilation, dilation = plan.step(nominal_stride)
            # (first, second) conv dilation of each block; a Bottleneck has one dilated conv and uses the first
            pairs = [(first_dilation, dilation)] + [(dilation, dilation)] * (num_blocks - 1)
            if dilate_first_block:
                pairs[0] = (dilation, dilation)
            if index == 3 and multi_grid is not None:
                pairs = [(dilation * int(g), dilation * int(g)) for g in multi_grid]
            out_channels = planes * block.expansion
            downsample = None
            if stride != 1 or in_channels != out_channels:
                downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                           make_norm(norm, out_channels))
            blocks = [block(in_channels, planes, stride, downsample, *pairs[0], norm, **block_options)]
            blocks += [block(out_channels, planes, 1, None, *pair, norm, **block_options) for pair in pairs[1:]]
            name = f"layer{index + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_modules.append([name])
            self.feature_info.append(FeatureInfo(out_channels, plan.reduction, name))
            in_channels = out_channels
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """N×3×H×W images → [layer1, layer2, layer3, layer4] maps, see ``feature_info`` for channels/strides."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features


def resnet18(*, output_stride: int = 32, norm: str = "bn", dilated: bool = True, **options: Any) -> ResNet:
    """ResNet-18 (BasicBlock, 2-2-2-2); arguments as in :class:`ResNet`."""
    return ResNet(BasicBlock, (2, 2, 2, 2), output_stride=output_stride, norm=norm, dilated=dilated, **options)


def resnet34(*, output_stride: int = 32, norm: str = "bn", dilated: bool = True, **options: Any) -> ResNet:
    """ResNet-34 (BasicBlock, 3-4-6-3); arguments as in :class:`ResNet`."""
    return ResNet(BasicBlock, (3, 4, 6, 3), output_stride=output_stride, norm=norm, dilated=dilated, **options)


def resnet50(*, output_stride: int = 32, norm: str = "bn", dilated: bool = True, **options: Any) -> ResNet:
    """ResNet-50 (Bottleneck, 3-4-6-3); arguments as in :class:`ResNet`."""
    return ResNet(Bottleneck, (3, 4, 6, 3), output_stride=output_stride, norm=norm, dilated=dilated, **options)


def resnet101(*, output_stride: int = 32, norm: str = "bn", dilated: bool = True, **options: Any) -> ResNet:
    """ResNet-101 (Bottleneck, 3-4-23-3); arguments as in :class:`ResNet`."""
    return ResNet(Bottleneck, (3, 4, 23, 3), output_stride=output_stride, norm=norm, dilated=dilated, **options)


def resnet101s(*, output_stride: int = 32, norm: str = "bn", dilated: bool = True) -> ResNet:
    """ResNet-101 with PyTorch-Encoding's deep stem (BLPSeg's backbone, spec §2.3); arguments as in :class:`ResNet`."""
    return ResNet(Bottleneck, (3, 4, 23, 3), output_stride=output_stride, norm=norm, deep_stem=True, dilated=dilated)
