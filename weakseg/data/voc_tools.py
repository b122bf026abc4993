"""PASCAL VOC helpers: the train_aug id list and image-level labels (spec §1.1).

Image-level label files ("tags files") are JSON objects ``{"<id>": [class ids]}``: the sorted class indices (in the
dataset's class order, 0 = background) present in the image. Files written here always list background 0; readers
(``SegDataset(tags_source="file")``) set the background entry to 1 whether or not it is listed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from weakseg.data.meta import IGNORE_INDEX, VOC_META, DatasetMeta
from weakseg.data.scribble_xml import read_xml_root
from weakseg.utils.io import DataError, read_label, write_json_atomic, write_text_atomic

TRAINAUG_NAME = "ImageSets/Segmentation/train_aug.txt"


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Ids of a VOC list file (first token's stem per line; blank lines and ``#`` comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: list file not found")
    ids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        tok = line.split()[0]
        ids.append(Path(tok).stem if len(line.split()) > 1 else tok)
    return ids


def build_trainaug_list(voc_root: str | os.PathLike, aug_dir: str = "SegmentationClassAug",
                        val_list: str = "ImageSets/Segmentation/val.txt", out: str | None = TRAINAUG_NAME
                        ) -> list[str]:
    """Every ``<aug_dir>/*.png`` stem not in the val list, sorted (10,582 ids for the standard SBD + VOC set).

    Args:
        voc_root: the ``VOC2012`` folder; ``aug_dir``, ``val_list`` and ``out`` are relative to it (or absolute).
        out: list file to write atomically (one id per line); None writes nothing.
    """
    root = Path(voc_root)
    aug = Path(aug_dir) if Path(aug_dir).is_absolute() else root / aug_dir
    if not aug.is_dir():
        raise DataError(f"{aug}: augmented label folder not found")
    val_path = Path(val_list) if Path(val_list).is_absolute() else root / val_list
    val = set(read_id_list(val_path))
    ids = sorted(p.stem for p in aug.glob("*.png") if p.stem not in val)
    if not ids:
        raise DataError(f"{aug}: no label PNGs outside {val_path}")
    if out is not None:
        out_path = Path(out) if Path(out).is_absolute() else root / out
        write_text_atomic(out_path, "".join(f"{i}\n" for i in ids))
    return ids


def labels_from_xml(path: str | os.PathLike, classes: tuple[str, ...] = VOC_META.classes) -> list[int]:
    """Sorted foreground class indices named by ``<object><name>`` in a VOC detection XML (parts ignored).

    Unknown object names raise DataError naming the file, so that a class-list mismatch is never silent.
    """
    root = read_xml_root(path)
    index = {name: i for i, name in enumerate(classes)}
    found = set()
    for obj in root.findall("object"):
        name_el = obj.find("name")
        name = (name_el.text or "").strip() if name_el is not None else ""
        if name not in index:
            raise DataError(f"{path}: object name {name!r} is not one of the dataset classes")
        found.add(index[name])
    return sorted(found)


def labels_from_map(label: np.ndarray, num_classes: int, source: str = "<map>",
                    ignore_index: int = IGNORE_INDEX) -> list[int]:
    """Sorted class indices present in an H×W label or scribble map (ignore/not-annotated value excluded)."""
    vals = np.unique(np.asarray(label))
    vals = vals[vals != ignore_index]
    bad = vals[vals >= num_classes]
    if bad.size:
        raise DataError(f"{source}: values {bad.tolist()} are not valid class ids (< {num_classes}) or {ignore_index}")
    return [int(v) for v in vals]


def tags_vector(class_ids: Iterable[int], num_classes: int) -> np.ndarray:
    """C float32 multi-hot vector; background (index 0) is always 1 (spec §2.2)."""
    vec = np.zeros(num_classes, dtype=np.float32)
    for c in class_ids:
        if not 0 <= int(c) < num_classes:
            raise DataError(f"class id {c} outside 0..{num_classes - 1}")
        vec[int(c)] = 1.0
    vec[0] = 1.0
    return vec


def load_tags_file(path: str | os.PathLike, num_classes: int | None = None) -> dict[str, list[int]]:
    """Read a tags JSON ``{id: [class ids]}`` and check its structure (and the id range when ``num_classes``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read tags JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: tags JSON must be an object {{id: [class ids]}}")
    out: dict[str, list[int]] = {}
    for key, val in data.items():
        if not isinstance(val, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in val):
            raise DataError(f"{path}: entry {key!r} must be a list of integer class ids")
        if num_classes is not None and any(not 0 <= v < num_classes for v in val):
            raise DataError(f"{path}: entry {key!r} has class ids outside 0..{num_classes - 1}: {val}")
        out[str(key)] = sorted(set(val))
    return out


def build_image_labels(root: str | os.PathLike, ids: list[str], source: str, out: str | os.PathLike | None = None,
                       meta: DatasetMeta = VOC_META, xml_dir: str = "Annotations",
                       label_dir: str = "SegmentationClass", scribble_dir: str = "Scribbles",
                       ) -> tuple[dict[str, list[int]], list[str]]:
    """Image-level labels for ``ids`` from ``source`` = ``"xml"`` | ``"label"`` | ``"scribble"``.

    Each entry lists background 0 plus the foreground classes found (XML object names, classes present in the dense
    mask, or classes among scribbled pixels). Ids whose file is missing or invalid are skipped and reported.

    Returns:
        (labels {id: [class ids]}, problems). When ``out`` is given the JSON is written atomically.
    """
    root = Path(root)

    def folder(name: str) -> Path:
        return Path(name) if Path(name).is_absolute() else root / name

    labels: dict[str, list[int]] = {}
    problems: list[str] = []
    for sid in ids:
        try:
            if source == "xml":
                found = labels_from_xml(folder(xml_dir) / f"{sid}.xml", meta.classes)
            elif source in ("label", "scribble"):
                path = folder(label_dir if source == "label" else scribble_dir) / f"{sid}.png"
                found = labels_from_map(read_label(path), meta.num_classes, str(path), meta.ignore_index)
            else:
                raise ValueError(f"source must be 'xml', 'label' or 'scribble', got {source!r}")
        except DataError as exc:
            problems.append(str(exc))
            continue
        labels[sid] = sorted({0, *found})
    if out is not None:
        write_json_atomic(out, labels)
    return labels, problems
