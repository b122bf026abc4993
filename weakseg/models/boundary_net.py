"""The boundary detection network of BES/SBE (``resnet50_bes``, methods.md §4.4).

A frozen ImageNet backbone (output stride 16; every parameter frozen, BN with fixed statistics) and a
:class:`~weakseg.models.heads.boundary.BoundaryHead` of side branches fused into one logit at stride 4. Only the
head learns. ResNet backbones also feed their stem output after the max-pool (64 channels, stride 4), as the
reference does (five branches, 160 fused channels); other backbones feed their four stage maps (their stem output
is at stride 2, finer than the head's stride 4).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from weakseg.models.backbones import FeatureInfo, ResNet, build_backbone
from weakseg.models.heads.boundary import BoundaryHead
from weakseg.models.segmentor import split_norm_and_bias


class BoundaryNet(nn.Module):
    """Frozen backbone + boundary head.

    Args:
        backbone: a key of :data:`~weakseg.models.BACKBONES` (``resnet50`` in the paper).
        pretrained: backbone weights: None, ``"imagenet"`` (bundled files) or a checkpoint path.
        output_stride: 16 in the reference.
        dilated: dilate the stages that give up their stride (False: IRN's strides (2, 2, 2, 1)).
        branch_channels: channels of each side branch (32).
        gn_groups: GroupNorm groups of each side branch (4).

    Attributes:
        stride: reduction of the boundary logits (4: the finest tapped map).
    """

    def __init__(self, backbone: str, *, pretrained: str | Path | None = None, output_stride: int = 16,
                 dilated: bool = False, branch_channels: int = 32, gn_groups: int = 4):
        super().__init__()
        # The whole backbone is frozen: no gradient and fixed BN statistics (the reference keeps it in eval mode).
        self.backbone = build_backbone(backbone, pretrained=pretrained, output_stride=output_stride,
                                       norm="frozen_bn", frozen_stages=4, dilated=dilated)
        infos = list(self.backbone.feature_info)
        self.tap_stem = isinstance(self.backbone, ResNet)
        if self.tap_stem:
            # the stem after max-pool runs at the reduction of layer1 (layer1 has stride 1)
            infos.insert(0, FeatureInfo(self.backbone.bn1.num_features, infos[0].reduction, "maxpool"))
        self.head = BoundaryHead(infos, branch_channels=branch_channels, gn_groups=gn_groups)
        self.stride: int = min(f.reduction for f in infos)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The maps the head reads (no gradient: the backbone is frozen)."""
        with torch.no_grad():
            if not self.tap_stem:
                return self.backbone(x)
            b = self.backbone
            stem = b.maxpool(b.relu(b.bn1(b.conv1(x))))
            maps = [stem]
            for layer in (b.layer1, b.layer2, b.layer3, b.layer4):
                maps.append(layer(maps[-1]))
            return maps

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """N×3×H×W normalised images → ``{"boundary": N×1×h×w float logits}``, h = ⌈H/4⌉."""
        return {"boundary": self.head(self.features(x))}

    @torch.no_grad()
    def boundary_map(self, x: torch.Tensor) -> torch.Tensor:
        """1×3×H×W normalised image → h×w boundary probability B in [0, 1] (§4.4 inference): the image and its
        flip go through the net as one batch, B = sigmoid(½·logit + ½·flip(logit of the flipped image))."""
        if x.ndim != 4 or x.shape[0] != 1:
            raise ValueError(f"expected one image 1×3×H×W, got shape {tuple(x.shape)}")
        logits = self(torch.cat([x, x.flip(-1)]))["boundary"][:, 0].float()
        return torch.sigmoid(0.5 * (logits[0] + logits[1].flip(-1)))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """``head`` (side-branch and fusion conv weights) and ``head_norm_bias`` (GroupNorm parameters and the
        fusion bias); the backbone has no trainable parameter."""
        head, head_norm_bias = split_norm_and_bias(self.head)
        return {"head": head, "head_norm_bias": head_norm_bias}
