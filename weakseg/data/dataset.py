"""Segmentation datasets in VOC layout that load only the supervision they are asked for (style rule 15).

A sample (before transforms) is a dict with:

* ``image``: H×W×3 uint8 RGB; ``id``: str; ``orig_size``: (H, W);
* ``supervision="full"``: ``label`` H×W uint8 class ids, 255 = ignore;
* ``supervision="scribble"``: ``scribble`` H×W uint8 class ids on strokes, 255 = not annotated, plus ``tags``;
* ``supervision="tags"``: ``tags`` only — C float32 multi-hot, background (index 0) always 1;
* ``supervision="pseudo"``: ``pseudo`` H×W uint8 pseudo-mask, 255 = ignore, plus ``tags``;
* ``supervision="scribble_pseudo"``: ``scribble`` and ``pseudo`` (CDSP), plus ``tags``;
* ``supervision="none"``: image only (inference);
* ``with_label=True`` additionally loads the dense ``label`` (evaluation); otherwise dense ground truth is never read
  for weak supervision;
* ``saliency_dir``: ``saliency`` H×W float32 in [0, 1] (8-bit PNG / 255);
* ``extra_maps``: {key: folder} of ``<id>.png`` H×W uint8 maps (e.g. ``boundary``, ``distance``); the key must be a
  spatial key of :data:`weakseg.data.keys.POLICY`. Three-channel PNGs with identical channels (CDSP distance maps)
  are read as one channel.

Tags come from ``tags_source``: ``"scribble"`` (classes among scribbled pixels, the default for scribble
supervision, spec §2.2), ``"label"`` (classes in the dense mask, the default otherwise; the mask is read only to
derive the tags and is not returned), ``"xml"`` (VOC ``<xml_dir>/<id>.xml`` object names), ``"file"`` (a JSON
``{"<id>": [class ids]}`` given by ``tags_file``, as written by :func:`weakseg.data.voc_tools.build_image_labels`) or
``"pseudo"`` (classes present in ``<tags_dir>/<id>.png``, e.g. a previous stage's pseudo-masks).

Data checks (each error names the file): missing/unreadable files, a map whose size differs from the image, and
class ids ≥ num_classes other than 255. They run lazily in ``__getitem__``; :meth:`SegDataset.scan` runs them on
every sample. With ``lenient=True`` the constructor scans and drops bad samples, keeping ``problems`` and logging one
line (their count and the first few).
"""

from __future__ import annotations

import logging
import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from weakseg.data import keys as K
from weakseg.data.meta import VOC_META, DatasetMeta, voc_palette
from weakseg.data.voc_tools import labels_from_map, labels_from_xml, load_tags_file, tags_vector
from weakseg.utils.io import DataError, read_label, read_rgb

log = logging.getLogger("weakseg")

SUPERVISIONS = ("full", "scribble", "tags", "pseudo", "scribble_pseudo", "none")
TAGS_SOURCES = ("label", "scribble", "xml", "file", "pseudo")


def meta_from_root(root: str | os.PathLike) -> DatasetMeta:
    """DatasetMeta from ``<root>/classes.txt`` (one class name per line, background first); VOC when absent."""
    path = Path(root) / "classes.txt"
    if not path.is_file():
        return VOC_META
    return read_classes_file(path)


def read_classes_file(path: Path) -> DatasetMeta:
    """DatasetMeta from a class list (one name per line, background first): at least two classes, no duplicates,
    at most 255; errors name the file."""
    names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if len(names) < 2:
        raise DataError(f"{path}: needs at least two classes (background first), got {len(names)}")
    if len(set(names)) != len(names):
        raise DataError(f"{path}: duplicate class names")
    if len(names) > 255:
        raise DataError(f"{path}: at most 255 classes fit a uint8 label map with 255 = ignore, got {len(names)}")
    return DatasetMeta(names, palette=voc_palette())


def _check_id(sid: str, list_file: Path, lineno: int) -> None:
    p = Path(sid)
    if not sid or "\x00" in sid or "\\" in sid or p.is_absolute() or sid.startswith("/") or ".." in p.parts:
        raise DataError(f"{list_file}:{lineno}: invalid id {sid!r} (absolute paths and '..' are not allowed)")


def hashed_subset(ids: list[str], n: int) -> list[str]:
    """The ``n`` ids with the smallest SHA-1 of their name, in list order: a split that depends on the ids alone
    (not on list order, seed or machine), and grows monotonically with ``n``."""
    chosen = set(sorted(ids, key=lambda s: hashlib.sha1(s.encode("utf-8")).hexdigest())[:n])
    return [i for i in ids if i in chosen]


def read_list_file(list_file: Path) -> list[str]:
    """Ids of a list file: one id per line, or ``image_path label_path`` lines whose first token's stem is the id."""
    if not list_file.is_file():
        raise DataError(f"{list_file}: list file not found")
    ids = []
    for lineno, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        toks = line.split()
        if len(toks) > 2:
            raise DataError(f"{list_file}:{lineno}: expected 'id' or 'image_path label_path', got {line!r}")
        sid = Path(toks[0]).stem if len(toks) == 2 else toks[0]
        _check_id(sid, list_file, lineno)
        ids.append(sid)
    if not ids:
        raise DataError(f"{list_file}: list file is empty")
    return ids


def _read_map(path: Path) -> np.ndarray:
    """Single-channel PNG as H×W uint8; RGB files with three identical channels are accepted (CDSP maps)."""
    try:
        with Image.open(path) as img:
            mode = img.mode
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    if mode not in ("RGB", "RGBA"):
        return read_label(path)
    rgb = read_rgb(path)
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        raise DataError(f"{path}: expected a single-channel map, got an RGB image with differing channels")
    return np.ascontiguousarray(rgb[..., 0])


class SegDataset(torch.utils.data.Dataset):
    """VOC-layout dataset; see the module docstring for the sample keys.

    Args:
        root: dataset root (e.g. ``VOCdevkit/VOC2012``). Folder arguments are relative to it unless absolute.
        list_file: id list, relative to ``root`` or absolute.
        meta: class metadata (see :func:`meta_from_root`).
        supervision: ``full`` | ``scribble`` | ``tags`` | ``pseudo`` | ``none``.
        image_dir, image_ext, label_dir, label_ext: image and dense-label locations.
        scribble_dir: scribble PNGs (``scribble`` supervision or ``tags_source="scribble"``).
        pseudo_dir: pseudo-mask PNGs (``pseudo`` supervision).
        saliency_dir: optional saliency PNGs → ``saliency``.
        tags_source: where ``tags`` come from; None picks ``scribble`` for scribble supervision, else ``label``.
        tags_file: JSON ``{id: [class ids]}`` for ``tags_source="file"``.
        xml_dir: VOC detection XMLs for ``tags_source="xml"``.
        tags_dir: class-id masks for ``tags_source="pseudo"`` (default ``pseudo_dir``).
        extra_maps: {sample key: folder of ``<id>.png``}.
        with_label: also load the dense ``label`` (evaluation).
        transform: callable applied to the sample dict.
        lenient: scan every sample at construction and drop the bad ones instead of raising.
    """

    def __init__(self, root: str | os.PathLike, list_file: str | os.PathLike, *, meta: DatasetMeta = VOC_META,
                 supervision: str = "full", image_dir: str = "JPEGImages", image_ext: str = ".jpg",
                 label_dir: str = "SegmentationClass", label_ext: str = ".png", scribble_dir: str = "Scribbles",
                 pseudo_dir: str | None = None, saliency_dir: str | None = None, tags_source: str | None = None,
                 tags_file: str | os.PathLike | None = None, xml_dir: str = "Annotations",
                 tags_dir: str | os.PathLike | None = None,
                 extra_maps: dict[str, str] | None = None, with_label: bool = False,
                 transform: Callable[[dict], dict] | None = None, lenient: bool = False):
        if supervision not in SUPERVISIONS:
            raise ValueError(f"supervision must be one of {SUPERVISIONS}, got {supervision!r}")
        if tags_source is None:
            tags_source = "scribble" if supervision in ("scribble", "scribble_pseudo") else "label"
        if tags_source not in TAGS_SOURCES:
            raise ValueError(f"tags_source must be one of {TAGS_SOURCES}, got {tags_source!r}")
        if supervision in ("pseudo", "scribble_pseudo") and pseudo_dir is None:
            raise ValueError(f"supervision={supervision!r} needs pseudo_dir")
        if tags_source == "file" and tags_file is None and supervision in ("scribble", "tags", "pseudo"):
            raise ValueError("tags_source='file' needs tags_file")
        if tags_source == "pseudo" and tags_dir is None and pseudo_dir is None:
            raise ValueError("tags_source='pseudo' needs tags_dir (or pseudo_dir)")
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset root not found")
        self.meta = meta
        self.supervision = supervision
        self.tags_source = tags_source
        self.image_ext, self.label_ext = image_ext, label_ext
        self.image_dir = self._folder(image_dir)
        self.label_dir = self._folder(label_dir)
        self.scribble_dir = self._folder(scribble_dir)
        self.pseudo_dir = self._folder(pseudo_dir) if pseudo_dir is not None else None
        self.saliency_dir = self._folder(saliency_dir) if saliency_dir is not None else None
        self.xml_dir = self._folder(xml_dir)
        tags_folder = tags_dir if tags_dir is not None else pseudo_dir
        self.tags_dir = self._folder(tags_folder) if tags_folder is not None else None
        self.extra_maps: dict[str, Path] = {}
        for key, folder in (extra_maps or {}).items():
            if key not in K.POLICY or key in (K.IMAGE, K.CAM, K.VALID):
                raise ValueError(f"extra_maps key {key!r} must be a spatial map key of weakseg.data.keys.POLICY")
            self.extra_maps[key] = self._folder(folder)
        self.with_label = with_label
        self.transform = transform
        self.list_file = Path(list_file) if Path(list_file).is_absolute() else self.root / list_file
        self.ids = read_list_file(self.list_file)
        self._tags_table: dict[str, list[int]] | None = None
        if tags_source == "file" and tags_file is not None:
            path = Path(tags_file) if Path(tags_file).is_absolute() else self.root / tags_file
            self._tags_table = load_tags_file(path, meta.num_classes)
        self.problems: list[str] = []
        self.num_dropped = 0
        self.lenient = lenient
        if lenient:
            self.scan()

    # ---------------------------------------------------------------------------------------------------------
    def _folder(self, name: str | os.PathLike) -> Path:
        p = Path(name)
        return p if p.is_absolute() else self.root / p

    @staticmethod
    def _file(folder: Path, sid: str, ext: str) -> Path:
        path = folder / f"{sid}{ext}"
        # ids are validated at list parsing; this guards against ids built elsewhere
        if os.path.commonpath([os.path.abspath(path), os.path.abspath(folder)]) != os.path.abspath(folder):
            raise DataError(f"id {sid!r} resolves outside {folder}")
        return path

    @property
    def num_classes(self) -> int:
        return self.meta.num_classes

    def __len__(self) -> int:
        return len(self.ids)

    def _class_map(self, path: Path, size: tuple[int, int], what: str) -> np.ndarray:
        arr = _read_map(path)
        if arr.shape != size:
            raise DataError(f"{path}: {what} size {arr.shape[0]}x{arr.shape[1]} differs from the image size "
                            f"{size[0]}x{size[1]}")
        bad = np.unique(arr[(arr >= self.meta.num_classes) & (arr != self.meta.ignore_index)])
        if bad.size:
            raise DataError(f"{path}: {what} values {bad.tolist()} are not class ids (< {self.meta.num_classes}) "
                            f"or {self.meta.ignore_index}")
        return arr

    def _any_map(self, path: Path, size: tuple[int, int], what: str) -> np.ndarray:
        arr = _read_map(path)
        if arr.shape != size:
            raise DataError(f"{path}: {what} size {arr.shape[0]}x{arr.shape[1]} differs from the image size "
                            f"{size[0]}x{size[1]}")
        return arr

    def _tags(self, sid: str, size: tuple[int, int], scribble: np.ndarray | None) -> np.ndarray:
        C = self.meta.num_classes
        if self.tags_source == "scribble":
            if scribble is None:
                scribble = self._class_map(self._file(self.scribble_dir, sid, ".png"), size, "scribble")
            found = labels_from_map(scribble, C, sid, self.meta.ignore_index)
        elif self.tags_source == "label":
            path = self._file(self.label_dir, sid, self.label_ext)
            found = labels_from_map(self._class_map(path, size, "label"), C, str(path), self.meta.ignore_index)
        elif self.tags_source == "xml":
            found = labels_from_xml(self._file(self.xml_dir, sid, ".xml"), self.meta.classes)
        elif self.tags_source == "pseudo":
            assert self.tags_dir is not None
            path = self._file(self.tags_dir, sid, ".png")
            found = labels_from_map(self._class_map(path, size, "mask"), C, str(path), self.meta.ignore_index)
        else:
            assert self._tags_table is not None
            if sid not in self._tags_table:
                raise DataError(f"tags file has no entry for id {sid!r}")
            found = self._tags_table[sid]
        return tags_vector(found, C)

    def load(self, index: int) -> dict:
        """The raw sample (numpy, before ``transform``); raises DataError naming the offending file."""
        sid = self.ids[index]
        image = read_rgb(self._file(self.image_dir, sid, self.image_ext))
        size = (image.shape[0], image.shape[1])
        sample: dict = {K.IMAGE: image, K.ID: sid, K.ORIG_SIZE: size}
        sup = self.supervision
        if sup == "full" or self.with_label:
            sample[K.LABEL] = self._class_map(self._file(self.label_dir, sid, self.label_ext), size, "label")
        if sup in ("scribble", "scribble_pseudo"):
            sample[K.SCRIBBLE] = self._class_map(self._file(self.scribble_dir, sid, ".png"), size, "scribble")
        if sup in ("pseudo", "scribble_pseudo"):
            assert self.pseudo_dir is not None
            sample[K.PSEUDO] = self._class_map(self._file(self.pseudo_dir, sid, ".png"), size, "pseudo-label")
        if sup in ("scribble", "tags", "pseudo", "scribble_pseudo"):
            sample[K.TAGS] = self._tags(sid, size, sample.get(K.SCRIBBLE) if self.tags_source == "scribble" else None)
        if self.saliency_dir is not None:
            sal = self._any_map(self._file(self.saliency_dir, sid, ".png"), size, "saliency")
            sample[K.SALIENCY] = sal.astype(np.float32) / 255.0
        for key, folder in self.extra_maps.items():
            sample[key] = self._any_map(self._file(folder, sid, ".png"), size, key)
        return sample

    def load_id(self, sample_id: str) -> dict:
        """The raw sample of id ``sample_id`` (as :meth:`load`); KeyError when the id is not in the list."""
        if getattr(self, "_index", None) is None or len(self._index) != len(self.ids):
            self._index = {sid: i for i, sid in enumerate(self.ids)}
        return self.load(self._index[sample_id])

    def __getitem__(self, index: int) -> dict:
        sample = self.load(index)
        return self.transform(sample) if self.transform is not None else sample

    def scan(self) -> list[str]:
        """Load every sample and run all checks (decodes every file: minutes for 10k images).

        Returns the list of problems. With ``lenient=True`` the bad samples are dropped, ``problems`` and
        ``num_dropped`` are recorded and one log line gives their count and the first few; otherwise the first
        problems are raised.
        """
        good, problems = [], []
        for i, sid in enumerate(self.ids):
            try:
                self.load(i)
            except DataError as exc:
                problems.append(str(exc))
            else:
                good.append(sid)
        if problems and not self.lenient:
            shown = "\n  ".join(problems[:10])
            raise DataError(f"{self.list_file}: {len(problems)} bad sample(s):\n  {shown}")
        if problems:
            self.ids = good
            self.problems.extend(problems)
            self.num_dropped += len(problems)
            shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
            log.warning("%s: dropped %d bad sample(s) of %d (data.lenient): %s", self.list_file, len(problems),
                        len(good) + len(problems), shown)
            if not good:
                raise DataError(f"{self.list_file}: no usable samples left after dropping {len(problems)}")
        return problems
