"""U²-Net-p saliency model and the resumable saliency-folder writer (SBE ``Sal/`` maps, methods.md §4.1)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from weakseg.data import saliency as saliency_mod
from weakseg.data.saliency import INSTALL_HINT, SaliencyModel, compute_saliency_folder, find_u2netp
from weakseg.utils.io import read_label, read_rgb, save_image

HORSE = Path("/work/shared/data/weizmann-horse")


def test_missing_model_error_names_the_fix(monkeypatch):
    monkeypatch.setattr(saliency_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError) as info:
        find_u2netp()
    assert INSTALL_HINT in str(info.value)


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime not installed")
@pytest.mark.skipif(not (HORSE / "JPEGImages" / "horse002.jpg").is_file(), reason="weizmann-horse data missing")
def test_horse_is_salient():
    try:
        model = SaliencyModel(num_threads=1)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    image = read_rgb(HORSE / "JPEGImages" / "horse002.jpg")
    mask = read_label(HORSE / "SegmentationClass" / "horse002.png") > 0
    sal = model.predict(image)
    assert sal.shape == image.shape[:2] and sal.dtype == np.float32
    assert sal.min() >= 0.0 and sal.max() <= 1.0
    assert sal[mask].mean() > 0.7 and sal[~mask].mean() < 0.2


class CountingModel:
    """Stands in for SaliencyModel: a left-to-right ramp, counting calls."""

    def __init__(self):
        self.calls = 0

    def predict(self, image):
        self.calls += 1
        h, w = image.shape[:2]
        return np.tile(np.linspace(0.0, 1.0, w, dtype=np.float32), (h, 1))


def test_compute_saliency_folder_writes_pngs_and_resumes(tmp_path):
    for image_id in ("a", "b", "c"):
        save_image(tmp_path / "JPEGImages" / f"{image_id}.jpg", np.full((6, 11, 3), 90, dtype=np.uint8))
    model = CountingModel()
    assert compute_saliency_folder(tmp_path, ["a", "b"], "JPEGImages", "Sal", model=model) == 2
    png = read_label(tmp_path / "Sal" / "a.png")
    assert png.shape == (6, 11) and png[0].tolist() == np.round(255 * np.linspace(0, 1, 11, dtype=np.float32)).tolist()
    # resume: existing outputs are skipped, only "c" is computed
    assert compute_saliency_folder(tmp_path, ["a", "b", "c"], "JPEGImages", "Sal", model=model) == 1
    assert model.calls == 3
    assert sorted(p.name for p in (tmp_path / "Sal").iterdir()) == ["a.png", "b.png", "c.png"]  # no temp files
