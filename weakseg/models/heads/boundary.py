"""Boundary detection head of the BES/SBE boundary network (methods.md §4.4)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class BoundaryHead(nn.Module):
    """Side branches on several feature maps, fused into one boundary logit at the finest stride.

    Each input map gets a branch 1×1 conv (no bias) → ``branch_channels`` → GroupNorm(``gn_groups``) → bilinear
    upsample by its reduction / the finest reduction (skipped when 1) → ReLU. The branches are cropped to the
    finest map's size (top-left, as the reference does), concatenated and fused by a 1×1 conv with bias into
    one logit. The reference BES net feeds five maps (stem after max-pool and layer1 at stride 4, layer2 at 8,
    layer3/layer4 at 16), giving 5·32 = 160 fused channels; any list described by ``feature_info`` works.

    Args:
        feature_info: one entry per input map, each with ``.channels`` and ``.reduction`` (a backbone's
            ``feature_info``, possibly a subset or with extra entries for the stem).
        branch_channels: output channels of each side branch (32).
        gn_groups: GroupNorm groups of each side branch (4).
    """

    def __init__(self, feature_info: Sequence, branch_channels: int = 32, gn_groups: int = 4):
        super().__init__()
        if len(feature_info) == 0:
            raise ValueError("feature_info must describe at least one feature map")
        reductions = [int(f.reduction) for f in feature_info]
        finest = min(reductions)
        if any(r % finest for r in reductions):
            raise ValueError(f"every reduction must be a multiple of the finest one, got {reductions}")
        self.scales = [r // finest for r in reductions]
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(int(f.channels), branch_channels, kernel_size=1, bias=False),
                nn.GroupNorm(gn_groups, branch_channels),
            )
            for f in feature_info
        )
        self.fuse = nn.Conv2d(branch_channels * len(feature_info), 1, kernel_size=1, bias=True)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """List of N×C_i×h_i×w_i feature maps (in ``feature_info`` order) → N×1×h×w float boundary logits at
        the finest stride (apply a sigmoid for the boundary probability B)."""
        if len(features) != len(self.branches):
            raise ValueError(f"expected {len(self.branches)} feature maps, got {len(features)}")
        finest = next(f for f, s in zip(features, self.scales) if s == 1)
        height, width = finest.shape[-2:]
        outs = []
        for feat, branch, scale in zip(features, self.branches, self.scales):
            y = branch(feat)
            if scale != 1:
                y = F.interpolate(y, scale_factor=scale, mode="bilinear", align_corners=False)
            if y.shape[-2] < height or y.shape[-1] < width:
                # Odd input sizes can leave an upsampled coarse map one cell short; extend its last row/column.
                y = F.pad(y, (0, max(0, width - y.shape[-1]), 0, max(0, height - y.shape[-2])), mode="replicate")
            outs.append(F.relu(y[..., :height, :width]))
        return self.fuse(torch.cat(outs, dim=1))
