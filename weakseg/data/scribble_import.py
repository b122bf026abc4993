"""Scribbles drawn in other tools → weakseg scribble maps: CVAT "for images" XML and Label Studio JSON exports.

Scribbles are the open strokes and dots of an export; areas (boxes, polygons, masks, closed paths) are not
scribbles and are counted as ignored.

* **CVAT for images 1.1** (``annotations.xml``): ``<image name=... width=... height=...>`` elements holding
  ``<polyline label=... points="x1,y1;x2,y2;...">`` (a stroke) and ``<points label=... points="x,y;...">`` (each
  point a dot). Coordinates are pixels (floats); pixel (row, col) = (⌊y⌋, ⌊x⌋).
* **Label Studio** JSON export (a list of tasks): each task's ``data`` holds the image URL (``data.image``, or the
  one string value of ``data``), its ``annotations`` (cancelled ones skipped; several annotations are drawn in order)
  hold ``result`` items: ``vectorlabels`` with ``closed: false`` (a stroke through ``value.vertices`` in array order;
  Bézier control points are not followed) and ``keypointlabels`` (a dot at ``value.x``, ``value.y``). Coordinates are
  percentages of the image size: (row, col) = (⌊y·H/100⌋, ⌊x·W/100⌋). The image id is the stem of the URL's file
  name (``?d=`` of local-storage URLs is followed); Label Studio's upload prefix ``<8 hex>-`` is dropped when the
  plain stem is an image id and the prefixed one is not.

Rasterisation is the ScribbleSup converter's (:func:`weakseg.data.scribble_xml.rasterize_strokes`): line width 1 =
BLPSeg's DDA line, 3 = that line dilated by a 3×3 square (rloss/CDSP); strokes in file order, later ones win; points
outside the image are clamped to it. The files are untrusted: XML goes through
:func:`weakseg.data.scribble_xml.read_xml_root` (DOCTYPE/ENTITY refused, size bounded), JSON is size-bounded before
it is read, every field is type-checked, coordinates must be finite numbers, declared sizes must lie in 1..MAX_SIZE
and equal the real image's, and image names become ids only through their file stem.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from weakseg.data.scribble_xml import MAX_SIZE, MAX_XML_BYTES, rasterize_strokes, read_xml_root
from weakseg.utils.io import DataError

MAX_JSON_BYTES = MAX_XML_BYTES
_COORD_LIMIT = 1e7  # coordinates are clamped to the image anyway; this keeps the float → int conversion exact
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-(.+)$")


@dataclass
class ImportedImage:
    """The scribbles of one image of an export.

    Attributes:
        name: the image name or URL as written in the export (for messages).
        stem: the file stem of that name (the image id, before the upload-prefix rule).
        size: declared (H, W), or None when the export gives none.
        units: ``"px"`` (CVAT) or ``"percent"`` (Label Studio, 0–100 of the image size).
        strokes: (label, N×2 float64 (x, y)) in drawing order; a single point is a dot.
        ignored: number of shapes that are not scribbles (boxes, polygons, masks, closed paths, unlabelled).
    """

    name: str
    stem: str
    size: tuple[int, int] | None
    units: str
    strokes: list[tuple[str, np.ndarray]] = field(default_factory=list)
    ignored: int = 0


def _finite(v, what: str, source: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise DataError(f"{source}: {what} is not a number: {v!r}")
    try:
        x = float(v)
    except ValueError:
        raise DataError(f"{source}: {what} is not a number: {v!r}") from None
    if not math.isfinite(x):
        raise DataError(f"{source}: {what} is not finite: {v!r}")
    return x


def _size(w, h, source: str) -> tuple[int, int]:
    width, height = _finite(w, "width", source), _finite(h, "height", source)
    if width != int(width) or height != int(height) or not (0 < width <= MAX_SIZE and 0 < height <= MAX_SIZE):
        raise DataError(f"{source}: declared size {h}x{w} (HxW) is not whole numbers in 1..{MAX_SIZE}")
    return int(height), int(width)


def _stem(name: str) -> str:
    return PurePosixPath(name.replace("\\", "/")).stem


# ---------------------------------------------------------------------------------------------------------------
def parse_cvat_xml(path: str | os.PathLike) -> list[ImportedImage]:
    """Read a CVAT "for images" XML export (see the module docstring); raises DataError naming the file."""
    src = str(path)
    root = read_xml_root(path)
    if root.tag != "annotations":
        raise DataError(f"{src}: not a CVAT export (root element <{root.tag}>, expected <annotations>)")
    out = []
    for k, image in enumerate(root.iter("image")):
        name = image.get("name")
        where = f"{src}: <image> #{k}"
        if not name:
            raise DataError(f"{where} has no name")
        if image.get("width") is None or image.get("height") is None:
            raise DataError(f"{where} ({name}) has no width/height")
        item = ImportedImage(name=name, stem=_stem(name), size=_size(image.get("width"), image.get("height"), where),
                             units="px")
        for shape in image:
            label = shape.get("label")
            if shape.tag not in ("polyline", "points") or not label:
                item.ignored += 1
                continue
            pts = []
            for pair in (shape.get("points") or "").split(";"):
                if not pair.strip():
                    continue
                xy = pair.split(",")
                if len(xy) != 2:
                    raise DataError(f"{where} ({name}): malformed point {pair!r} in <{shape.tag}>")
                pts.append((_finite(xy[0].strip(), "x", where), _finite(xy[1].strip(), "y", where)))
            if not pts:
                continue
            arr = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
            if shape.tag == "polyline":
                item.strokes.append((label, arr))
            else:
                item.strokes.extend((label, p[None]) for p in arr)
        out.append(item)
    return out


# ---------------------------------------------------------------------------------------------------------------
def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _load_json(path: Path):
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise DataError(f"{path}: JSON file larger than {MAX_JSON_BYTES} bytes")
        text = path.read_bytes().decode("utf-8")
        return json.loads(text, parse_constant=_refuse_constant)
    except DataError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DataError(f"{path}: cannot read JSON ({type(exc).__name__}: {exc})") from None


def _task_image(task: dict, where: str) -> str:
    data = task.get("data")
    if not isinstance(data, dict):
        raise DataError(f"{where}: task has no 'data' object")
    url = data.get("image")
    if url is None:
        strings = [v for v in data.values() if isinstance(v, str)]
        url = strings[0] if len(strings) == 1 else None
    if not isinstance(url, str) or not url:
        raise DataError(f"{where}: task data has no image URL ('image' or a single string value)")
    parts = urlsplit(url)
    local = parse_qs(parts.query).get("d")
    return unquote(local[0] if local else parts.path)


def parse_label_studio_json(path: str | os.PathLike) -> list[ImportedImage]:
    """Read a Label Studio JSON export (see the module docstring); raises DataError naming the file."""
    path = Path(path)
    data = _load_json(path)
    tasks = [data] if isinstance(data, dict) else data
    if not isinstance(tasks, list):
        raise DataError(f"{path}: expected a list of tasks")
    out = []
    for t, task in enumerate(tasks):
        where = f"{path}: task #{t}"
        if not isinstance(task, dict):
            raise DataError(f"{where} is not an object")
        name = _task_image(task, where)
        item = ImportedImage(name=name, stem=_stem(name), size=None, units="percent")
        anns = task.get("annotations", task.get("completions", []))
        if not isinstance(anns, list):
            raise DataError(f"{where}: 'annotations' is not a list")
        for ann in anns:
            if not isinstance(ann, dict) or ann.get("was_cancelled") is True:
                continue
            results = ann.get("result", [])
            if not isinstance(results, list):
                raise DataError(f"{where}: 'result' is not a list")
            for r in results:
                _add_result(item, r, where)
        out.append(item)
    return out


def _add_result(item: ImportedImage, r, where: str) -> None:
    if not isinstance(r, dict) or not isinstance(r.get("value"), dict):
        item.ignored += 1
        return
    if "original_width" in r or "original_height" in r:
        size = _size(r.get("original_width"), r.get("original_height"), where)
        if item.size is not None and item.size != size:
            raise DataError(f"{where} ({item.name}): results declare different image sizes {item.size} and {size}")
        item.size = size
    kind, value = r.get("type"), r["value"]
    labels = value.get(kind) if isinstance(kind, str) else None
    if kind not in ("vectorlabels", "keypointlabels") or not isinstance(labels, list) or not labels:
        item.ignored += 1
        return
    if len(labels) != 1 or not isinstance(labels[0], str):
        raise DataError(f"{where} ({item.name}): a scribble must carry exactly one label, got {labels!r}")
    if kind == "keypointlabels":
        pts = [(_finite(value.get("x"), "x", where), _finite(value.get("y"), "y", where))]
    else:
        if value.get("closed") is True:  # a closed path is an area outline, not a scribble
            item.ignored += 1
            return
        verts = value.get("vertices")
        if not isinstance(verts, list) or not all(isinstance(v, dict) for v in verts):
            raise DataError(f"{where} ({item.name}): vectorlabels 'vertices' must be a list of points")
        pts = [(_finite(v.get("x"), "x", where), _finite(v.get("y"), "y", where)) for v in verts]
        if not pts:
            return
    item.strokes.append((labels[0], np.asarray(pts, dtype=np.float64).reshape(-1, 2)))


# ---------------------------------------------------------------------------------------------------------------
def resolve_id(item: ImportedImage, known: set[str] | dict) -> str | None:
    """The image id of an imported image among ``known`` ids, or None."""
    if item.stem in known:
        return item.stem
    m = _UPLOAD_PREFIX.match(item.stem)
    if m and m.group(1) in known:
        return m.group(1)
    return None


def rasterize_import(item: ImportedImage, height: int, width: int, table: dict[str, int],
                     line_width: int = 1) -> np.ndarray:
    """H×W uint8 scribble map (255 = not annotated) of an imported image at the real image size.

    Raises DataError when the export declares another size, or a label is not in ``table``.
    """
    if item.size is not None and item.size != (height, width):
        raise DataError(f"{item.name}: declared size {item.size[0]}x{item.size[1]} (HxW) differs from the image "
                        f"{height}x{width}")
    sy, sx = (height / 100.0, width / 100.0) if item.units == "percent" else (1.0, 1.0)
    strokes = []
    for label, xy in item.strokes:
        xy = np.clip(xy, -_COORD_LIMIT, _COORD_LIMIT)
        rc = np.stack([np.floor(xy[:, 1] * sy), np.floor(xy[:, 0] * sx)], axis=1).astype(np.int64)
        strokes.append((label, rc))
    return rasterize_strokes(strokes, height, width, table, line_width, source=item.name)


def read_export(path: str | os.PathLike, fmt: str | None = None) -> list[ImportedImage]:
    """Parse an export; ``fmt`` = ``"cvat"`` | ``"label-studio"`` | None (from the suffix: .xml / .json)."""
    path = Path(path)
    if fmt is None:
        fmt = {".xml": "cvat", ".json": "label-studio"}.get(path.suffix.lower())
        if fmt is None:
            raise DataError(f"{path}: cannot tell the format from the suffix; pass --format cvat|label-studio")
    if fmt == "cvat":
        return parse_cvat_xml(path)
    if fmt == "label-studio":
        return parse_label_studio_json(path)
    raise ValueError(f"format must be 'cvat' or 'label-studio', got {fmt!r}")
