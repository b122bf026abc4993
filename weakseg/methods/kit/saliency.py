"""``make_saliency``: U²-Net-p saliency maps of the training images (bundled ONNX model; SBE §4.1 when no saliency
folder is given, and any method that needs saliency cues)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from weakseg.data import keys as K
from weakseg.data.dataset import SegDataset
from weakseg.methods.kit.stage import DATA_IMAGES, PerImageStage, StageContext
from weakseg.utils.io import save_label_png


@dataclass
class _SaliencyState:
    model: Any
    dataset: SegDataset


def _setup(ctx: StageContext, threads_path: str | None) -> _SaliencyState:
    from weakseg.data.saliency import SaliencyModel  # onnxruntime is needed only here
    from weakseg.methods.kit.stage import get_path

    dataset = ctx.dataset()
    threads = get_path(ctx.cfg, threads_path) if threads_path else None
    return _SaliencyState(SaliencyModel(num_threads=threads), dataset)


def make_saliency_image(state: _SaliencyState, sample_id: str, path: Path) -> None:
    """Write ``<id>.png``: H×W 8-bit single-channel saliency, round(255·S), S min-max normalised per image."""
    image = state.dataset.load_id(sample_id)[K.IMAGE]
    save_label_png(path, np.round(state.model.predict(image) * 255.0).astype(np.uint8))


def saliency_stage(threads_path: str | None = None) -> PerImageStage:
    """The ``make_saliency`` stage; ``threads_path`` names a config value with onnxruntime's CPU threads."""
    import functools

    return PerImageStage("make_saliency", lambda ctx: ctx.train_ids(), functools.partial(_setup,
                         threads_path=threads_path), make_saliency_image, config=DATA_IMAGES,
                         doc="<id>.png: 8-bit single-channel U²-Net-p saliency, round(255·S)")
