"""Web image sets for WebCoseg (methods.md §1.5): indexing, the list format, and ready-made web masks.

A web set is a folder of images retrieved by class name. Two layouts are indexed:

* ``folders``: one sub-folder per class name, ``<web root>/<class name>/<anything>.<jpg|jpeg|png|bmp|webp>``;
  the names come from the dataset's ``classes.txt`` (background, index 0, never has a folder). Sub-folders whose
  name is not a class are skipped and counted.
* ``flat`` (the reference's): ``<web root>/<image dir>/<class index>_<number>.<ext>``, e.g. ``12_002259.jpg`` =
  class 12 (VOC: horse); ready-made masks, when there are any, sit in a mask folder as ``<id>.png``.

``layout="auto"`` picks ``folders`` when any class sub-folder exists, else ``flat``.

**List file** (``web_train_list.txt`` by default, written atomically): a ``# weakseg web list v1`` header, then one
line per kept image, ``<image path relative to the web root> <class id>``; the id of an image is that path
without its suffix (``horse/0001`` or ``web_images/12_002259``; masks are ``<mask dir>/<id>.png``, or
``<mask dir>/<stem>.png`` for the reference's flat mask folder). Reading a list refuses absolute paths, ``..``
and anything that resolves (symlinks included) outside the web root, so a list can never point elsewhere.

**Skipped images, never fatal**: unreadable files (not an image, truncated), tiny images (shorter side below
``min_side``), duplicates (same decoded pixels as an image kept before, in sorted order, any class), flat names
that do not follow ``<class>_<number>``, class indices outside 1..C−1 (or folders that are not a class) and
files that resolve outside the web root (symlinks). Each kind is counted in the summary.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from weakseg.data.meta import IGNORE_INDEX, DatasetMeta
from weakseg.utils.io import DataError, read_label, write_text_atomic

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
LIST_HEADER = "# weakseg web list v1: <image path relative to the web root> <class id>"
DEFAULT_LIST = "web_train_list.txt"
SKIP_KINDS = ("unreadable", "tiny", "duplicate", "bad_name", "unknown_class", "outside")
_FLAT_NAME = re.compile(r"^(\d+)_(\d+)$")
# decompression bombs: refuse images beyond this many pixels (PIL warns at 89 M and raises at 179 M)
MAX_PIXELS = 64_000_000


@dataclass(frozen=True)
class WebItem:
    """One indexed web image: ``id`` (relative path without suffix), ``path`` (absolute), ``class_id`` (1..C−1)."""

    id: str
    path: Path
    class_id: int


@dataclass
class WebIndexSummary:
    """What :func:`index_web_images` kept and skipped.

    Attributes:
        items: the kept images in list order (sorted by class id, then path).
        skipped: count per kind of :data:`SKIP_KINDS`.
        per_class: kept images per class id.
        problems: one line per skipped file (path: reason).
        layout: the layout indexed ("folders" or "flat").
    """

    items: list[WebItem]
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_KINDS, 0))
    per_class: dict[int, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    layout: str = "folders"


def _check_image(path: Path, min_side: int) -> tuple[str | None, str]:
    """(skip kind or None, hash of the decoded RGB pixels) for one file."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                return "unreadable", ""
            if min(w, h) < min_side:
                return "tiny", ""
            pixels = np.asarray(img.convert("RGB"))
    except Exception:  # PIL raises many types for corrupt or non-image files
        return "unreadable", ""
    digest = hashlib.sha1(pixels.tobytes())
    digest.update(str(pixels.shape).encode())
    return None, digest.hexdigest()


def _candidates_folders(root: Path, meta: DatasetMeta) -> tuple[list[tuple[Path, int]], list[str]]:
    by_name = {name: i for i, name in enumerate(meta.classes) if i > 0}
    found, unknown = [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name not in by_name:
            unknown.append(f"{sub}: folder name is not a class of the dataset")
            continue
        for f in sorted(sub.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                found.append((f, by_name[sub.name]))
    return found, unknown


def index_web_images(root: str | os.PathLike, meta: DatasetMeta, *, layout: str = "auto",
                     image_dir: str = "web_images", min_side: int = 32, out: str | os.PathLike | None = DEFAULT_LIST
                     ) -> WebIndexSummary:
    """Index a web set (module docstring) and write its list file.

    Args:
        root: the web root.
        meta: the dataset's classes (names for the folder layout, the index range for both).
        layout: ``"auto"``, ``"folders"`` or ``"flat"``.
        image_dir: the image folder of the flat layout, relative to ``root``.
        min_side: images whose shorter side is below this are skipped as tiny.
        out: list file (relative to ``root`` unless absolute); None writes nothing.

    Returns:
        :class:`WebIndexSummary`.

    Raises:
        DataError: the root (or the flat image folder) does not exist, or no image was kept.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: web root not found")
    if layout == "auto":
        has_class_dir = any((root / name).is_dir() for name in meta.classes[1:])
        layout = "folders" if has_class_dir else "flat"
    summary = WebIndexSummary(items=[], layout=layout)
    if layout == "folders":
        candidates, unknown = _candidates_folders(root, meta)
        summary.skipped["unknown_class"] += len(unknown)
        summary.problems += unknown
    elif layout == "flat":
        folder = root / image_dir
        if not folder.is_dir():
            raise DataError(f"{folder}: flat web image folder not found")
        candidates = []
        for f in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
            match = _FLAT_NAME.match(f.stem)
            if match is None:
                summary.skipped["bad_name"] += 1
                summary.problems.append(f"{f}: name is not <class index>_<number>")
            elif not 1 <= int(match.group(1)) < meta.num_classes:
                summary.skipped["unknown_class"] += 1
                summary.problems.append(f"{f}: class index {int(match.group(1))} outside 1..{meta.num_classes - 1}")
            else:
                candidates.append((f, int(match.group(1))))
    else:
        raise ValueError(f"layout must be 'auto', 'folders' or 'flat', got {layout!r}")

    seen: dict[str, Path] = {}
    lines = [LIST_HEADER]
    for path, class_id in sorted(candidates, key=lambda pc: (pc[1], str(pc[0]))):
        if not inside(path, root):  # a symlink leading out of the web root
            summary.skipped["outside"] += 1
            summary.problems.append(f"{path}: resolves outside the web root")
            continue
        kind, digest = _check_image(path, min_side)
        if kind is None and digest in seen:
            kind = "duplicate"
        if kind is not None:
            summary.skipped[kind] += 1
            reason = {"unreadable": "cannot be read as an image", "tiny": f"shorter side below {min_side} px",
                      "duplicate": f"same pixels as {seen.get(digest)}"}[kind]
            summary.problems.append(f"{path}: {reason}")
            continue
        seen[digest] = path
        rel = path.relative_to(root).as_posix()
        summary.items.append(WebItem(id=rel.rsplit(".", 1)[0], path=path.resolve(), class_id=class_id))
        lines.append(f"{rel} {class_id}")
        summary.per_class[class_id] = summary.per_class.get(class_id, 0) + 1
    if not summary.items:
        raise DataError(f"{root}: no usable web image found ({layout} layout; skipped: {summary.skipped})")
    if out is not None:
        out_path = Path(out) if Path(out).is_absolute() else root / out
        write_text_atomic(out_path, "\n".join(lines) + "\n")
    return summary


def check_web_id(rel: str, where: str = "<id>") -> None:
    """Raise DataError unless ``rel`` is a plain relative path: no absolute path, ``..``, backslash or NUL."""
    p = Path(rel)
    if not rel or "\x00" in rel or "\\" in rel or p.is_absolute() or rel.startswith("/") or ".." in p.parts:
        raise DataError(f"{where}: invalid web path {rel!r} (absolute paths and '..' are not allowed)")


def inside(path: Path, folder: Path) -> bool:
    """True when ``path`` resolves (symlinks followed) inside ``folder``."""
    real, base = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, base]) == base


def read_web_list(list_file: str | os.PathLike, root: str | os.PathLike | None = None,
                  num_classes: int | None = None) -> list[WebItem]:
    """Read a web list file into [(id, absolute image path, class id)].

    Args:
        list_file: the list (format in the module docstring).
        root: the web root the paths are relative to (default: the list file's folder).
        num_classes: when given, class ids must be in 1..num_classes−1.

    Raises:
        DataError naming the file and line: malformed line, unsafe path (absolute, ``..``, or resolving outside the
        root), bad class id, duplicate id, missing image, or an empty list.
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise DataError(f"{list_file}: web list not found")
    root = Path(root) if root is not None else list_file.parent
    items, ids = [], set()
    for lineno, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        toks = line.split()
        where = f"{list_file}:{lineno}"
        if len(toks) != 2 or not toks[1].isdigit():
            raise DataError(f"{where}: expected '<image path> <class id>', got {line!r}")
        rel, class_id = toks[0], int(toks[1])
        check_web_id(rel, where)
        path = root / rel
        if not inside(path, root):
            raise DataError(f"{where}: {rel!r} resolves outside the web root {root}")
        if not 1 <= class_id <= 254 or (num_classes is not None and class_id >= num_classes):
            limit = 254 if num_classes is None else num_classes - 1
            raise DataError(f"{where}: class id {class_id} outside 1..{limit}")
        if not path.is_file():
            raise DataError(f"{where}: image {path} not found")
        sid = rel.rsplit(".", 1)[0] if Path(rel).suffix else rel
        if sid in ids:
            raise DataError(f"{where}: duplicate id {sid!r}")
        ids.add(sid)
        items.append(WebItem(id=sid, path=path.resolve(), class_id=class_id))
    if not items:
        raise DataError(f"{list_file}: web list is empty")
    return items


def web_mask_path(mask_dir: str | os.PathLike, item: WebItem, flat: bool = False) -> Path:
    """``<mask_dir>/<id>.png``, or ``<mask_dir>/<stem>.png`` with ``flat`` (the reference's ``web_labels/``).

    Raises DataError when the id would resolve outside ``mask_dir``.
    """
    mask_dir = Path(mask_dir)
    name = Path(item.id).name if flat else item.id
    check_web_id(name, str(mask_dir))
    path = mask_dir / f"{name}.png"
    if not inside(path, mask_dir):
        raise DataError(f"{mask_dir}: id {item.id!r} resolves outside the mask folder")
    return path


def read_web_mask(mask_dir: str | os.PathLike, item: WebItem, flat: bool = False,
                  size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a ready-made web mask and check it.

    Args:
        mask_dir: the mask folder.
        item: the image it belongs to.
        flat: masks are named by the image's stem (the reference's flat ``web_labels/``).
        size: expected (H, W); default: the image's size read from its header.

    Returns:
        H×W uint8 with values in {0, item.class_id, 255}.

    Raises:
        DataError naming the file: missing, unreadable, size mismatch, or another class value.
    """
    path = web_mask_path(mask_dir, item, flat)
    mask = read_label(path)
    if size is None:
        try:
            with Image.open(item.path) as img:
                size = (img.size[1], img.size[0])
        except Exception as exc:
            raise DataError(f"{item.path}: cannot read image header ({exc})") from exc
    if mask.shape != tuple(size):
        raise DataError(f"{path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from the image's "
                        f"{size[1]}x{size[0]}")
    bad = np.setdiff1d(np.unique(mask), [0, item.class_id, IGNORE_INDEX])
    if bad.size:
        raise DataError(f"{path}: values {bad.tolist()[:10]} are not 0, the class id {item.class_id} or "
                        f"{IGNORE_INDEX}")
    return mask


def check_web_masks(mask_dir: str | os.PathLike, items: list[WebItem], flat: bool = False
                    ) -> tuple[list[WebItem], list[str]]:
    """Items whose mask passes :func:`read_web_mask`, and one problem line per item that does not."""
    ok, problems = [], []
    for item in items:
        try:
            read_web_mask(mask_dir, item, flat)
        except DataError as exc:
            problems.append(str(exc))
            continue
        ok.append(item)
    return ok, problems


def group_by_class(items: list[WebItem]) -> dict[int, list[WebItem]]:
    """{class id: items of that class in list order}, class ids ascending."""
    groups: dict[int, list[WebItem]] = {}
    for item in items:
        groups.setdefault(item.class_id, []).append(item)
    return dict(sorted(groups.items()))
