"""The attention-pooling CAM network of BES/SBE stage 1 (IRN's ``resnet50_cam``, methods.md §4.2).

Backbone (output stride 16, BatchNorm with fixed statistics, stem and first stages frozen) + a 1×1 classifier over
the last feature map (:class:`~weakseg.models.heads.cam.AttentionPoolClassifier`). In the reference the backbone is a
torchvision ResNet-50 with strides (2, 2, 2, 1) and no dilation; conv1/bn1 have ``requires_grad=False`` and the
output of layer2 is detached, so only layer3, layer4 and the classifier learn. Here the same effect comes from
``frozen_stages=2`` (stem, stage 1 and stage 2 get ``requires_grad=False`` and frozen BN: autograd never enters
them) and ``norm="fixed_bn"`` (every other BN normalises with its running statistics, γ/β trainable).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from weakseg.models.backbones import build_backbone
from weakseg.models.heads.cam import AttentionPoolClassifier
from weakseg.models.segmentor import split_norm_and_bias


class CAMNet(nn.Module):
    """Backbone + attention-pooling classifier; K foreground classes (background has no channel).

    Args:
        backbone: a key of :data:`~weakseg.models.BACKBONES` (``resnet50`` in the paper).
        num_classes: K, foreground classes (20 on VOC).
        pretrained: backbone weights: None, ``"imagenet"`` (bundled files) or a checkpoint path.
        output_stride: 16 in the reference.
        norm: backbone norm (``fixed_bn``: running statistics always, γ/β trainable, as IRN's FixedBatchNorm).
        frozen_stages: stem + this many stages get no gradient (2: conv1/bn1, layer1, layer2).
        dilated: dilate the stages that give up their stride (False: IRN's ResNet-50 with strides (2, 2, 2, 1)).
        attention_k: temperature k of the attention pooling (1e-3).
        feature_stage: the backbone stage (1-4) whose map the classifier reads; 4 (the last) in the reference.
            An earlier stage gives finer CAMs with a smaller receptive field (stage 1: stride 4): on small images
            the last map of a deep backbone sees the whole image at every position, so its CAMs cannot localise.
            The stages past it are dropped (:meth:`~weakseg.models.backbones.base.Backbone.truncate`).

    Attributes:
        stride: reduction of the CAMs w.r.t. the input (the classified backbone map's).
    """

    def __init__(self, backbone: str, num_classes: int, *, pretrained: str | Path | None = None,
                 output_stride: int = 16, norm: str = "fixed_bn", frozen_stages: int = 2, dilated: bool = False,
                 attention_k: float = 1e-3, feature_stage: int = 4):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes (foreground) must be ≥ 1, got {num_classes}")
        self.backbone = build_backbone(backbone, pretrained=pretrained, output_stride=output_stride, norm=norm,
                                       frozen_stages=frozen_stages, dilated=dilated)
        if not 1 <= feature_stage <= 4:
            raise ValueError(f"feature_stage must be in 1..4, got {feature_stage}")
        if feature_stage != 4:
            self.backbone.truncate(feature_stage)
        self.feature_index = feature_stage - 1
        last = self.backbone.feature_info[self.feature_index]
        self.classifier = AttentionPoolClassifier(last.channels, num_classes, k=attention_k)
        self.stride: int = last.reduction

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """N×3×H×W normalised images → ``{"logits": N×K float classification logits (attention pooling),
        "cam": N×K×h×w non-negative CAMs, h = ⌈H/stride⌉}`` (both keys always present)."""
        feat = self.backbone(x)[self.feature_index]
        return {"logits": self.classifier(feat), "cam": self.classifier.cam(feat)}

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """N×3×H×W normalised images → N×K×h×w CAMs = ReLU(W·x), without attention (inference, §4.2)."""
        return self.classifier.cam(self.backbone(x)[self.feature_index])

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """``backbone`` (trainable conv weights), ``backbone_norm`` (trainable BN γ/β and biases) and
        ``classifier`` (10× LR in the reference); frozen parameters are left out."""
        backbone, backbone_norm = split_norm_and_bias(self.backbone)
        return {"backbone": backbone, "backbone_norm": backbone_norm,
                "classifier": [p for p in self.classifier.parameters() if p.requires_grad]}
