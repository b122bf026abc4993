"""Backbones by name: the :data:`BACKBONES` table and :func:`build_backbone`.

Every backbone returns four stage maps described by its ``feature_info`` (see :mod:`.base`).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Callable

from weakseg.models.backbones.base import OUTPUT_STRIDES, Backbone, FeatureInfo, check_output_stride
from weakseg.models.backbones.efficientnet_lite import EfficientNetLite0
from weakseg.models.backbones.mobilenetv2 import MobileNetV2
from weakseg.models.backbones.resnet import ResNet, resnet18, resnet34, resnet50, resnet101, resnet101s
from weakseg.models.norm import NORM_NAMES
from weakseg.models.weights import check_pretrained, load_pretrained

# name → constructor(*, output_stride, norm, dilated)
BACKBONES: dict[str, Callable[..., Backbone]] = {
    "mobilenet_v2": MobileNetV2,
    "efficientnet_lite0": EfficientNetLite0,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "resnet101s": resnet101s,
}


def unknown_name_error(kind: str, name: str, known: list[str]) -> ValueError:
    """ValueError for an unknown table name that suggests the closest known names."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown {kind} {name!r}{hint} (known: {', '.join(known)})")


def build_backbone(name: str, *, pretrained: str | Path | None = None, output_stride: int = 32, norm: str = "bn",
                   frozen_stages: int = -1, dilated: bool = True, options: dict[str, Any] | None = None) -> Backbone:
    """Build a backbone by name.

    Args:
        name: a key of :data:`BACKBONES`.
        pretrained: None (random init), ``"imagenet"`` (bundled file; mobilenet_v2 and efficientnet_lite0 only) or
            a checkpoint path (torchvision / timm layout). See :mod:`weakseg.models.weights`.
        output_stride: 8, 16 or 32; stages past it are dilated instead of strided.
        norm: bn, syncbn, frozen_bn, fixed_bn or gn (see :mod:`weakseg.models.norm`).
        frozen_stages: freeze the stem and the first k stages (requires_grad False, BN frozen); −1 freezes
            nothing. The CAM network of spec §4.2 uses 2 (conv1/bn1, layer1 and layer2 get no gradient).
        dilated: False keeps the stride-1 stages undilated (IRN's ResNet-50 with strides (2, 2, 2, 1)).
        options: further architecture options of that constructor (ResNet: ``multi_grid``, ``stride_in_1x1``,
            ``dilate_first_block``); an option the backbone does not have raises TypeError.

    Returns:
        The backbone; ``forward(x)`` returns four maps described by ``feature_info``.

    Raises:
        ValueError: unknown name (with suggestions), bad output_stride, norm or frozen_stages, ``"imagenet"`` for a
            backbone without bundled weights.
        FileNotFoundError: missing weights package or file.
        CheckpointMismatchError: the checkpoint does not match the layout.
    """
    if name not in BACKBONES:
        raise unknown_name_error("backbone", name, list(BACKBONES))
    check_output_stride(output_stride)
    if norm not in NORM_NAMES:
        raise unknown_name_error("norm", norm, list(NORM_NAMES))
    check_pretrained(name, pretrained)
    backbone = BACKBONES[name](output_stride=output_stride, norm=norm, dilated=dilated, **(options or {}))
    load_pretrained(backbone, name, pretrained)
    backbone.freeze_stages(frozen_stages)
    return backbone


__all__ = ["BACKBONES", "OUTPUT_STRIDES", "Backbone", "EfficientNetLite0", "FeatureInfo", "MobileNetV2", "ResNet",
           "build_backbone", "unknown_name_error"]
