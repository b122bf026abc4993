"""engine.amp / eval.amp: the CPU bf16 decision (native-bf16 detection and probe mocked both ways), explicit bf16
warnings, the CUDA-free error paths, and the real probe's side effects."""

from __future__ import annotations

import logging

import pytest
import torch

from weakseg.engine import amp

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    amp.reset_cache()
    yield
    amp.reset_cache()


@pytest.fixture
def records():
    """Records of the ``weakseg`` logger (it does not propagate to the root logger once set up)."""
    got: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            got.append(record)

    logger = logging.getLogger("weakseg")
    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield got
    logger.removeHandler(handler)
    logger.setLevel(level)


def mock_cpu(monkeypatch, native: bool, speedup: float | None):
    """Native bf16 or not; a probe measuring ``speedup`` (None: the probe must not run)."""
    monkeypatch.setattr(amp, "_detect_native", lambda: (native, "mocked flags"))

    def fake_block(size, repeats):
        if speedup is None:
            raise AssertionError("the probe ran")
        return amp.CpuBf16Probe(fp32_s=0.010, bf16_s=0.010 / speedup, size=size)

    monkeypatch.setattr(amp, "_time_block", fake_block)


def test_auto_is_fp32_without_native_bf16_and_skips_the_probe(monkeypatch, records):
    mock_cpu(monkeypatch, native=False, speedup=None)
    assert amp.autocast_dtype("auto", CPU) is None
    assert amp.autocast_dtype("auto", CPU) is None
    messages = [r.getMessage() for r in records]
    assert len(messages) == 1 and "fp32" in messages[0] and "no native bf16" in messages[0]


def test_auto_is_bf16_when_native_and_measured_faster(monkeypatch, records):
    mock_cpu(monkeypatch, native=True, speedup=2.0)
    assert amp.autocast_dtype("auto", CPU) is torch.bfloat16
    assert amp.autocast_dtype("auto", CPU) is torch.bfloat16  # cached, logged once
    assert [r.getMessage() for r in records] == [
        "amp auto on CPU → bf16: native on this CPU (mocked flags), probe: bf16 2.00× the speed of fp32"]


@pytest.mark.parametrize("speedup", [0.5, 1.05])  # slower, or faster by less than MIN_SPEEDUP
def test_auto_is_fp32_when_native_but_not_faster(monkeypatch, records, speedup):
    mock_cpu(monkeypatch, native=True, speedup=speedup)
    assert amp.autocast_dtype("auto", CPU) is None
    assert len(records) == 1 and "but not faster" in records[0].getMessage()


def test_probe_runs_once_per_process(monkeypatch):
    calls = []
    monkeypatch.setattr(amp, "_detect_native", lambda: (True, "mocked flags"))
    monkeypatch.setattr(amp, "_time_block", lambda size, repeats: calls.append(size) or amp.CpuBf16Probe(1, 1, size))
    for _ in range(3):
        amp.autocast_dtype("auto", CPU)
    assert calls == [16, 32]  # both sizes, once


def test_emulated_bf16_stops_the_probe_at_the_small_size(monkeypatch):
    mock_cpu(monkeypatch, native=True, speedup=0.05)
    assert amp.probe_cpu_bf16().size == 16


def test_explicit_bf16_warns_with_the_measured_slowdown(monkeypatch, records):
    mock_cpu(monkeypatch, native=False, speedup=1 / 12.5)
    assert amp.autocast_dtype("bf16", CPU) is torch.bfloat16  # kept: the user asked for it
    assert amp.autocast_dtype("bf16", CPU) is torch.bfloat16
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert "12.5× slower than fp32" in records[0].getMessage() and "emulated" in records[0].getMessage()


def test_explicit_bf16_is_silent_where_faster(monkeypatch, records):
    mock_cpu(monkeypatch, native=True, speedup=2.0)
    assert amp.autocast_dtype("bf16", CPU) is torch.bfloat16
    assert records == []


def test_none_fp16_and_bad_values(monkeypatch):
    mock_cpu(monkeypatch, native=True, speedup=None)
    assert amp.autocast_dtype("none", CPU) is None
    with pytest.raises(amp.AmpError, match="fp16 needs CUDA"):
        amp.autocast_dtype("fp16", CPU)
    with pytest.raises(amp.AmpError, match="got 'float16'"):
        amp.autocast_dtype("float16", CPU)


@pytest.mark.parametrize("text, native", [
    ("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f\n", False),  # the AVX2/AVX-512F-only EPYC
    ("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n", True),
    ("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n", True),
    ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", True),  # Arm
    ("processor\t: 0\nFeatures\t: fp asimd\n", False),
])
def test_native_detection_from_cpuinfo(tmp_path, monkeypatch, text, native):
    (tmp_path / "cpuinfo").write_text(text)
    monkeypatch.setattr(amp, "CPUINFO", tmp_path / "cpuinfo")
    got, evidence = amp.cpu_bf16_native()
    assert got is native and "cpuinfo" in evidence


def test_real_probe_is_positive_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    p = amp.probe_cpu_bf16(repeats=1)
    assert p.fp32_s > 0 and p.bf16_s > 0 and p.size in (16, 32)
    assert torch.equal(torch.get_rng_state(), state)
