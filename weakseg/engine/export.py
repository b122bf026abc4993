"""``weakseg export --onnx``: the inference network of a trained method as an ONNX graph with dynamic batch and
image size, checked against PyTorch with onnxruntime.

Input ``image`` N×3×H×W float32 (normalised with the run's mean/std); output ``logits`` N×C×H×W float32.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import torch

from weakseg.utils.io import write_bytes_atomic

log = logging.getLogger("weakseg")


def export_onnx(method, path: Path, *, sample_size: tuple[int, int] = (96, 128), opset: int = 17,
                dynamic: bool = True) -> Path:
    """Export ``method.export_module()`` (eval mode, float32, CPU) to ``path`` (written atomically)."""
    module = method.export_module().eval().float().cpu()
    x = torch.randn(1, 3, *sample_size)
    buf = io.BytesIO()
    axes = {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}}
    with torch.no_grad():
        torch.onnx.export(module, (x,), buf, input_names=["image"], output_names=["logits"], opset_version=opset,
                          dynamic_axes=axes if dynamic else None, dynamo=False)
    write_bytes_atomic(path, buf.getvalue())
    return Path(path)


def check_onnx(method, path: Path, sizes=((1, 96, 128), (2, 64, 80))) -> float:
    """Max |ONNX − PyTorch| over random inputs of the given (N, H, W) sizes; raises if onnxruntime is missing."""
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - dev extra installs it
        raise ImportError("checking an ONNX export needs onnxruntime: pip install onnxruntime") from exc
    module = method.export_module().eval().float().cpu()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    g = torch.Generator().manual_seed(0)
    for n, h, w in sizes:
        x = torch.randn(n, 3, h, w, generator=g)
        with torch.no_grad():
            ref = module(x).numpy()
        (out,) = session.run(["logits"], {"image": x.numpy()})
        if out.shape != ref.shape:
            raise AssertionError(f"ONNX output shape {out.shape} != PyTorch {ref.shape} for input {(n, 3, h, w)}")
        worst = max(worst, float(np.abs(out - ref).max()))
    return worst
