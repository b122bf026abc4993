"""The annotation folder: a dataset root that ``weakseg train`` reads with no conversion.

Layout of ``LABELS`` (the output folder; the images stay where they are)::

    LABELS/classes.txt                          class names, background first (read by DatasetMeta)
    LABELS/Scribbles/<id>.png                   H×W uint8 palette PNG at the image's size, class id on strokes,
                                                255 = not annotated
    LABELS/tags.json                            {id: [class ids]}: background 0, the ticked tags and every
                                                scribbled class (``data.tags_source=file``)
    LABELS/ImageSets/Segmentation/train.txt     ids with at least one scribbled pixel (scribble methods)
    LABELS/ImageSets/Segmentation/train_tags.txt  ids annotated with scribbles or tags (tag methods)
    LABELS/annotate.json                        the session: image folder and suffix, skipped ids, last image

Training reads it with ``data.root=LABELS`` plus ``data.image_dir=<IMAGES, absolute>`` and ``data.image_ext``
(:meth:`LabelStore.train_overrides`). Every file is written atomically (temporary name, then rename), and only
inside ``LABELS``; image ids come from the image folder's listing, so a request can never name another file.

An image is *annotated* when its scribble has a labelled pixel or its tags name a foreground class; *skipped*
images are left out of both lists until they are annotated.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from weakseg.data.dataset import meta_from_root, read_list_file
from weakseg.data.dataset import read_classes_file as _read_classes
from weakseg.data.meta import DatasetMeta
from weakseg.data.voc_tools import load_tags_file
from weakseg.utils.io import DataError, image_size, load_json, read_label, save_label_png, write_json_atomic, \
    write_text_atomic

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SCRIBBLE_DIR = "Scribbles"
TAGS_FILE = "tags.json"
SCRIBBLE_LIST = "ImageSets/Segmentation/train.txt"
TAGS_LIST = "ImageSets/Segmentation/train_tags.txt"
STATE_FILE = "annotate.json"
STATE_FORMAT = 1
IGNORE = 255


def _valid_id(stem: str) -> bool:
    """Ids must survive a list file (one whitespace-free token per line, '#' starts a comment) and stay a plain
    file name."""
    return bool(stem) and not stem.startswith(("#", ".")) and not any(ch.isspace() for ch in stem) and \
        "/" not in stem and "\\" not in stem and "\x00" not in stem


def list_images(image_dir: Path, ext: str | None = None, list_file: Path | None = None
                ) -> tuple[dict[str, Path], str, list[str]]:
    """The annotatable images of a folder: ({id: path} in sorted order, suffix, names left out with the reason).

    Args:
        image_dir: folder of images (not searched recursively).
        ext: the image suffix to use (e.g. ``.jpg``); None = the only suffix present. Training reads one suffix
            (``data.image_ext``), so a folder mixing suffixes needs a choice.
        list_file: optional id list restricting the images (e.g. a train split, so validation images stay unseen).
    """
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder not found")
    files = sorted(p for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    suffixes = sorted({p.suffix for p in files})
    if ext is None:
        if not files:
            raise DataError(f"{image_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
        if len(suffixes) > 1:
            raise DataError(f"{image_dir}: images with several suffixes ({', '.join(suffixes)}); training reads one "
                            f"(data.image_ext): choose it with --ext")
        ext = suffixes[0]
    if not ext.startswith("."):
        ext = "." + ext
    left_out = [f"{p.name}: suffix {p.suffix} is not {ext}" for p in files if p.suffix != ext]
    images: dict[str, Path] = {}
    for p in files:
        if p.suffix != ext:
            continue
        if not _valid_id(p.stem):
            left_out.append(f"{p.name}: the name cannot be an id of a list file (spaces, '#', leading '.')")
            continue
        images[p.stem] = p
    if list_file is not None:
        wanted = read_list_file(list_file)
        missing = [i for i in wanted if i not in images]
        if missing:
            raise DataError(f"{list_file}: {len(missing)} id(s) have no {ext} image in {image_dir}, e.g. "
                            f"{missing[0]!r}")
        images = {i: images[i] for i in dict.fromkeys(wanted)}
    if not images:
        raise DataError(f"{image_dir}: no {ext} images")
    return images, ext, left_out


def read_classes_file(path: Path) -> DatasetMeta:
    """DatasetMeta of a class-names file (one name per line, background first), checked as every dataset's
    ``classes.txt`` is (:func:`weakseg.data.dataset.read_classes_file`)."""
    if not path.is_file():
        raise DataError(f"{path}: classes file not found")
    return _read_classes(path)


def rle_encode(label: np.ndarray) -> list[int]:
    """Run-length code of an H×W uint8 map in row-major order: [value, run, value, run, ...]."""
    flat = np.asarray(label, dtype=np.uint8).reshape(-1)
    if flat.size == 0:
        return []
    starts = np.flatnonzero(np.concatenate([[True], flat[1:] != flat[:-1]]))
    runs = np.diff(np.concatenate([starts, [flat.size]]))
    return np.stack([flat[starts].astype(np.int64), runs], axis=1).reshape(-1).tolist()


def rle_decode(rle, height: int, width: int, num_classes: int) -> np.ndarray:
    """H×W uint8 map from :func:`rle_encode`'s code, checked: integers only, values < num_classes or 255, runs ≥ 1,
    runs summing to exactly H·W. Raises ValueError with the problem."""
    if not isinstance(rle, list) or len(rle) % 2:
        raise ValueError("rle must be a list [value, run, value, run, ...] of even length")
    if not all(type(v) is int for v in rle):  # bool and float are refused on purpose
        raise ValueError("rle entries must be integers")
    arr = np.asarray(rle, dtype=np.int64).reshape(-1, 2)
    values, runs = arr[:, 0], arr[:, 1]
    if (runs < 1).any():
        raise ValueError("rle runs must be ≥ 1")
    bad = (values < 0) | ((values >= num_classes) & (values != IGNORE))
    if bad.any():
        raise ValueError(f"rle value {int(values[bad][0])} is not a class id (< {num_classes}) or {IGNORE}")
    if int(runs.sum()) != height * width:
        raise ValueError(f"rle covers {int(runs.sum())} pixels, the image has {height}×{width} = {height * width}")
    return np.repeat(values.astype(np.uint8), runs).reshape(height, width)


@dataclass
class Entry:
    """What the store knows about one image: scribbled classes, tags (without background) and the skip flag."""

    scribbled: list[int] = field(default_factory=list)
    tags: list[int] = field(default_factory=list)
    skipped: bool = False

    @property
    def annotated(self) -> bool:
        return bool(self.scribbled) or any(t != 0 for t in self.tags)

    @property
    def status(self) -> str:
        return "annotated" if self.annotated else "skipped" if self.skipped else "todo"


class LabelStore:
    """The annotation folder of one image set; every method is thread-safe (the server is threaded).

    Args:
        out: the output folder ``LABELS`` (created).
        images: {id: image path} (:func:`list_images`).
        image_ext: the images' suffix (for ``data.image_ext``).
        meta: the classes; written to ``out/classes.txt``. A different ``classes.txt`` already there is an error:
            its scribbles would change meaning.
    """

    def __init__(self, out: str | os.PathLike, images: dict[str, Path], image_ext: str, meta: DatasetMeta):
        self.out = Path(out).resolve()
        self.images = dict(images)
        self.image_ext = image_ext
        self.meta = meta
        self._lock = threading.Lock()
        self._sizes: dict[str, tuple[int, int]] = {}
        self.out.mkdir(parents=True, exist_ok=True)
        classes = self.out / "classes.txt"
        text = "".join(f"{n}\n" for n in meta.classes)
        if classes.is_file():
            old = meta_from_root(self.out).classes
            if old != meta.classes:
                raise DataError(f"{classes}: its classes {list(old)} differ from the requested {list(meta.classes)}; "
                                f"use another output folder (the scribbles there use the old class ids)")
        else:
            write_text_atomic(classes, text)
        self.image_dir = next(iter(self.images.values())).parent.resolve() if self.images else None
        state = load_json(self.out / STATE_FILE) if (self.out / STATE_FILE).is_file() else {}
        if not isinstance(state, dict):
            raise DataError(f"{self.out / STATE_FILE}: expected a JSON object")
        skipped = {s for s in state.get("skipped", []) if isinstance(s, str)} \
            if isinstance(state.get("skipped"), list) else set()
        last = state.get("last")
        self.last: str | None = last if isinstance(last, str) and last in self.images else None
        tags_path = self.out / TAGS_FILE
        tags = load_tags_file(tags_path, meta.num_classes) if tags_path.is_file() else {}
        self.entries: dict[str, Entry] = {}
        for sid in self.images:
            e = Entry(tags=[t for t in tags.get(sid, []) if t != 0], skipped=sid in skipped)
            png = self.scribble_path(sid)
            if png.is_file():
                e.scribbled = self._classes_of(read_label(png), png)
            self.entries[sid] = e
        # what belongs to images outside this session (another --list) is kept in the files, not dropped
        self._foreign_tags = {k: v for k, v in tags.items() if k not in self.images}
        self._foreign_lists = {name: [i for i in self._read_ids(name) if i not in self.images]
                               for name in (SCRIBBLE_LIST, TAGS_LIST)}
        self._foreign_skipped = sorted(skipped - set(self.images))

    def _read_ids(self, name: str) -> list[str]:
        path = self.out / name
        if not path.is_file():
            return []
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    # ------------------------------------------------------------------------------------------------------------
    def scribble_path(self, sid: str) -> Path:
        return self.out / SCRIBBLE_DIR / f"{sid}.png"

    def check_id(self, sid: str) -> Path:
        """The image path of a listed id; KeyError for anything else (the only way a request names a file)."""
        if sid not in self.images:
            raise KeyError(sid)
        return self.images[sid]

    def size(self, sid: str) -> tuple[int, int]:
        """(H, W) of an image, from its header (cached)."""
        if sid not in self._sizes:
            self._sizes[sid] = image_size(self.check_id(sid))
        return self._sizes[sid]

    def _classes_of(self, label: np.ndarray, source) -> list[int]:
        vals = np.unique(label)
        vals = vals[vals != IGNORE]
        if (vals >= self.meta.num_classes).any():
            raise DataError(f"{source}: values {vals[vals >= self.meta.num_classes].tolist()} are not class ids "
                            f"(< {self.meta.num_classes}) or {IGNORE}")
        return [int(v) for v in vals]

    # ------------------------------------------------------------------------------------------------------------
    def progress(self) -> dict:
        with self._lock:
            counts = {"annotated": 0, "skipped": 0, "todo": 0}
            for e in self.entries.values():
                counts[e.status] += 1
        return {**counts, "total": len(self.entries)}

    def statuses(self) -> list[dict]:
        with self._lock:
            return [{"id": sid, "status": e.status} for sid, e in self.entries.items()]

    def resume_id(self) -> str:
        """The image to open: the last one opened, else the first one not annotated or skipped."""
        if self.last is not None:
            return self.last
        for sid, e in self.entries.items():
            if e.status == "todo":
                return sid
        return next(iter(self.entries))

    def load(self, sid: str, remember: bool = True) -> dict:
        """The annotation of an image: {id, width, height, rle, tags (with scribbled classes), skipped}."""
        self.check_id(sid)
        h, w = self.size(sid)
        png = self.scribble_path(sid)
        if png.is_file():
            label = read_label(png)
            if label.shape != (h, w):
                raise DataError(f"{png}: size {label.shape[0]}x{label.shape[1]} differs from the image {h}x{w}")
        else:
            label = np.full((h, w), IGNORE, dtype=np.uint8)
        with self._lock:
            e = self.entries[sid]
            if remember and self.last != sid:
                self.last = sid
                self._write_state()
            return {"id": sid, "width": w, "height": h, "rle": rle_encode(label),
                    "tags": sorted(set(e.tags) | {c for c in e.scribbled if c != 0}), "skipped": e.skipped,
                    "status": e.status}

    def save(self, sid: str, scribble: np.ndarray, tags: list[int]) -> dict:
        """Write an image's scribble PNG and tags, then the lists; returns the new status and the progress.

        Args:
            sid: a listed id.
            scribble: H×W uint8 at the image's size, class ids or 255.
            tags: ticked class ids; the scribbled classes are added (a scribbled class is present).
        """
        self.check_id(sid)
        h, w = self.size(sid)
        if scribble.shape != (h, w):
            raise ValueError(f"scribble is {scribble.shape[0]}×{scribble.shape[1]}, the image is {h}×{w}")
        if any(type(t) is not int or not 0 <= t < self.meta.num_classes for t in tags):
            raise ValueError(f"tags must be class ids 0..{self.meta.num_classes - 1}")
        scribbled = self._classes_of(scribble, sid)
        with self._lock:
            save_label_png(self.scribble_path(sid), scribble, self.meta.palette)
            e = self.entries[sid]
            e.scribbled = scribbled
            e.tags = sorted({t for t in tags if t != 0} | {c for c in scribbled if c != 0})
            if e.annotated:
                e.skipped = False
            self.last = sid
            self._write_lists()
            status = e.status
        return {"status": status, "progress": self.progress()}

    def set_skipped(self, sid: str, skipped: bool) -> dict:
        self.check_id(sid)
        with self._lock:
            self.entries[sid].skipped = skipped
            self._write_lists()
            status = self.entries[sid].status
        return {"status": status, "progress": self.progress()}

    def merge_scribble(self, sid: str, strokes: np.ndarray) -> None:
        """Draw an imported H×W scribble on top of the existing one (its labelled pixels win) and save."""
        h, w = self.size(sid)
        png = self.scribble_path(sid)
        base = read_label(png) if png.is_file() else np.full((h, w), IGNORE, dtype=np.uint8)
        if base.shape != strokes.shape:
            raise DataError(f"{png}: size {base.shape[0]}x{base.shape[1]} differs from the imported "
                            f"{strokes.shape[0]}x{strokes.shape[1]}")
        merged = np.where(strokes != IGNORE, strokes, base).astype(np.uint8)
        self.save(sid, merged, self.entries[sid].tags)

    def import_scribbles(self, items: list, line_width: int = 1) -> tuple[int, int, list[str]]:
        """Draw the scribbles of a CVAT / Label Studio export (:mod:`weakseg.data.scribble_import`) on top of the
        existing ones. Returns (images imported, images without scribbles, problems "<image>: <reason>"); an image
        with a problem (unknown name or label, wrong declared size) is left unchanged."""
        from weakseg.data.scribble_import import rasterize_import, resolve_id

        table = {name: i for i, name in enumerate(self.meta.classes)}
        n_ok, n_empty, problems = 0, 0, []
        for item in items:
            sid = resolve_id(item, self.images)
            if sid is None:
                problems.append(f"{item.name}: no image {item.stem!r} among the {len(self.images)} images")
                continue
            if not item.strokes:
                n_empty += 1
                continue
            try:
                self.merge_scribble(sid, rasterize_import(item, *self.size(sid), table, line_width))
            except DataError as exc:
                problems.append(str(exc))
                continue
            n_ok += 1
        return n_ok, n_empty, problems

    # ------------------------------------------------------------------------------------------------------------
    def _write_state(self) -> None:
        write_json_atomic(self.out / STATE_FILE, {
            "format": STATE_FORMAT,
            "images": str(self.image_dir),
            "image_ext": self.image_ext,
            "skipped": self._foreign_skipped + [sid for sid, e in self.entries.items() if e.skipped],
            "last": self.last,
            "train_overrides": self.train_overrides(),
        })

    def _write_lists(self) -> None:
        """tags.json, both lists and the state, each atomically (called with the lock held)."""
        tags = dict(self._foreign_tags)
        tags.update({sid: [0] + e.tags for sid, e in self.entries.items() if e.annotated})
        write_json_atomic(self.out / TAGS_FILE, tags)
        scribbled = self._foreign_lists[SCRIBBLE_LIST] + [sid for sid, e in self.entries.items() if e.scribbled]
        annotated = self._foreign_lists[TAGS_LIST] + [sid for sid, e in self.entries.items() if e.annotated]
        write_text_atomic(self.out / SCRIBBLE_LIST, "".join(f"{s}\n" for s in scribbled))
        write_text_atomic(self.out / TAGS_LIST, "".join(f"{s}\n" for s in annotated))
        self._write_state()

    def train_overrides(self) -> list[str]:
        """The ``--set`` values that make ``weakseg train`` read this folder (scribble methods)."""
        return [f"data.root={self.out}", f"data.image_dir={self.image_dir}", f"data.image_ext={self.image_ext}",
                f"data.scribble_dir={SCRIBBLE_DIR}", f"data.train_list={SCRIBBLE_LIST}"]

    def train_command(self, config: str = "CONFIG") -> str:
        sets = " ".join(f"--set {s}" for s in self.train_overrides())
        return f"weakseg train {config} {sets}"


def open_store(images: str | os.PathLike, out: str | os.PathLike, classes: str | os.PathLike | None = None,
               ext: str | None = None, list_file: str | os.PathLike | None = None) -> tuple[LabelStore, list[str]]:
    """A :class:`LabelStore` for an image folder; ``classes`` may be omitted when ``out/classes.txt`` exists.
    Returns the store and the image files left out (with the reason)."""
    out = Path(out)
    if classes is not None:
        meta = read_classes_file(Path(classes))
    elif (out / "classes.txt").is_file():
        meta = meta_from_root(out)
    else:
        raise DataError(f"{out}: no classes.txt yet; pass --classes FILE (one class name per line, background first)")
    image_map, image_ext, left_out = list_images(Path(images), ext, Path(list_file) if list_file else None)
    return LabelStore(out, image_map, image_ext, meta), left_out
