"""What every method provides to the engine.

A method is an ``nn.Module`` that owns its network(s) and losses, built from its config, and exposes:

* ``training_step(batch, step) -> dict``: named losses (keys starting with ``loss_``, summed by the engine for
  backward) and logged-only metrics. ``forward`` calls it, so the engine can wrap the method in DDP.
* ``predict(images) -> N×C×H×W`` float logits at the input resolution, used by evaluation and prediction.
* ``param_groups() -> {name: [params]}``: named parameter groups for per-group LR / weight-decay multipliers.
* ``build_model(model_cfg, num_classes) -> nn.Module`` (a hook): the network ``self.model``; the default is
  ``build_segmentor`` (backbone + head); methods with their own network (BLPSeg's annotation branch, two-branch
  models) override it and keep the rest of the base class.
* ``stages(cfg) -> list`` (a classmethod): the stages of a multi-stage method for ``weakseg run`` (stage kit,
  weakseg/methods/kit); empty for single-stage methods.

A method never creates optimisers, DataLoaders, DDP wrappers, progress bars or checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from weakseg.models import build_segmentor


@dataclass
class MethodBaseConfig:
    name: str = "full"  # method name


class Method(nn.Module):
    """Base class; subclasses set ``Config``, ``supervision`` and implement ``training_step``."""

    Config: ClassVar[type] = MethodBaseConfig
    #: what the training dataset loads: full | scribble | tags | pseudo
    supervision: ClassVar[str] = "full"
    #: DDP must look for unused parameters (a phase that leaves a head without gradient)
    find_unused_parameters: ClassVar[bool] = False

    def __init__(self, cfg, model_cfg, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.model = self.build_model(model_cfg, num_classes)

    def build_model(self, model_cfg, num_classes: int) -> nn.Module:
        """The method's network from the ``model`` section (``self.cfg`` is set): backbone + head by default."""
        return build_segmentor(model_cfg.backbone, model_cfg.head, num_classes, pretrained=model_cfg.pretrained,
                               output_stride=model_cfg.output_stride, norm=model_cfg.norm,
                               head_kwargs=dict(model_cfg.head_kwargs),
                               backbone_options=dict(getattr(model_cfg, "backbone_options", {}) or {}))

    @classmethod
    def stages(cls, cfg) -> list:
        """The stages ``weakseg run`` executes (multi-stage methods); single-stage methods have none."""
        return []

    def forward(self, batch: dict, step: int) -> dict:
        return self.training_step(batch, step)

    def training_step(self, batch: dict, step: int) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """N×3×H×W normalised images → N×C×H×W logits at the input resolution."""
        return upsample_to(self.model(images)["seg"], images.shape[-2:])

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return self.model.param_groups()

    def export_module(self) -> nn.Module:
        """The network used at inference (for ONNX export): maps images to full-resolution logits."""
        return _PredictWrapper(self)


class _PredictWrapper(nn.Module):
    def __init__(self, method: Method):
        super().__init__()
        self.method = method

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.method.predict(images)


def upsample_to(logits: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of N×C×h×w logits to ``size`` (align_corners=False); a no-op when already that size."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
