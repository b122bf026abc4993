"""Checkpoints: the unwrapped model state, optimiser, scaler, iteration, the random states of the process (torch
CPU/CUDA, numpy, python), the trainer's own state (running loss averages, best-snapshot tracker, skipped steps, log
position) and the resolved config, written atomically and loaded with ``weights_only=True`` (untrusted files cannot
execute code). A write that fails (full disk, read-only folder) raises naming the file and leaves the previous
checkpoints untouched."""

from __future__ import annotations

import io
import re
from pathlib import Path

import torch

from weakseg.engine.runtime import rng_state, set_rng_state
from weakseg.utils.io import write_bytes_atomic

_ITER_RE = re.compile(r"^iter_(\d+)\.pth$")


def save_checkpoint(path: str | Path, *, model_state: dict, optimizer=None, scaler=None, iteration: int,
                    config: dict, extra: dict | None = None, trainer_state: dict | None = None) -> None:
    state = {
        "model": model_state,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "iteration": int(iteration),
        "config": config,
        "rng": rng_state(),
        "trainer": trainer_state or {},
        "extra": extra or {},
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes_atomic(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint safely; raises FileNotFoundError / ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable weakseg checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{path}: not a weakseg checkpoint (no 'model' entry)")
    return ckpt


def restore_rng(ckpt: dict) -> None:
    """Put the process's random states back to those saved in ``ckpt``."""
    set_rng_state(ckpt.get("rng") or {})


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The periodic checkpoint with the highest iteration in ``ckpt_dir`` (None if there is none)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _ITER_RE.match(p.name))]
    return max(found)[1] if found else None


def prune_checkpoints(ckpt_dir: str | Path, keep: int) -> None:
    found = sorted((int(m.group(1)), p) for p in Path(ckpt_dir).iterdir() if (m := _ITER_RE.match(p.name)))
    for _, p in found[:-keep] if keep > 0 else []:
        p.unlink(missing_ok=True)
