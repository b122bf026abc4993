"""WebCoseg's networks (methods.md §5.2): the segmentation FCN, and the final model's global branch.

* Segmentation branch: backbone (OS8 in the paper) + a head (``largefov`` in the paper) → pixel logits s.
* Global branch (final model only): its *own copy* of the last two backbone stages, run at their nominal strides
  (no dilation) on the shared stage-2 map, global max pooling, 1×1 conv → 1024 → ReLU → Dropout(0.5) → 1×1 conv
  1024 → 1024 → ReLU → Dropout(0.5) → 1×1 conv → C image logits g. The copy starts from the same ImageNet weights.
* Fusion: logits = s + g (g broadcast over every pixel); this fused network is what ``eval``, ``predict`` and
  ``export`` use.

The global branch runs a backbone's stages by their module names (``stage_modules``), so it needs a backbone whose
stages are plain module sequences: ResNets and MobileNetV2.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
import torch.nn as nn

from weakseg.models.backbones import build_backbone
from weakseg.models.backbones.base import set_submodule
from weakseg.models.heads import HEADS
from weakseg.models.segmentor import HEAD_NORM, split_norm_and_bias

#: backbones whose stages are plain sequences of the modules named in ``stage_modules``
GLOBAL_BRANCH_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2")


class GlobalBranch(nn.Module):
    """Image-classification branch over the stage-2 map (N×C2×h×w) → N×C logits.

    Args:
        backbone: the segmentation branch's backbone name (its stages 3 and 4 are copied).
        num_classes: C.
        pretrained: weights of the copy (the same file as the segmentation branch's backbone).
        norm: backbone norm.
        channels: width of the two hidden layers (1024).
        dropout: dropout after each hidden layer (0.5).
    """

    def __init__(self, backbone: str, num_classes: int, *, pretrained: str | Path | None = None, norm: str = "bn",
                 channels: int = 1024, dropout: float = 0.5, backbone_options: dict | None = None):
        super().__init__()
        if backbone not in GLOBAL_BRANCH_BACKBONES:
            raise ValueError(f"the global branch copies the last two stages of the backbone, which needs one of "
                             f"{', '.join(GLOBAL_BRANCH_BACKBONES)} (got {backbone!r})")
        copy = build_backbone(backbone, pretrained=pretrained, output_stride=32, norm=norm, options=backbone_options)
        for names in copy.stage_modules[:3]:  # stem, stage 1, stage 2 are shared with the segmentation branch
            for name in names:
                set_submodule(copy, name, nn.Identity())
        self.stages = copy
        self.stage_names = [name for names in copy.stage_modules[3:] for name in names]
        width = copy.feature_info[-1].channels
        self.fc1 = nn.Conv2d(width, channels, 1)
        self.fc2 = nn.Conv2d(channels, channels, 1)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        for conv in (self.fc1, self.fc2, self.classifier):  # new layers: N(0, 0.01), zero bias (the reference)
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, stage2: torch.Tensor) -> torch.Tensor:
        x = stage2
        for name in self.stage_names:
            x = self.stages.get_submodule(name)(x)
        x = torch.amax(x, dim=(2, 3), keepdim=True)  # global max pooling
        x = self.drop(self.relu(self.fc1(x)))
        x = self.drop(self.relu(self.fc2(x)))
        return self.classifier(x).flatten(1)


class WebCosegNet(nn.Module):
    """Segmentation FCN, with the global branch when ``global_branch`` (the final model).

    ``forward`` returns ``seg`` (N×C×h×w pixel logits at ``stride``) and, with the global branch, ``global``
    (N×C image logits) and ``fused`` = seg + global broadcast; without it ``fused`` is ``seg``.
    """

    def __init__(self, backbone: str, head: str, num_classes: int, *, pretrained: str | Path | None = None,
                 output_stride: int = 8, norm: str = "bn", head_kwargs: dict | None = None,
                 backbone_options: dict | None = None, global_branch: bool = False, global_channels: int = 1024):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; known: {', '.join(HEADS)}")
        self.backbone = build_backbone(backbone, pretrained=pretrained, output_stride=output_stride, norm=norm,
                                       options=backbone_options)
        kwargs = dict(head_kwargs or {})
        if "norm" in inspect.signature(HEADS[head]).parameters:
            kwargs.setdefault("norm", HEAD_NORM[norm])
        self.head = HEADS[head](self.backbone.feature_info, num_classes, **kwargs)
        self.stride: int = self.head.stride
        self.global_branch = (GlobalBranch(backbone, num_classes, pretrained=pretrained, norm=norm,
                                           channels=global_channels, backbone_options=backbone_options)
                              if global_branch else None)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        seg = self.head(features)
        if self.global_branch is None:
            return {"seg": seg, "fused": seg}
        g = self.global_branch(features[1])
        return {"seg": seg, "global": g, "fused": seg + g[:, :, None, None]}

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """backbone / backbone_norm (both copies of the backbone stages) and head / head_norm_bias (the FCN head
        and the global branch's FC layers)."""
        backbone, backbone_norm = split_norm_and_bias(self.backbone)
        head, head_norm_bias = split_norm_and_bias(self.head)
        if self.global_branch is not None:
            b, bn = split_norm_and_bias(self.global_branch.stages)
            backbone, backbone_norm = backbone + b, backbone_norm + bn
            for conv in (self.global_branch.fc1, self.global_branch.fc2, self.global_branch.classifier):
                head.append(conv.weight)
                head_norm_bias.append(conv.bias)
        return {"backbone": backbone, "backbone_norm": backbone_norm, "head": head, "head_norm_bias": head_norm_bias}
