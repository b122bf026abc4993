"""The BLPSeg network (spec §2.3): backbone → PPM + UPerNet decoder D (stride 4) with two heads, plus the shallow
patch-embedding branch that feeds LAM. LAM itself is a module applied by the method (``weakseg.methods.blpseg``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from weakseg.models.backbones import build_backbone
from weakseg.models.heads.uper import UPerDecoder
from weakseg.models.segmentor import HEAD_NORM, split_norm_and_bias


def _pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1×1 convolution applied to N×h×w×C channels-last rows as one matrix product (weights of ``conv``)."""
    return F.linear(x, conv.weight.flatten(1), conv.bias)


class _MLPHead(nn.Sequential):
    """1×1 conv → ReLU → 1×1 conv → ReLU → 1×1 conv classifier (no normalisation; spec §2.3). N×C×h×w → N×K×h×w.

    The parameters are those of the three ``nn.Conv2d`` (state-dict keys ``0.weight``, ``2.weight``, ``4.weight``,
    ``4.bias``), but the forward runs them as matrix products over the channels-last rows: on CPU a bias-free 1×1
    ``conv2d`` of a channels-last map takes the unblocked path, with a layout copy and a zero fill per call; the
    matrix products are the same arithmetic without them (measured on the horse network, 8 × 128 × 48²: both heads'
    forward + backward ≈ 180 ms as convolutions).
    """

    def __init__(self, channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(channels, channels, 1, bias=False), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1, bias=False), nn.ReLU(inplace=True),
            nn.Conv2d(channels, out_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # a view for a channels-last input, N×h×w×C
        x = torch.relu_(_pointwise(self[0], x))
        x = torch.relu_(_pointwise(self[2], x))
        return _pointwise(self[4], x).permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    """Swin-style shallow embedding: zero-pad to a multiple of 4, 4×4/4 conv, LayerNorm over channels, 1×1 conv.
    Input N×3×H×W → N×D×⌈H/4⌉×⌈W/4⌉."""

    def __init__(self, channels: int = 256, patch: int = 4):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(3, channels, patch, stride=patch)
        self.norm = nn.LayerNorm(channels)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (-w) % self.patch, 0, (-h) % self.patch))
        x = self.proj(x)
        x = self.norm(x.permute(0, 2, 3, 1))  # channels last, N×h×w×D
        return _pointwise(self.out, x).permute(0, 3, 1, 2)  # the 1×1 conv as a matrix product (see _MLPHead)


class BLPSegNet(nn.Module):
    """Outputs (dict with fixed keys, all at stride 4, h = ⌈H/4⌉):

    * ``seg``: N×C×h×w segmentation logits before LAM;
    * ``annotation``: N×(C+1)×h×w annotation-probability logits (last channel = "not annotated"), computed from
      the *detached* decoder feature so its loss trains only this head;
    * ``embed``: N×D×h×w shallow features for LAM; absent when the net is built with ``with_embed=False`` (the
      "without LAM" ablation, where the branch would receive no gradient).
    """

    def __init__(self, backbone: str, num_classes: int, *, pretrained: str | None = None, output_stride: int = 32,
                 norm: str = "bn", channels: int = 256, pool_scales=(1, 2, 3, 6), dropout: float = 0.1,
                 with_embed: bool = True):
        super().__init__()
        self.backbone = build_backbone(backbone, pretrained=pretrained, output_stride=output_stride, norm=norm)
        self.decoder = UPerDecoder(self.backbone.feature_info, channels=channels, pool_scales=pool_scales,
                                   norm=HEAD_NORM[norm], dropout=dropout)
        d = self.decoder.out_channels
        self.seg_head = _MLPHead(d, num_classes)
        self.annotation_head = _MLPHead(d, num_classes + 1)
        self.embed = PatchEmbed(channels) if with_embed else None
        for m in [self.seg_head, self.annotation_head, self.embed or nn.Identity()]:
            for mod in m.modules():
                if isinstance(mod, nn.Conv2d):
                    nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
                    if mod.bias is not None:
                        nn.init.zeros_(mod.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        d = self.decoder(self.backbone(x))
        out = {"seg": self.seg_head(d), "annotation": self.annotation_head(d.detach())}
        if self.embed is not None:
            out["embed"] = self.embed(x)
        return out

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The Segmentor's four groups; decoder, both heads and the embedding branch form the "head"."""
        backbone, backbone_norm = split_norm_and_bias(self.backbone)
        head, head_norm_bias = [], []
        for m in (self.decoder, self.seg_head, self.annotation_head, self.embed or nn.Identity()):
            weights, norm_bias = split_norm_and_bias(m)
            head += weights
            head_norm_bias += norm_bias
        return {"backbone": backbone, "backbone_norm": backbone_norm, "head": head, "head_norm_bias": head_norm_bias}
