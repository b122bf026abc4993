"""Learning-rate schedules as pure functions of the iteration (resuming restores only the iteration)."""

from __future__ import annotations

import math


def lr_factor(step: int, *, name: str, iters: int, power: float = 0.9, warmup_iters: int = 0,
              warmup_ratio: float = 0.1, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the base LR at iteration ``step`` (0-based).

    * poly: (1 − step / (iters + 1)) ** power (BLPSeg/DeepLab form, never exactly 0 at the last step);
    * cosine: min_lr_ratio + (1 − min_lr_ratio) · ½(1 + cos(π · t)), t = progress after warm-up;
    * warm-up (both): linear from ``warmup_ratio`` to the schedule's value over ``warmup_iters``.
    """
    if name == "poly":
        base = (1.0 - min(step, iters) / (iters + 1)) ** power
    elif name == "cosine":
        span = max(1, iters - warmup_iters)
        t = min(max(step - warmup_iters, 0), span) / span
        base = min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
    else:
        raise ValueError(f"unknown schedule {name!r} (poly | cosine)")
    if warmup_iters > 0 and step < warmup_iters:
        alpha = step / warmup_iters
        return base * (warmup_ratio + (1.0 - warmup_ratio) * alpha)
    return base
