"""Atomic file output and safe readers.

Every output file in weakseg is written to a temporary name in the destination folder and then renamed, so that
the existence of the final file means it is complete (an interrupted run never leaves a truncated file).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    The temporary file keeps the final suffix so that writers that infer the format from the name work.
    On error the temporary file is removed and ``path`` is left untouched; an ``OSError`` (full disk, read-only
    folder, missing permission) becomes a :class:`WriteError` whose message names ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise WriteError.of(path, exc) from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise WriteError.of(path, exc) from exc
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_label_png(path: str | os.PathLike, label: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Save an H×W uint8 label map as a PNG (palette "P" mode when ``palette`` (256×3 uint8) is given)."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label map for {path} must be 2-D, got shape {label.shape}")
    if label.min(initial=0) < 0 or label.max(initial=0) > 255:
        raise ValueError(f"label map for {path} has values outside 0..255")
    img = Image.fromarray(label.astype(np.uint8), mode="L")
    if palette is not None:
        img = img.convert("P")
        img.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())


def save_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Save an H×W×3 uint8 RGB image; the format follows the suffix (.png, .jpg)."""
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}.get(Path(path).suffix.lower(), "PNG")
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    write_bytes_atomic(path, buf.getvalue())


def save_npz_atomic(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Save named arrays to a compressed ``.npz`` (read back with ``np.load(path, allow_pickle=False)``).

    The file is a function of the arrays alone: entries in the given order with a fixed zip time stamp (numpy's
    own ``savez`` stamps the current time), so a re-run or a resumed stage writes the same bytes."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, member.getvalue())
    write_bytes_atomic(path, buf.getvalue())


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as H×W×3 uint8 RGB; raises ``DataError`` naming the file when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))  # a writable copy (torch.from_numpy needs one)
    except Exception as exc:  # PIL raises many types for corrupt files
        raise DataError(f"{path}: cannot read image ({exc})") from exc


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel label PNG (mode P or L) as H×W uint8 class indices (no palette conversion)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: label file not found")
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L", "I", "I;16"):
                raise DataError(f"{path}: label PNG must be single-channel (mode P or L), got mode {img.mode}")
            arr = np.asarray(img)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot read label ({exc})") from exc
    if arr.dtype != np.uint8:
        if arr.min() < 0 or arr.max() > 255:
            raise DataError(f"{path}: label values outside 0..255")
        arr = arr.astype(np.uint8)
    return arr


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image file read from its header only."""
    try:
        with Image.open(path) as img:
            w, h = img.size
    except Exception as exc:
        raise DataError(f"{path}: cannot read image header ({exc})") from exc
    return h, w


class DataError(ValueError):
    """Bad input data; the message names the file and the problem."""


class WriteError(OSError):
    """An output file could not be written (disk full, read-only folder, ...); the message names the file.
    ``errno`` is the underlying error's."""

    @classmethod
    def of(cls, path: str | os.PathLike, exc: OSError) -> "WriteError":
        err = cls(f"{path}: cannot write ({exc.strerror or exc})")
        err.errno = exc.errno
        return err


def load_json(path: str | os.PathLike):
    """Read a JSON file; DataError naming the file when it is missing or invalid."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: invalid JSON ({exc})") from exc


def replace_marked_section(path: str | os.PathLike, name: str, body: str, *, required: bool = False) -> bool:
    """Replace what lies between ``<!-- name -->`` and ``<!-- /name -->`` in a text file (README tables written by
    benchmarks and the demo), atomically. Returns False, or raises ``ValueError`` when ``required``, if the file lacks
    either marker."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if start not in text or end not in text:
        if required:
            raise ValueError(f"{path}: no {start} … {end} section to write into")
        return False
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    write_text_atomic(path, head + start + "\n" + body.rstrip("\n") + "\n" + end + tail)
    return True
