"""PASCAL-Scribble (ScribbleSup) XML → scribble PNG (spec §1.2).

XML schema: ``<annotation>`` with ``<size><width>W</width><height>H</height></size>`` and zero or more
``<polygon>`` elements, one per stroke (open polyline), each with a ``<tag>`` class name and ``<point>`` children
holding ``<X>`` (column) and ``<Y>`` (row), 0-based integers.

Output: H×W uint8 palette PNG, value = class index, 255 = not annotated. Strokes are drawn in XML order and later
strokes overwrite earlier ones; points outside the image are clamped to it; ``background`` strokes write 0.

* ``line_width=1`` reproduces BLPSeg's ``xml2png_*.py``: for each consecutive point pair (r1, c1) → (r2, c2) with
  m = max(|r2 − r1|, |c2 − c1|), pixels (trunc(r1 + i·(r2 − r1)/m), trunc(c1 + i·(c2 − c1)/m)) for i = 0..m−1,
  plus both endpoints (a DDA line, truncation toward zero).
* ``line_width=3`` approximates rloss/CDSP's MATLAB ``insertShape(..., 'LineWidth', 3)``: the same 1-pixel line
  dilated with a 3×3 square, i.e. every line pixel also marks its 8 neighbours (clipped to the image).

XML is parsed safely: files containing a DOCTYPE or ENTITY declaration are refused before parsing (no entity
expansion, no external entities), as are non-UTF-8 encodings that would hide such declarations from the check.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from weakseg.data.meta import voc_palette
from weakseg.utils.io import DataError, image_size, save_label_png

MAX_SIZE = 20000            # largest accepted image side declared in an XML file
# largest side accepted on the XML's word alone (no image to check it against): a canvas of this size is 16 MB;
# VOC and Context images are at most 500 pixels a side
MAX_UNCHECKED_SIZE = 4096
MAX_XML_BYTES = 64 << 20    # refuse absurdly large XML files before reading them whole

_VOC_TAGS = (
    "background", "plane", "bike", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "table", "dog",
    "horse", "motorbike", "person", "plant", "sheep", "sofa", "train", "monitor",
)
_CONTEXT_EXTRA_TAGS = (
    "bag", "bed", "bench", "book", "building", "cabinet", "ceiling", "cloth", "computer", "cup", "door", "fence",
    "floor", "flower", "food", "grass", "ground", "keyboard", "light", "mountain", "mouse", "curtain", "platform",
    "sign", "plate", "road", "rock", "shelves", "sidewalk", "sky", "snow", "bedclothes", "track", "tree", "truck",
    "wall", "water", "window", "wood",
)

# exact tag strings of the ScribbleSup XML files → class index (spec §1.2)
VOC_SCRIBBLE_TAGS: dict[str, int] = {tag: i for i, tag in enumerate(_VOC_TAGS)}
CONTEXT_SCRIBBLE_TAGS: dict[str, int] = {tag: i for i, tag in enumerate(_VOC_TAGS + _CONTEXT_EXTRA_TAGS)}

Stroke = tuple[str, np.ndarray]  # (tag, N×2 int64 (row, col) points)


def read_xml_root(path: str | os.PathLike) -> ET.Element:
    """Parse an XML file safely and return its root element.

    Raises ``DataError`` naming the file when it is too large, is not UTF-8/ASCII, declares a DOCTYPE or ENTITY
    (billion-laughs and external-entity attacks need one), or is not well-formed.
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_XML_BYTES:
            raise DataError(f"{path}: XML file larger than {MAX_XML_BYTES} bytes")
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read XML ({exc})") from exc
    return parse_xml_bytes(data, str(path))


def parse_xml_bytes(data: bytes, source: str = "<xml>") -> ET.Element:
    """Safe ``ElementTree.fromstring`` for untrusted bytes (see :func:`read_xml_root`)."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in data:
        raise DataError(f"{source}: only UTF-8/ASCII XML is accepted")
    upper = data.upper()
    if b"<!DOCTYPE" in upper or b"<!ENTITY" in upper:
        raise DataError(f"{source}: XML with a DOCTYPE/ENTITY declaration is refused (entity expansion is unsafe)")
    try:
        return ET.fromstring(data)
    except ET.ParseError as exc:
        raise DataError(f"{source}: malformed XML ({exc})") from exc


def _int_text(elem: ET.Element | None, what: str, source: str) -> int:
    if elem is None or elem.text is None or not elem.text.strip():
        raise DataError(f"{source}: missing {what}")
    text = elem.text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        val = float(text)
    except ValueError as exc:
        raise DataError(f"{source}: {what} is not a number: {text!r}") from exc
    if not np.isfinite(val):
        raise DataError(f"{source}: {what} is not finite: {text!r}")
    return int(val)


def parse_scribble_xml(path: str | os.PathLike, image_path: str | os.PathLike | None = None,
                       max_unchecked: int = MAX_UNCHECKED_SIZE) -> tuple[int, int, list[Stroke]]:
    """Read one ScribbleSup XML file.

    Args:
        path: the XML file.
        image_path: the matching image; when it exists its header size must equal the declared ``<size>``.
        max_unchecked: largest declared side accepted when there is no image to check it against (the canvas is
            allocated at the declared size, so an untrusted file must not choose it freely).

    Returns:
        (height, width, strokes); each stroke is (tag, N×2 int64 array of (row, col) points, unclamped).

    Raises:
        DataError: unsafe or malformed XML, a missing/non-positive/oversized ``<size>``, a size that differs from
            the image, a stroke without a tag, or a non-numeric coordinate.
    """
    src = str(path)
    root = read_xml_root(path)
    size = root.find("size")
    if size is None:
        raise DataError(f"{src}: missing <size>")
    width = _int_text(size.find("width"), "<size><width>", src)
    height = _int_text(size.find("height"), "<size><height>", src)
    if not (0 < width <= MAX_SIZE and 0 < height <= MAX_SIZE):
        raise DataError(f"{src}: declared size {height}x{width} (HxW) is outside 1..{MAX_SIZE}")
    if image_path is not None and Path(image_path).is_file():
        real = image_size(image_path)
        if real != (height, width):
            raise DataError(f"{src}: declared size {height}x{width} (HxW) differs from image {image_path} "
                            f"{real[0]}x{real[1]}")
    elif max(height, width) > max_unchecked:
        raise DataError(f"{src}: declared size {height}x{width} (HxW) is larger than {max_unchecked} pixels a side "
                        f"and there is no image to check it against; pass --images DIR (the size is then checked "
                        f"against the image) or --max-size {max(height, width)} to allow it")
    strokes: list[Stroke] = []
    for k, poly in enumerate(root.iter("polygon")):
        tag_el = poly.find("tag")
        if tag_el is None or not (tag_el.text or "").strip():
            raise DataError(f"{src}: <polygon> #{k} has no <tag>")
        pts = [(_int_text(p.find("Y"), f"<polygon> #{k} <Y>", src), _int_text(p.find("X"), f"<polygon> #{k} <X>", src))
               for p in poly.findall("point")]
        if not pts:
            continue  # a stroke without points draws nothing
        strokes.append((tag_el.text.strip(), np.asarray(pts, dtype=np.int64).reshape(-1, 2)))
    return height, width, strokes


def polyline_pixels(pts: np.ndarray) -> np.ndarray:
    """Pixels of a polyline through N×2 (row, col) points (coordinates ≥ 0), BLPSeg DDA per segment.

    For each consecutive pair (r1, c1) → (r2, c2) with m = max(|r2 − r1|, |c2 − c1|) > 1 the pixels
    (trunc(r1 + i·(r2 − r1)/m), trunc(c1 + i·(c2 − c1)/m)), i = 0..m−1, are marked; every point itself is marked.
    Returns an M×2 int64 array (unordered, may repeat pixels). All segments are computed at once.
    """
    pts = np.asarray(pts, dtype=np.int64).reshape(-1, 2)
    if len(pts) < 2:
        return pts.copy()
    p1, d = pts[:-1], np.diff(pts, axis=0)
    m = np.abs(d).max(axis=1)
    reps = np.where(m > 1, m, 0)
    seg = np.repeat(np.arange(len(m)), reps)
    i = np.arange(int(reps.sum()), dtype=np.int64) - np.repeat(np.cumsum(reps) - reps, reps)
    # (i·Δ)/m evaluated like the reference (integer product, then one division), then truncated toward zero
    rr = np.trunc(p1[seg, 0] + (i * d[seg, 0]) / m[seg]).astype(np.int64)
    cc = np.trunc(p1[seg, 1] + (i * d[seg, 1]) / m[seg]).astype(np.int64)
    return np.concatenate([pts, np.stack([rr, cc], axis=1)], axis=0)


def line_pixels(r1: int, c1: int, r2: int, c2: int) -> np.ndarray:
    """BLPSeg DDA line from (r1, c1) to (r2, c2): M×2 int64 (row, col), endpoints included (coordinates ≥ 0)."""
    return polyline_pixels(np.array([[r1, c1], [r2, c2]], dtype=np.int64))


_SQUARE3 = np.array([(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)], dtype=np.int64)


def rasterize_strokes(strokes: list[Stroke], height: int, width: int, table: dict[str, int], line_width: int = 1,
                      source: str | None = None) -> np.ndarray:
    """Draw strokes onto an H×W uint8 canvas filled with 255 (not annotated).

    Args:
        strokes: (tag, N×2 (row, col)) in drawing order; later strokes overwrite earlier ones.
        height, width: canvas size.
        table: tag → class index (``VOC_SCRIBBLE_TAGS`` or ``CONTEXT_SCRIBBLE_TAGS``).
        line_width: 1 (BLPSeg DDA) or 3 (the 1-px line dilated by a 3×3 square; rloss/CDSP).
        source: file name used in error messages.

    Returns:
        H×W uint8, class index on stroke pixels, 255 elsewhere.
    """
    if line_width not in (1, 3):
        raise ValueError(f"line_width must be 1 or 3, got {line_width}")
    canvas = np.full((height, width), 255, dtype=np.uint8)
    prefix = f"{source}: " if source else ""
    for tag, pts in strokes:
        if tag not in table:
            raise DataError(f"{prefix}unknown scribble tag {tag!r}")
        cls = table[tag]
        pts = np.asarray(pts, dtype=np.int64).reshape(-1, 2)
        if len(pts) == 0:
            continue
        pts = np.stack([np.clip(pts[:, 0], 0, height - 1), np.clip(pts[:, 1], 0, width - 1)], axis=1)
        pix = polyline_pixels(pts)
        if line_width == 3:
            pix = (pix[:, None, :] + _SQUARE3[None]).reshape(-1, 2)
            keep = (pix[:, 0] >= 0) & (pix[:, 0] < height) & (pix[:, 1] >= 0) & (pix[:, 1] < width)
            pix = pix[keep]
        canvas[pix[:, 0], pix[:, 1]] = cls
    return canvas


def scribble_table(dataset: str) -> dict[str, int]:
    """Tag table by dataset name: ``"voc"`` (21 classes) or ``"context"`` (60 classes)."""
    tables = {"voc": VOC_SCRIBBLE_TAGS, "context": CONTEXT_SCRIBBLE_TAGS}
    if dataset not in tables:
        raise ValueError(f"dataset must be one of {sorted(tables)}, got {dataset!r}")
    return tables[dataset]


# ScribbleSup tag → the spellings dataset class lists use for it (compared lower-case, without spaces/underscores)
_TAG_SPELLINGS: dict[str, tuple[str, ...]] = {
    "plane": ("aeroplane", "airplane"), "bike": ("bicycle",), "table": ("diningtable",), "plant": ("pottedplant",),
    "monitor": ("tvmonitor", "tv"), "motorbike": ("motorcycle",),
}


def _norm_name(name: str) -> str:
    return name.strip().lower().replace(" ", "").replace("_", "").replace("-", "")


def read_class_list(path: str | os.PathLike) -> tuple[str, ...]:
    """Class names in index order, background first, from ``classes.txt`` (one name per line, as written by
    ``weakseg data context``) or from the official ``59_labels.txt`` (``idx: name`` lines; background prepended)."""
    from weakseg.data.context import read_label_names

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: class list not found")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if lines and all(":" in ln and ln.split(":", 1)[0].strip().isdigit() for ln in lines):
        names = read_label_names(path)
        if sorted(names) != list(range(1, len(names) + 1)):
            raise DataError(f"{path}: class indices must be 1..{len(names)}")
        return ("background",) + tuple(names[i] for i in sorted(names))
    return tuple(lines)


def context_tag_table(class_file: str | os.PathLike) -> dict[str, int]:
    """ScribbleSup Context tag → class index, taken from the dataset's own class list (spec §1.2–1.3).

    BLPSeg hard-codes the tag order (:data:`CONTEXT_SCRIBBLE_TAGS`) and assumes that it equals ``59_labels.txt``;
    when it does not, every scribble silently gets another class than the ground truth. Here each tag is looked up
    by name (with the ScribbleSup short spellings: plane = aeroplane, table = diningtable, …) in the same list the
    60-class lookup table is built from, and the two lists are checked against each other: a tag without a class,
    a class without a tag or two tags on one class is an error that names both.

    Raises:
        DataError: naming ``class_file`` and this module's tag list.
    """
    names = read_class_list(class_file)
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        index.setdefault(_norm_name(name), i)
    table, problems = {}, []
    for tag in CONTEXT_SCRIBBLE_TAGS:
        found = [index[k] for k in (_norm_name(tag), *_TAG_SPELLINGS.get(tag, ())) if k in index]
        if not found:
            problems.append(f"tag {tag!r} matches no class")
        else:
            table[tag] = found[0]
    owners: dict[int, list[str]] = {}
    for tag, i in table.items():
        owners.setdefault(i, []).append(tag)
    problems += [f"tags {tags} share class {i} ({names[i]!r})" for i, tags in owners.items() if len(tags) > 1]
    problems += [f"class {i} ({names[i]!r}) has no tag" for i in range(len(names)) if i not in owners]
    if problems:
        raise DataError(f"{class_file} and the ScribbleSup Context tag list (CONTEXT_SCRIBBLE_TAGS in {__file__}) "
                        f"disagree: " + "; ".join(problems[:8]) + (" ..." if len(problems) > 8 else ""))
    return table


def convert_scribble_xml(path: str | os.PathLike, dataset: str = "voc", line_width: int = 1,
                         image_path: str | os.PathLike | None = None,
                         max_unchecked: int = MAX_UNCHECKED_SIZE) -> np.ndarray:
    """Parse and rasterize one XML file → H×W uint8 scribble map (255 = not annotated)."""
    height, width, strokes = parse_scribble_xml(path, image_path=image_path, max_unchecked=max_unchecked)
    return rasterize_strokes(strokes, height, width, scribble_table(dataset), line_width, source=str(path))


def convert_scribble_folder(xml_dir: str | os.PathLike, out_dir: str | os.PathLike, dataset: str = "voc",
                            line_width: int = 1, image_dir: str | os.PathLike | None = None,
                            classes: str | os.PathLike | None = None,
                            max_unchecked: int = MAX_UNCHECKED_SIZE) -> tuple[int, int, list[str]]:
    """Convert every ``<xml_dir>/<id>.xml`` to ``<out_dir>/<id>.png`` (palette PNG, written atomically).

    Args:
        xml_dir: folder of ScribbleSup XML files.
        out_dir: output folder (created).
        dataset: ``"voc"`` or ``"context"`` tag table.
        line_width: 1 (BLPSeg) or 3 (rloss/CDSP).
        image_dir: optional image folder; when ``<image_dir>/<id>.jpg`` (or .png) exists its size is checked.
        classes: Context only: the class list the label PNGs use (``classes.txt`` written by ``weakseg data
            context``, or ``59_labels.txt``); default ``<out_dir>/../classes.txt``. The tag table comes from it
            (:func:`context_tag_table`), and a ``classes.txt`` already in the dataset root must list the same names.
        max_unchecked: largest declared side accepted for an XML without its image (see
            :func:`parse_scribble_xml`); larger ones are skipped with a problem that says how to allow them.

    Returns:
        (number converted, number skipped, problems) where each problem is ``"<file>: <reason>"``. Malformed or
        unsafe files are skipped, not fatal.
    """
    xml_dir, out_dir = Path(xml_dir), Path(out_dir)
    if not xml_dir.is_dir():
        raise DataError(f"{xml_dir}: scribble XML folder not found")
    table = scribble_table(dataset)
    if dataset == "context":
        root_classes = out_dir.resolve().parent / "classes.txt"
        class_file = Path(classes) if classes is not None else root_classes
        if not class_file.is_file():
            raise DataError(f"{class_file}: Context scribbles need the class list of the labels (the classes.txt "
                            f"that `weakseg data context` writes, or 59_labels.txt): pass --classes")
        table = context_tag_table(class_file)
        if root_classes.is_file() and root_classes.resolve() != class_file.resolve():
            a, b = read_class_list(class_file), read_class_list(root_classes)
            if [_norm_name(n) for n in a] != [_norm_name(n) for n in b]:
                first = next((i for i, (x, y) in enumerate(zip(a, b)) if _norm_name(x) != _norm_name(y)),
                             min(len(a), len(b)))
                raise DataError(f"{class_file} and {root_classes} list the Context classes in different orders "
                                f"(first difference at index {first}); the scribbles and the label PNGs must share "
                                "one class list")
    palette = voc_palette()
    n_ok, problems = 0, []
    for path in sorted(xml_dir.glob("*.xml")):
        image_path = None
        if image_dir is not None:
            for ext in (".jpg", ".png", ".jpeg"):
                cand = Path(image_dir) / f"{path.stem}{ext}"
                if cand.is_file():
                    image_path = cand
                    break
        try:
            h, w, strokes = parse_scribble_xml(path, image_path=image_path, max_unchecked=max_unchecked)
            label = rasterize_strokes(strokes, h, w, table, line_width, source=str(path))
        except DataError as exc:
            problems.append(str(exc))
            continue
        save_label_png(out_dir / f"{path.stem}.png", label, palette)
        n_ok += 1
    return n_ok, len(problems), problems
