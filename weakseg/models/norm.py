"""Normalisation layers chosen by name (style rule 7).

``make_norm(name, channels)`` knows five names:

- ``bn``: ``nn.BatchNorm2d``.
- ``syncbn``: ``nn.SyncBatchNorm``. SyncBN only synchronises on CUDA under an initialised process group; on CPU
  with gloo its training forward raises. The engine therefore calls :func:`convert_syncbn` once the device is known:
  it turns BN into SyncBN on CUDA + torch.distributed and SyncBN back into BN everywhere else (CPU, single process).
- ``frozen_bn``: :class:`FrozenBatchNorm2d`, torchvision/detectron2 style: affine and statistics are buffers, nothing
  trains, running statistics are always used (IRN's "fixed BN" with frozen γ/β).
- ``fixed_bn``: :class:`FixedStatsBatchNorm2d`, a BatchNorm2d that always normalises with its running statistics
  but keeps γ/β trainable (IRN's ``FixedBatchNorm`` in the CAM/boundary nets of spec §4.2, WebCoseg's
  ``use_global_stats=True`` of §5.2).
- ``gn``: ``nn.GroupNorm`` with 32 groups, or the largest divisor of ``channels`` below 32 for narrow layers.

All five share BatchNorm2d's state-dict keys except GroupNorm (which has no running statistics), so a BN
checkpoint loads strictly into bn / syncbn / frozen_bn / fixed_bn models.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

NORM_NAMES = ("bn", "syncbn", "frozen_bn", "fixed_bn", "gn")

# Module types whose parameters count as "norm" parameters in parameter groups.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters; nothing in it trains.

    ``weight``, ``bias``, ``running_mean`` and ``running_var`` are buffers with BatchNorm2d's names, so a BN state
    dict loads into it (its ``num_batches_tracked`` entry is dropped) and its own state dict loads back into BN.
    Forward is ``(x − mean) / sqrt(var + eps) · weight + bias`` in every mode, computed as one per-channel scale and
    shift in the input's dtype (autocast / channels-last friendly, exports to ONNX as Mul + Add).

    Args:
        num_features: number of channels C.
        eps: added to the variance, as in BatchNorm2d.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # BatchNorm checkpoints carry a step counter that a frozen layer has no use for.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise N×C×H×W ``x`` with the stored statistics; returns the same shape and dtype."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + shift.reshape(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class FixedStatsBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that always uses (and never updates) its running statistics; γ and β stay trainable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise N×C×H×W ``x`` with the running statistics, in train and eval mode alike."""
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def gn_groups(channels: int, max_groups: int = 32) -> int:
    """Largest divisor of ``channels`` that is ≤ ``max_groups`` (32 for the usual widths, fewer for narrow ones)."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def make_norm(name: str, channels: int, *, eps: float = 1e-5, momentum: float = 0.1) -> nn.Module:
    """Build a 2-D normalisation layer by name.

    Args:
        name: one of ``bn``, ``syncbn``, ``frozen_bn``, ``fixed_bn``, ``gn``.
        channels: number of channels C.
        eps: variance epsilon (EfficientNet-Lite uses 1e-3; GroupNorm uses it too).
        momentum: running-statistics momentum in PyTorch's convention (ignored by frozen_bn and gn).

    Returns:
        The layer, weight 1 and bias 0.

    Raises:
        ValueError: for an unknown name.
    """
    if name == "bn":
        return nn.BatchNorm2d(channels, eps=eps, momentum=momentum)
    if name == "syncbn":
        return nn.SyncBatchNorm(channels, eps=eps, momentum=momentum)
    if name == "frozen_bn":
        return FrozenBatchNorm2d(channels, eps=eps)
    if name == "fixed_bn":
        return FixedStatsBatchNorm2d(channels, eps=eps, momentum=momentum)
    if name == "gn":
        return nn.GroupNorm(gn_groups(channels), channels, eps=eps)
    raise ValueError(f"unknown norm {name!r}; expected one of {', '.join(NORM_NAMES)}")


def _convert(module: nn.Module, make) -> nn.Module:
    """Replace every module ``m`` for which ``make(m)`` returns a module, recursively; returns the (new) root."""
    new = make(module)
    if new is not None:
        return new
    for child_name, child in module.named_children():
        new_child = _convert(child, make)
        if new_child is not child:
            setattr(module, child_name, new_child)
    return module


def _copy_bn_state(src: nn.Module, dst: nn.Module) -> nn.Module:
    with torch.no_grad():
        for key in ("weight", "bias", "running_mean", "running_var"):
            s, d = getattr(src, key, None), getattr(dst, key, None)
            if s is not None and d is not None:
                d.copy_(s)
        tracked_src, tracked_dst = getattr(src, "num_batches_tracked", None), getattr(dst, "num_batches_tracked", None)
        if tracked_src is not None and tracked_dst is not None:
            tracked_dst.copy_(tracked_src)
    if isinstance(dst, nn.modules.batchnorm._BatchNorm) and src.weight is not None:
        dst.weight.requires_grad_(src.weight.requires_grad)
        dst.bias.requires_grad_(src.bias.requires_grad)
    return dst.to(device=src.running_mean.device, dtype=src.running_mean.dtype)


def freeze_bn(module: nn.Module) -> nn.Module:
    """Turn every BatchNorm2d / SyncBatchNorm / FixedStatsBatchNorm2d in ``module`` into a FrozenBatchNorm2d.

    Statistics and affine values are copied. Children are replaced in place; the root is returned (it is a new
    object when ``module`` itself is a BN layer).
    """

    def make(m: nn.Module) -> nn.Module | None:
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine and m.track_running_stats:
            return _copy_bn_state(m, FrozenBatchNorm2d(m.num_features, eps=m.eps))
        return None

    return _convert(module, make)


def revert_syncbn(module: nn.Module) -> nn.Module:
    """Turn every SyncBatchNorm in ``module`` into a BatchNorm2d with the same state; returns the root."""

    def make(m: nn.Module) -> nn.Module | None:
        if isinstance(m, nn.SyncBatchNorm):
            bn = nn.BatchNorm2d(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                                track_running_stats=m.track_running_stats)
            bn.train(m.training)
            return _copy_bn_state(m, bn)
        return None

    return _convert(module, make)


def convert_syncbn(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Make the model's BatchNorms fit the device: SyncBN under CUDA DDP, plain BN otherwise.

    On a CUDA device with an initialised process group every BatchNorm2d becomes a SyncBatchNorm (what ``syncbn``
    asks for). Anywhere else every SyncBatchNorm becomes a BatchNorm2d, because SyncBN's training forward raises on
    CPU under a process group. Frozen and fixed-statistics BN are never touched (they do not synchronise anything).

    Args:
        model: the model; children are replaced in place.
        device: the device the model will run on.

    Returns:
        The model (the same object unless the root itself was a BN layer).
    """
    device = torch.device(device)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if device.type == "cuda" and distributed:

        def make(m: nn.Module) -> nn.Module | None:
            if type(m) is nn.BatchNorm2d:
                return nn.SyncBatchNorm.convert_sync_batchnorm(m)
            return None

        return _convert(model, make)
    return revert_syncbn(model)
