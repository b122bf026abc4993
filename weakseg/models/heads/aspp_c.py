"""CDSP's "DeepLab-v2" head (spec ``methods.md`` §3.2(1), ``res50_ASPP_lorm`` / ``deeplabv2``): an ASPP whose
branches already have C = num_classes channels.

On the last backbone map: a 1×1 branch, one 3×3 branch per rate (dilations 12, 18, 24 at output stride 8; the
reference's rate list [6, 12, 18, 24] spends "6" on the 1×1 branch, so it has no effect) and an image-pooling
branch (global average → 1×1 conv → norm → ReLU → broadcast), each conv without bias + norm + ReLU and C channels
wide; the 5·C concatenation is fused by a 1×1 conv (no bias) + norm, with no ReLU and no dropout, into the logits.
Unlike :class:`~weakseg.models.heads.deeplabv3plus.DeepLabV3PlusHead` the rates are used as given (they are the
reference's values at output stride 8). The image-pooling branch normalises 1×1 maps, so BatchNorm training needs
at least two images per device.

Init: every conv N(0, 2/n) with n = k·k·out_channels (Kaiming normal, fan_out), norms weight 1 / bias 0, i.e. the
reference's model-level init loop (§3.2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from weakseg.models.backbones.base import FeatureInfo
from weakseg.models.layers import ConvNormAct, kaiming_init


class ASPPClassHead(nn.Module):
    """ASPP with class-wide (C-channel) branches on the last map → N×C×h×w logits.

    Args:
        feature_info: the backbone's feature_info; the last entry gives the input channels and the stride.
        num_classes: number of output classes C (= the width of every branch).
        rates: dilations of the 3×3 branches, used as given.
        norm: norm name of every conv + norm block.

    Attributes:
        stride: reduction of the output logits (that of the last backbone map).
        rates: the dilations, as built.
    """

    def __init__(self, feature_info: Sequence[FeatureInfo], num_classes: int, rates: Sequence[int] = (12, 18, 24),
                 norm: str = "bn"):
        super().__init__()
        if not feature_info:
            raise ValueError("feature_info is empty")
        if num_classes < 1:
            raise ValueError(f"num_classes must be ≥ 1, got {num_classes}")
        if any(int(r) != r or r < 1 for r in rates):
            raise ValueError(f"rates must be positive integers, got {tuple(rates)}")
        in_channels = feature_info[-1].channels
        self.stride = feature_info[-1].reduction
        self.rates = tuple(int(r) for r in rates)
        self.branches = nn.ModuleList(
            [ConvNormAct(in_channels, num_classes, 1, norm=norm)]
            + [ConvNormAct(in_channels, num_classes, 3, dilation=r, norm=norm) for r in self.rates]
        )
        self.image_pool = ConvNormAct(in_channels, num_classes, 1, norm=norm)
        self.fuse = ConvNormAct(num_classes * (len(self.rates) + 2), num_classes, 1, norm=norm, act=None)
        kaiming_init(self)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Backbone maps → N×C×h×w logits at ``stride`` (h = ⌈H/stride⌉), from the last map only."""
        x = features[-1]
        outs = [branch(x) for branch in self.branches]
        pooled = self.image_pool(x.mean(dim=(2, 3), keepdim=True))
        outs.append(pooled.expand(-1, -1, x.shape[2], x.shape[3]))
        return self.fuse(torch.cat(outs, dim=1))
