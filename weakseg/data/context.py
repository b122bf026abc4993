"""PASCAL-Context 459-class LabelMaps → the 60-class protocol (spec §1.3).

``labels.txt`` lists the 459 classes and ``59_labels.txt`` the 59 evaluated ones, both as lines ``idx: name``. A pixel
whose 459-class name is among the 59 gets that class's 59-index (1..59); every other pixel becomes 0 (background).

The remap is a single table lookup ``lut[label_map]``. BLPSeg instead relabels in place for i = 0..459
("pixels equal to i ← m[i]"), which chains whenever m[i] > i (e.g. bag → 21 → later 21 → 0); that bug is not
reproduced.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from weakseg.data.meta import DatasetMeta, voc_palette
from weakseg.utils.io import DataError, save_label_png

NUM_CONTEXT_CLASSES = 60  # 59 + background
LUT_SIZE = 460            # 459 classes + 0 ("unlabelled" in the 459 space)

_LINE = re.compile(r"^\s*(\d+)\s*:\s*(.+?)\s*$")


def read_label_names(path: str | os.PathLike) -> dict[int, str]:
    """Parse a ``idx: name`` file → {idx: name}. Blank lines are skipped; anything else malformed raises DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: label list not found")
    names: dict[int, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if m is None:
            raise DataError(f"{path}:{n}: expected 'idx: name', got {line!r}")
        idx = int(m.group(1))
        if idx in names:
            raise DataError(f"{path}:{n}: index {idx} listed twice")
        names[idx] = m.group(2)
    if not names:
        raise DataError(f"{path}: no labels")
    return names


def build_lut(labels459: dict[int, str], labels59: dict[int, str]) -> np.ndarray:
    """uint8 LUT of size ≥ 460 mapping each 459-class id to its 59-index (1..59), 0 otherwise.

    Names are matched exactly (case-insensitive, surrounding spaces ignored). A 59-class name that does not occur in
    the 459 list raises DataError: it would otherwise silently never appear.
    """
    if sorted(labels59) != list(range(1, len(labels59) + 1)):
        raise DataError(f"59-class indices must be 1..{len(labels59)}, got {sorted(labels59)[:5]}...")
    by_name: dict[str, int] = {}
    for idx, name in labels459.items():
        by_name.setdefault(name.strip().lower(), idx)
    size = max(LUT_SIZE, max(labels459) + 1)
    lut = np.zeros(size, dtype=np.uint8)
    missing = []
    for idx59, name in labels59.items():
        key = name.strip().lower()
        if key not in by_name:
            missing.append(name)
            continue
        lut[by_name[key]] = idx59
    if missing:
        raise DataError(f"59-class names not found in the 459-class list: {missing}")
    lut[0] = 0
    return lut


def load_lut(labels_txt: str | os.PathLike, labels59_txt: str | os.PathLike) -> np.ndarray:
    """:func:`build_lut` from the two official text files."""
    return build_lut(read_label_names(labels_txt), read_label_names(labels59_txt))


def context_meta(labels59_txt: str | os.PathLike) -> DatasetMeta:
    """60-class DatasetMeta: ``background`` followed by the 59 names in index order."""
    names = read_label_names(labels59_txt)
    return DatasetMeta(("background",) + tuple(names[i] for i in sorted(names)), palette=voc_palette())


def remap(label_map: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """H×W integer 459-class LabelMap → H×W uint8 60-class map (one lookup; values > 59 become 0)."""
    label_map = np.asarray(label_map)
    if not np.issubdtype(label_map.dtype, np.integer):
        raise ValueError(f"LabelMap must be integer, got {label_map.dtype}")
    if label_map.size and (label_map.min() < 0 or label_map.max() >= len(lut)):
        raise ValueError(f"LabelMap values outside 0..{len(lut) - 1}: min {label_map.min()}, max {label_map.max()}")
    out = lut[label_map]
    out[out >= NUM_CONTEXT_CLASSES] = 0
    return out.astype(np.uint8)


def read_context_mat(path: str | os.PathLike) -> np.ndarray:
    """Read the ``LabelMap`` variable (H×W 459-class ids) of a PASCAL-Context ``.mat`` file."""
    import scipy.io

    path = Path(path)
    try:
        mat = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises several types (incl. NotImplementedError for v7.3 files)
        raise DataError(f"{path}: cannot read .mat file ({exc})") from exc
    if "LabelMap" not in mat:
        raise DataError(f"{path}: no LabelMap variable")
    lm = np.asarray(mat["LabelMap"])
    if lm.ndim != 2 or not np.issubdtype(lm.dtype, np.number):
        raise DataError(f"{path}: LabelMap must be a 2-D numeric array, got {lm.dtype} {lm.shape}")
    if np.issubdtype(lm.dtype, np.floating):
        if not np.all(np.isfinite(lm)) or np.any(lm != np.round(lm)):
            raise DataError(f"{path}: LabelMap has non-integer values")
    return lm.astype(np.int64)


def convert_context_folder(mat_dir: str | os.PathLike, labels_txt: str | os.PathLike,
                           labels59_txt: str | os.PathLike, out_dir: str | os.PathLike
                           ) -> tuple[int, int, list[str]]:
    """Convert every ``<mat_dir>/<id>.mat`` to a 60-class palette PNG ``<out_dir>/<id>.png`` (atomic writes).

    Returns:
        (number converted, number skipped, problems); unreadable files are skipped and named in ``problems``.
    """
    mat_dir, out_dir = Path(mat_dir), Path(out_dir)
    if not mat_dir.is_dir():
        raise DataError(f"{mat_dir}: .mat folder not found")
    lut = load_lut(labels_txt, labels59_txt)
    palette = voc_palette()
    n_ok, problems = 0, []
    for path in sorted(mat_dir.glob("*.mat")):
        try:
            out = remap(read_context_mat(path), lut)
        except (DataError, ValueError) as exc:
            problems.append(f"{path}: {exc}" if str(path) not in str(exc) else str(exc))
            continue
        save_label_png(out_dir / f"{path.stem}.png", out, palette)
        n_ok += 1
    return n_ok, len(problems), problems
