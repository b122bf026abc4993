"""Mixed precision: which autocast dtype ``engine.amp`` means on a device."""

from __future__ import annotations

import contextlib

import torch


class AmpError(ValueError):
    pass


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``engine.amp`` on ``device`` (None = full precision).

    ``auto`` is bf16 on CPU (native AVX512-BF16 makes it ~2× faster than fp32 here) and on GPUs that support it,
    fp16 (with a GradScaler) on older GPUs.
    """
    if amp == "none":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise AmpError("engine.amp = fp16 needs CUDA (use bf16 on CPU)")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if amp != "auto":
        raise AmpError(f"engine.amp must be auto, bf16, fp16 or none, got {amp!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
