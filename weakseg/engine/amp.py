"""Mixed precision: which autocast dtype ``engine.amp`` / ``eval.amp`` means on a device.

On CUDA, ``auto`` is bf16 where the GPU supports it and fp16 (with a GradScaler) otherwise. On CPU, bf16 is only a
gain where the CPU computes it natively (x86 AVX512-BF16 or AMX-BF16, Arm BF16): elsewhere PyTorch emulates it and a
training step runs an order of magnitude *slower* than fp32 (measured: 0.29 vs 134 GFLOP/s on an AVX2-only EPYC).
So ``auto`` on CPU is bf16 only when both

* the CPU reports native bf16 (``/proc/cpuinfo`` flags on Linux; PyTorch's own CPU check elsewhere), and
* a one-time probe — a small conv → BatchNorm → ReLU → depthwise conv → 1×1 conv block and a matmul, forward and
  backward under autocast, timed against fp32 — finds bf16 at least :data:`MIN_SPEEDUP` × faster,

and fp32 otherwise. The probe takes a fraction of a second (its bf16 part is first timed on a tiny size, so an
emulating CPU is recognised after a few tens of milliseconds), draws its data from a private generator (the global
random state, hence seeded runs, are untouched) and is cached for the process. The choice is logged once with the
reason. An explicit ``bf16`` on a CPU where the probe finds it slower is kept, with a warning giving the measured
slowdown.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger("weakseg")

#: bf16 must beat fp32 by this factor in the probe for ``auto`` to choose it (autocast's casts, and the ops that
#: stay in fp32, make a real network gain less than the probe's convolutions and matmul)
MIN_SPEEDUP = 1.1
#: flags of /proc/cpuinfo that mean native bf16 arithmetic (x86: AVX512-BF16 dot products, AMX tiles; Arm: BF16)
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
CPUINFO = Path("/proc/cpuinfo")


class AmpError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class CpuBf16Probe:
    """Timings of the probe: seconds per forward + backward in fp32 and under bf16 autocast, at ``size``²."""

    fp32_s: float
    bf16_s: float
    size: int

    @property
    def speedup(self) -> float:
        """fp32 time / bf16 time (> 1: bf16 is faster)."""
        return self.fp32_s / self.bf16_s


_native_cache: tuple[bool, str] | None = None
_probe_cache: CpuBf16Probe | None = None
_logged: set[str] = set()


def cpu_bf16_native() -> tuple[bool, str]:
    """(whether this CPU computes bf16 natively, the evidence), cached for the process."""
    global _native_cache
    if _native_cache is None:
        _native_cache = _detect_native()
    return _native_cache


def _detect_native() -> tuple[bool, str]:
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        text = None
    if text:
        flags: set[str] = set()
        for line in text.splitlines():  # x86 "flags : …", Arm "Features : …"
            key, _, value = line.partition(":")
            if key.strip().lower() in ("flags", "features"):
                flags.update(value.split())
        found = [f for f in BF16_FLAGS if f in flags]
        if found:
            return True, f"{', '.join(found)} in {CPUINFO}"
        if flags:
            return False, f"no {'/'.join(BF16_FLAGS)} flag in {CPUINFO}"
    # no /proc/cpuinfo (macOS, Windows): PyTorch's own x86 checks, where this build has them
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(c is not None and c() for c in checks):
        return True, "PyTorch reports AVX512-BF16/AMX"
    return False, "no native bf16 reported by the CPU"


def probe_cpu_bf16(repeats: int = 3) -> CpuBf16Probe:
    """Time fp32 against bf16 autocast on this CPU (current thread count), cached for the process.

    A 16² and then, unless bf16 is already ≥ 4× slower there (emulated), a 32² input: batch 4, 32 → 64 channels, 3×3 conv,
    BatchNorm, ReLU, 3×3 depthwise conv, 1×1 conv to 32, plus a 128×128 matmul; forward and backward, channels_last.
    Each size: one warm-up run per precision (oneDNN builds its kernels on the first call), then ``repeats``
    interleaved runs; the minimum per precision counts.
    """
    global _probe_cache
    if _probe_cache is None:
        result = None
        for size in (16, 32):
            result = _time_block(size, repeats)
            # emulated bf16 is 10–500× slower: decided, and a larger size would only cost time (native bf16 can lose
            # at 16², where per-op overheads dominate, hence the low bar)
            if result.speedup < 0.25:
                break
        _probe_cache = result
    return _probe_cache


def _time_block(size: int, repeats: int) -> CpuBf16Probe:
    g = torch.Generator().manual_seed(0)  # private: the probe leaves the global random state alone

    def param(*shape):
        return (torch.randn(*shape, generator=g) / math.sqrt(math.prod(shape[1:]))).requires_grad_()

    w1, w2, w3, mat = param(64, 32, 3, 3), param(64, 1, 3, 3), param(32, 64, 1, 1), param(128, 128)
    bn_w, bn_b = torch.ones(64, requires_grad=True), torch.zeros(64, requires_grad=True)
    x = torch.randn(4, 32, size, size, generator=g).contiguous(memory_format=torch.channels_last)

    def run(dtype: torch.dtype | None) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            y = F.relu(F.batch_norm(F.conv2d(x, w1, padding=1), None, None, bn_w, bn_b, training=True))
            y = F.conv2d(F.conv2d(y, w2, padding=1, groups=64), w3)
            loss = y.float().square().mean() + (mat @ mat).float().square().mean()
        loss.backward()
        return time.perf_counter() - t0

    run(None), run(torch.bfloat16)
    fp32, bf16 = math.inf, math.inf
    for _ in range(repeats):
        fp32 = min(fp32, run(None))
        bf16 = min(bf16, run(torch.bfloat16))
    return CpuBf16Probe(fp32, bf16, size)


def cpu_auto_dtype() -> tuple[torch.dtype | None, str]:
    """``auto``'s choice on this CPU and the reason (see the module docstring)."""
    native, evidence = cpu_bf16_native()
    if not native:
        return None, f"fp32: this CPU has no native bf16 ({evidence})"
    p = probe_cpu_bf16()
    measured = f"probe: bf16 {p.speedup:.2f}× the speed of fp32"
    if p.speedup >= MIN_SPEEDUP:
        return torch.bfloat16, f"bf16: native on this CPU ({evidence}), {measured}"
    return None, f"fp32: bf16 is native on this CPU ({evidence}) but not faster ({measured}, need {MIN_SPEEDUP}×)"


def _log_once(key: str, level: int, message: str) -> None:
    if key not in _logged:
        _logged.add(key)
        log.log(level, message)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``engine.amp`` / ``eval.amp`` on ``device`` (None = full precision).

    ``auto``: on CUDA bf16 where supported, else fp16 (with a GradScaler); on CPU bf16 only where native and
    measured faster, else fp32 (logged once). ``bf16`` on a CPU where the probe finds it slower warns once.
    """
    if amp == "none":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise AmpError("engine.amp = fp16 needs CUDA (use bf16 or auto on CPU)")
        return torch.float16
    if amp not in ("auto", "bf16"):
        raise AmpError(f"engine.amp must be auto, bf16, fp16 or none, got {amp!r}")
    if device.type == "cuda":
        if amp == "bf16":
            return torch.bfloat16
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type != "cpu":
        return torch.bfloat16
    if amp == "auto":
        dtype, reason = cpu_auto_dtype()
        _log_once("auto", logging.INFO, f"amp auto on CPU → {reason}")
        return dtype
    native, evidence = cpu_bf16_native()
    p = probe_cpu_bf16()
    if p.speedup < 1.0:
        _log_once("bf16", logging.WARNING,
                  f"amp = bf16 on this CPU is {1 / p.speedup:.1f}× slower than fp32 (probe at {p.size}²: "
                  f"{1e3 * p.bf16_s:.1f} ms vs {1e3 * p.fp32_s:.1f} ms; "
                  f"{'native' if native else 'emulated'} bf16: {evidence}); amp: auto or none runs in fp32")
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def reset_cache() -> None:
    """Forget the cached detection, probe and once-only log keys (tests; a process that changed its threads)."""
    global _native_cache, _probe_cache
    _native_cache, _probe_cache = None, None
    _logged.clear()
