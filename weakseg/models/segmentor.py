"""Backbone + head = a segmentation network with a dict output and named parameter groups (style rules 8, 10)."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
import torch.nn as nn

from weakseg.models.backbones import Backbone, build_backbone, unknown_name_error
from weakseg.models.heads import HEADS
from weakseg.models.norm import NORM_TYPES

# Frozen / fixed-statistics BN suits a pretrained backbone, never a freshly initialised head.
HEAD_NORM = {"bn": "bn", "syncbn": "syncbn", "frozen_bn": "bn", "fixed_bn": "bn", "gn": "gn"}


def split_norm_and_bias(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split ``module``'s trainable parameters into (weights, norm parameters and biases).

    Norm parameters are those of BatchNorm / SyncBN / GroupNorm / LayerNorm / InstanceNorm layers; biases are any
    other parameter named ``bias``. Each parameter appears once even if shared.
    """
    weights, norm_bias, seen = [], [], set()
    for m in module.modules():
        for name, p in m.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (norm_bias if isinstance(m, NORM_TYPES) or name == "bias" else weights).append(p)
    return weights, norm_bias


class Segmentor(nn.Module):
    """A backbone and a segmentation head.

    Args:
        backbone: returns a list of maps described by ``feature_info``.
        head: takes that list, returns N×C×h×w logits and has a ``stride`` attribute.

    Attributes:
        stride: reduction of the ``seg`` logits.
    """

    def __init__(self, backbone: Backbone, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.stride: int = head.stride

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """N×3×H×W normalised images → ``{"seg": N×C×h×w float logits}`` with h = ⌈H/stride⌉.

        The key set is fixed; the engine upsamples the logits to the label size.
        """
        return {"seg": self.head(self.backbone(x))}

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by group name, for per-group LR and weight-decay multipliers (style rule 10).

        Returns:
            ``backbone`` (backbone conv weights), ``backbone_norm`` (backbone norm parameters and biases),
            ``head`` (head weights), ``head_norm_bias`` (head norm parameters and biases). All four keys are
            always present; frozen parameters (requires_grad False) are left out.
        """
        backbone, backbone_norm = split_norm_and_bias(self.backbone)
        head, head_norm_bias = split_norm_and_bias(self.head)
        return {"backbone": backbone, "backbone_norm": backbone_norm, "head": head, "head_norm_bias": head_norm_bias}


def build_segmentor(backbone: str, head: str, num_classes: int, *, pretrained: str | Path | None = None,
                    output_stride: int = 16, norm: str = "bn", frozen_stages: int = -1,
                    head_kwargs: dict | None = None, backbone_options: dict | None = None) -> Segmentor:
    """Build a Segmentor from table names.

    Args:
        backbone: a key of ``BACKBONES``.
        head: a key of :data:`~weakseg.models.heads.HEADS` (``deeplabv2``, ``deeplabv3plus``, ``uper``).
        num_classes: number of output classes C.
        pretrained: backbone weights: None, ``"imagenet"`` or a checkpoint path.
        output_stride: backbone output stride (8, 16, 32).
        norm: backbone norm name. Heads with a ``norm`` option get the same one, except that frozen_bn and
            fixed_bn become bn (a new head must learn its statistics); ``head_kwargs["norm"]`` overrides.
        frozen_stages: backbone stem + stages to freeze (−1: none).
        head_kwargs: further head options (e.g. ``{"rates": (6, 12, 18, 24)}``); an unknown option raises TypeError.
        backbone_options: further backbone constructor options (ResNet: ``stride_in_1x1`` for Caffe-converted
            DeepLab weights, ``multi_grid``, ``dilate_first_block``).

    Returns:
        The Segmentor.

    Raises:
        ValueError: unknown backbone, head or norm name (with suggestions), or a bad option value.
    """
    if head not in HEADS:
        raise unknown_name_error("head", head, list(HEADS))
    net = build_backbone(backbone, pretrained=pretrained, output_stride=output_stride, norm=norm,
                         frozen_stages=frozen_stages, options=backbone_options)
    head_cls = HEADS[head]
    kwargs = dict(head_kwargs or {})
    if "norm" in inspect.signature(head_cls).parameters:
        kwargs.setdefault("norm", HEAD_NORM[norm])
    return Segmentor(net, head_cls(net.feature_info, num_classes, **kwargs))
