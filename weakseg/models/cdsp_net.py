"""The CDSP segmentation network (spec ``methods.md`` §3.2): backbone + head with a dict output that also carries
the last backbone map (``feat``), the input of LoRM (:class:`weakseg.modules.lorm.LoRM`), which the method owns and
applies during training only (models sit below modules, so the network does not import it).

Reference variants, as (backbone options, head, head options) — see :func:`cdsp_backbone_options` and
:func:`cdsp_head_kwargs`:

* ``res50_ASPP_lorm`` / ``deeplabv2``: ResNet at output stride 8 (Caffe-style stride in the 1×1 conv, layer3
  dilation 2, layer4 multi-grid dilations 4, 8, 16) + :class:`~weakseg.models.heads.aspp_c.ASPPClassHead`
  (``aspp_c``), logits at stride 8; with / without LoRM.
* ``deeplabv3p`` / ``deeplabv3p_lorm``: the same backbone + DeepLab-v3+ (``deeplabv3plus`` with rates 6, 12, 18
  as given, dropout 0.5 after the ASPP projection, no dropout before the classifier, align_corners=True
  upsampling), logits at stride 4; with / without LoRM.

MobileNetV2 and EfficientNet-Lite0 work the same way for CPU presets: their last map plays layer4's role (and
the ResNet-only options are simply not passed).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from weakseg.models.backbones import build_backbone, unknown_name_error
from weakseg.models.heads import HEADS
from weakseg.models.layers import kaiming_init
from weakseg.models.segmentor import HEAD_NORM, split_norm_and_bias

__all__ = ["CDSPNet", "HEAD_INITS", "cdsp_backbone_options", "cdsp_head_kwargs"]

HEAD_INITS = ("msra", "module")


def cdsp_backbone_options(backbone: str) -> dict[str, Any]:
    """The reference ResNet layout options of §3.2 for ``backbone`` (ResNet-50/101: stride in the 1×1 conv,
    dilated first blocks, multi-grid (1, 2, 4) in layer4 → dilations 4, 8, 16 at output stride 8; ResNet-18/34
    without the Caffe-style block); {} for backbones without these options (MobileNetV2, EfficientNet-Lite0, the
    deep-stem ResNet)."""
    if backbone in ("resnet50", "resnet101"):
        return {"stride_in_1x1": True, "dilate_first_block": True, "multi_grid": (1, 2, 4)}
    if backbone == "resnet34":
        return {"dilate_first_block": True, "multi_grid": (1, 2, 4)}
    if backbone == "resnet18":  # two layer4 blocks
        return {"dilate_first_block": True, "multi_grid": (1, 2)}
    return {}


def cdsp_head_kwargs(head: str) -> dict[str, Any]:
    """The reference options of §3.2 for head ``aspp_c`` (rates 12, 18, 24) or ``deeplabv3plus`` (256-wide ASPP
    with rates 6, 12, 18 used as given, dropout 0.5 after the projection, 48-channel low-level branch from the
    stride-4 map, no dropout before the classifier, align_corners=True); {} for any other head."""
    if head == "aspp_c":
        return {"rates": (12, 18, 24)}
    if head == "deeplabv3plus":
        return {"aspp_channels": 256, "rates": (6, 12, 18), "rates_output_stride": None, "aspp_dropout": 0.5,
                "low_level_index": 0, "low_level_channels": 48, "dropout": 0.0, "align_corners": True}
    return {}


class CDSPNet(nn.Module):
    """Backbone + segmentation head with a dict output that includes the last backbone map.

    Args:
        backbone: a key of ``BACKBONES``.
        head: a key of ``HEADS`` (``aspp_c`` and ``deeplabv3plus`` are the reference's).
        num_classes: number of output classes C.
        pretrained: backbone weights: None, ``"imagenet"`` or a checkpoint path.
        output_stride: backbone output stride (8 in the reference).
        norm: backbone norm name; the head gets the matching trainable norm (as in ``build_segmentor``).
        backbone_options: further backbone constructor options (:func:`cdsp_backbone_options`).
        head_kwargs: head options (:func:`cdsp_head_kwargs`); an unknown option raises TypeError.
        head_init: ``msra``: every head conv weight N(0, 2/n), n = k·k·out_channels, biases 0, norms 1/0 (the
            reference's model-level init loop, §3.2); ``module``: the head keeps its own init.

    Attributes:
        stride: reduction of the ``seg`` logits.
        feat_channels: channels D of the ``feat`` map (the last backbone map; LoRM's ``channels``).
    """

    def __init__(self, backbone: str, head: str, num_classes: int, *, pretrained: str | Path | None = None,
                 output_stride: int = 8, norm: str = "bn", backbone_options: dict[str, Any] | None = None,
                 head_kwargs: dict[str, Any] | None = None, head_init: str = "msra"):
        super().__init__()
        if head not in HEADS:
            raise unknown_name_error("head", head, list(HEADS))
        if head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {HEAD_INITS}, got {head_init!r}")
        self.backbone = build_backbone(backbone, pretrained=pretrained, output_stride=output_stride, norm=norm,
                                       options=backbone_options)
        head_cls = HEADS[head]
        kwargs = dict(head_kwargs or {})
        if "norm" in inspect.signature(head_cls).parameters:
            kwargs.setdefault("norm", HEAD_NORM[norm])
        self.head = head_cls(self.backbone.feature_info, num_classes, **kwargs)
        self.stride: int = self.head.stride
        self.feat_channels: int = self.backbone.feature_info[-1].channels
        if head_init == "msra":
            kaiming_init(self.head)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """N×3×H×W normalised images → ``seg``: N×C×h×w logits at ``stride``; ``feat``: N×D×h'×w' last backbone
        map (stride of the backbone's last map; the LoRM input). Both keys are always present."""
        features = self.backbone(x)
        return {"seg": self.head(features), "feat": features[-1]}

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The Segmentor's four groups (a method adds its LoRM parameters to the head groups)."""
        backbone, backbone_norm = split_norm_and_bias(self.backbone)
        head, head_norm_bias = split_norm_and_bias(self.head)
        return {"backbone": backbone, "backbone_norm": backbone_norm, "head": head, "head_norm_bias": head_norm_bias}
