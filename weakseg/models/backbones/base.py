"""What every backbone publishes (style rule 6): ``feature_info`` and a forward that returns the stage maps.

A backbone's ``forward(x)`` takes N×3×H×W float images and returns four maps, one per stage, with
``feature_info[i].channels`` channels at stride ``feature_info[i].reduction`` (spatial size ⌈H/r⌉×⌈W/r⌉).
Nominal strides are 4, 8, 16, 32. With ``output_stride`` 16 the last stage keeps stride 16 and its convolutions are
dilated ×2; with 8 the last two stages keep stride 8 (dilations ×2 and ×4), as in torchvision's
``replace_stride_with_dilation`` and timm's ``output_stride``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn as nn

from weakseg.models.norm import freeze_bn

OUTPUT_STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class FeatureInfo:
    """One stage map of a backbone.

    Attributes:
        channels: number of channels of the map.
        reduction: its stride relative to the input (4, 8, 16 or 32; 8 or 16 for dilated stages).
        module: name of the module that produces it (a key prefix of the state dict, e.g. ``layer3``).
    """

    channels: int
    reduction: int
    module: str


def check_output_stride(output_stride: int) -> None:
    """Raise ValueError unless ``output_stride`` is 8, 16 or 32."""
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")


class StridePlan:
    """Turns nominal strides into (stride, dilation) pairs so that the running stride never exceeds a limit.

    Walk the network in order and call :meth:`step` with each unit's nominal stride. Once the running stride would
    pass ``output_stride`` the unit gets stride 1 and the dilation grows by the stride it gave up. The first
    convolution of such a unit keeps the previous dilation (``first_dilation``), later ones use the new one; this
    matches torchvision's ``_make_layer`` and timm's EfficientNet builder.

    Args:
        output_stride: largest allowed running stride (8, 16 or 32).
        dilated: when False a unit that gives up its stride is not dilated (IRN's ResNet-50 with strides
            (2, 2, 2, 1), spec §4.2).
    """

    def __init__(self, output_stride: int, dilated: bool = True):
        check_output_stride(output_stride)
        self.output_stride = output_stride
        self.dilated = dilated
        self.reduction = 1
        self.dilation = 1

    def step(self, stride: int) -> tuple[int, int, int]:
        """Advance by one unit of nominal ``stride``; returns ``(stride, first_dilation, dilation)`` to build it."""
        first_dilation = self.dilation
        if self.reduction * stride > self.output_stride:
            if self.dilated:
                self.dilation *= stride
            return 1, first_dilation, self.dilation
        self.reduction *= stride
        return stride, first_dilation, self.dilation


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` (e.g. ``features.3`` or ``bn1``) by ``module``."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


class Backbone(nn.Module):
    """Base class of the backbones.

    Subclasses build their stages in ``__init__``, append one :class:`FeatureInfo` per stage while doing so, and
    set ``stage_modules``: the module names of the stem (entry 0) and of each of the four stages (entries 1–4).

    Attributes:
        feature_info: one FeatureInfo per returned map, in order.
        stage_modules: five lists of module names: stem, stage 1, …, stage 4.
        pixel_mean: per-channel RGB mean, in [0, 1] units, that the pretrained weights expect.
        pixel_std: per-channel RGB standard deviation, in [0, 1] units.
        remap_checkpoint: the architecture's checkpoint filter (foreign key layout → this module's names).
    """

    pixel_mean: ClassVar[tuple[float, float, float]] = (0.485, 0.456, 0.406)
    pixel_std: ClassVar[tuple[float, float, float]] = (0.229, 0.224, 0.225)
    remap_checkpoint: ClassVar[Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]]

    def __init__(self) -> None:
        super().__init__()
        self.feature_info: list[FeatureInfo] = []
        self.stage_modules: list[list[str]] = []

    @property
    def channels(self) -> list[int]:
        """Channels of each returned map."""
        return [f.channels for f in self.feature_info]

    @property
    def reductions(self) -> list[int]:
        """Stride of each returned map."""
        return [f.reduction for f in self.feature_info]

    def freeze_stages(self, frozen_stages: int) -> None:
        """Freeze the stem and the first ``frozen_stages`` stages.

        Their parameters get ``requires_grad=False`` and their BatchNorms become FrozenBatchNorm2d, so running
        statistics stop moving without overriding ``train()`` (style rule 7). ``-1`` freezes nothing, ``0`` only
        the stem, ``4`` everything.

        Raises:
            ValueError: if ``frozen_stages`` is outside −1..4.
        """
        if not -1 <= frozen_stages <= len(self.stage_modules) - 1:
            raise ValueError(f"frozen_stages must be in -1..{len(self.stage_modules) - 1}, got {frozen_stages}")
        for names in self.stage_modules[: frozen_stages + 1]:
            for name in names:
                module = self.get_submodule(name)
                for p in module.parameters():
                    p.requires_grad_(False)
                frozen = freeze_bn(module)
                if frozen is not module:
                    set_submodule(self, name, frozen)

    def truncate(self, num_stages: int) -> None:
        """Keep the stem and the first ``num_stages`` stages; the later ones become ``nn.Identity``.

        ``forward`` still returns four maps; read map ``num_stages − 1``: the later ones are that map passed through
        what is left of the dropped stages (identities, and e.g. EfficientNet's head activation), and their
        ``feature_info`` entries repeat its. The dropped stages' parameters are gone (a network that reads an early
        map, e.g. a CAM classifier on stride-4 features, neither computes nor stores the rest). Call it after loading
        weights.

        Raises:
            ValueError: if ``num_stages`` is outside 1..4.
        """
        if not 1 <= num_stages <= len(self.stage_modules) - 1:
            raise ValueError(f"num_stages must be in 1..{len(self.stage_modules) - 1}, got {num_stages}")
        for names in self.stage_modules[num_stages + 1:]:
            for name in names:
                set_submodule(self, name, nn.Identity())
        kept = self.feature_info[num_stages - 1]
        self.feature_info[num_stages:] = [kept] * (len(self.feature_info) - num_stages)

