"""MS COCO 2014 instance annotations → semantic label PNGs, id lists and image-level tags (SBE's COCO setting, §4.7).

Input: a COCO root with ``annotations/instances_<split>2014.json`` and the images under ``<split>2014/``.

Output (under the same root, so that it is a weakseg dataset root with ``data.image_dir: "."``):

* ``SegmentationClass/<split>2014/<stem>.png``: H×W uint8 palette PNG, 0 = background, 1..80 = the 80 categories in
  increasing COCO category id (the usual WSSS order: person 1, bicycle 2, …, toothbrush 80), 255 = crowd region;
* ``ImageSets/Segmentation/<split>.txt``: ids ``<split>2014/<stem>``, one per image that has at least one valid
  annotation (the common WSSS lists drop images without any: 82,081 train / 40,137 val ids);
* ``tags.json``: ``{id: [0, class ids…]}`` (background 0 first, as ``weakseg data image-labels`` writes it),
  the categories of every annotation with a known category, crowd ones included (an annotation whose outline is
  malformed is left out of the mask only: its category is still present in the image);
* ``classes.txt``: the 81 class names, background first.

Overlap rule: non-crowd instances are painted in decreasing pixel area (ties: annotation order), so a smaller
instance lying on a larger one stays visible. Crowd regions (``iscrowd = 1``) become 255 only where no non-crowd
instance lies: a crowd of people behind a labelled person keeps the person.

Polygons and RLE are decoded by ``pycocotools.mask`` (the reference implementation). Its C decoder does not check
run lengths against the image size, so every RLE is validated first (run lengths summing to exactly H·W) and
polygon coordinates are clamped to the image; the annotation files are untrusted input.

Problems are counted, never silent: malformed JSON or a wrong category table is an error naming the file; an
annotation with an unknown category id or image id, or a malformed segmentation, is skipped; an image whose file is
missing, unreadable or of another size than declared is skipped (with its annotations).
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from weakseg.data.meta import DatasetMeta, voc_palette
from weakseg.utils.io import DataError, image_size, load_json, save_label_png, write_json_atomic, write_text_atomic

# (COCO category id, name) of the 80 categories of COCO 2014/2017 detection, in id order
COCO_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"),
    (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"),
    (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"),
    (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"),
    (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"),
    (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"),
    (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
)
CATEGORY_TO_CLASS: dict[int, int] = {cid: i + 1 for i, (cid, _) in enumerate(COCO_CATEGORIES)}
COCO_CLASSES: tuple[str, ...] = ("background",) + tuple(name for _, name in COCO_CATEGORIES)
COCO_META = DatasetMeta(COCO_CLASSES, palette=voc_palette())
CROWD = 255
MAX_SIDE = 20000  # largest accepted declared image side (guards the H×W allocation)


@dataclass
class CocoSplitResult:
    """Outcome of converting one split.

    Attributes:
        ids: listed ids (``<split>2014/<stem>``), in image-id order.
        tags: {id: [0, class ids…]}.
        written: label PNGs written (existing ones are kept unless ``force``).
        skipped: counts by reason (``missing image``, ``unknown category``, ``bad segmentation``, …).
        problems: one line per skipped item, naming the file and the image or annotation id.
    """

    ids: list[str] = field(default_factory=list)
    tags: dict[str, list[int]] = field(default_factory=dict)
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def skip(self, reason: str, message: str) -> None:
        self.skipped[reason] += 1
        self.problems.append(message)


def _mask_api():
    try:
        from pycocotools import mask as mask_api
    except ImportError as exc:  # an optional dependency: say how to get it
        raise DataError("weakseg data coco needs pycocotools (the COCO polygon/RLE decoder). "
                        "Fix: pip install 'pycocotools>=2.0.7'  (or pip install -e '.[coco]')") from exc
    return mask_api


def _rle_string_counts(counts: bytes) -> list[int]:
    """Run lengths of a compressed COCO RLE string (the format ``pycocotools`` writes: 5 data bits per character
    offset by 48, bit 0x20 = more characters follow, bit 0x10 of the last one = negative; runs after the second are
    stored as differences to the run two before). Used only to validate lengths before the C decoder runs."""
    out: list[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            if p >= len(counts):
                raise ValueError("truncated RLE string")
            c = counts[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"invalid RLE character {chr(counts[p])!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
            if k > 13:
                raise ValueError("RLE run length out of range")
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def decode_segmentation(segm, height: int, width: int) -> np.ndarray:
    """One annotation's ``segmentation`` (polygon list, uncompressed or compressed RLE) → H×W bool mask.

    Raises:
        ValueError: a malformed polygon (not a list of ≥ 3 finite (x, y) pairs), an RLE whose ``size`` is not
            [H, W], or whose run lengths are negative or do not sum to H·W.
    """
    mask_api = _mask_api()
    if isinstance(segm, list):
        polys = []
        for poly in segm:
            if (not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in poly)):
                raise ValueError("polygon must be a flat list of at least 3 (x, y) number pairs")
            arr = np.asarray(poly, dtype=np.float64)
            if not np.all(np.isfinite(arr)):
                raise ValueError("polygon has non-finite coordinates")
            # clamped to the image: COCO polygons overshoot by a pixel at most, and huge values would make the
            # rasteriser allocate a point per unit of length
            arr[0::2] = np.clip(arr[0::2], 0.0, float(width))
            arr[1::2] = np.clip(arr[1::2], 0.0, float(height))
            polys.append(arr.tolist())
        if not polys:
            raise ValueError("empty polygon list")
        rle = mask_api.merge(mask_api.frPyObjects(polys, height, width))
    elif isinstance(segm, dict):
        size, counts = segm.get("size"), segm.get("counts")
        if size != [height, width]:
            raise ValueError(f"RLE size {size!r} differs from the image size [{height}, {width}]")
        if isinstance(counts, list):
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
                raise ValueError("RLE counts must be non-negative integers")
            runs = counts
        elif isinstance(counts, (str, bytes)):
            counts = counts.encode("ascii", "replace") if isinstance(counts, str) else counts
            runs = _rle_string_counts(counts)
            if any(v < 0 for v in runs):
                raise ValueError("RLE string decodes to a negative run length")
        else:
            raise ValueError("RLE counts must be a list or a string")
        if sum(runs) != height * width:
            raise ValueError(f"RLE run lengths sum to {sum(runs)}, not H·W = {height * width}")
        if isinstance(counts, list):
            rle = mask_api.frPyObjects({"size": [height, width], "counts": counts}, height, width)
        else:
            rle = {"size": [height, width], "counts": counts}
    else:
        raise ValueError(f"segmentation must be a polygon list or an RLE mapping, got {type(segm).__name__}")
    with warnings.catch_warnings():  # pycocotools 2.0.x's Cython decode predates NumPy 2's __array__(copy=) keyword
        warnings.simplefilter("ignore", DeprecationWarning)
        mask = mask_api.decode(rle)
    return np.asarray(mask, dtype=bool).reshape(height, width)


def rasterize_instances(instances: list[tuple[int, np.ndarray, bool]], height: int, width: int) -> np.ndarray:
    """(class index, H×W bool mask, is crowd) list → H×W uint8 semantic map with the module's overlap rule.

    Non-crowd masks are painted in decreasing area (stable: equal areas keep their order), so smaller instances end
    on top; crowd masks set 255 where no non-crowd instance lies.
    """
    out = np.zeros((height, width), dtype=np.uint8)
    covered = np.zeros((height, width), dtype=bool)
    solid = [(cls, m) for cls, m, crowd in instances if not crowd]
    for cls, m in sorted(solid, key=lambda item: -int(item[1].sum())):
        out[m] = cls
        covered |= m
    for _, m, crowd in instances:
        if crowd:
            out[m & ~covered] = CROWD
    return out


def _check_categories(categories, source: str) -> None:
    if not isinstance(categories, list):
        raise DataError(f"{source}: 'categories' must be a list")
    known = dict(COCO_CATEGORIES)
    for cat in categories:
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int):
            raise DataError(f"{source}: malformed category entry {cat!r}")
        cid, name = cat["id"], cat.get("name")
        if cid in known and name != known[cid]:
            raise DataError(f"{source}: category id {cid} is {name!r} here but {known[cid]!r} in COCO 2014; "
                            "this is not a COCO instances file (or its categories were renumbered)")


def load_instances(path: str | os.PathLike) -> dict:
    """Read and structurally check a COCO instances JSON (DataError naming the file when it is not one)."""
    path = Path(path)
    data = load_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: a COCO instances file must hold a JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: missing or malformed {key!r} list (not a COCO instances file)")
    _check_categories(data["categories"], str(path))
    return data


def convert_coco_split(root: str | os.PathLike, split: str, year: str = "2014", annotations: str | None = None,
                       image_dir: str | None = None, label_dir: str = "SegmentationClass", force: bool = False
                       ) -> CocoSplitResult:
    """Convert one split (``train`` or ``val``) of COCO ``year``; see the module docstring for the layout.

    Args:
        root: COCO root; outputs go under it.
        split: split name; the folder is ``<split><year>``.
        year: ``"2014"`` (SBE) or ``"2017"``.
        annotations: instances JSON (default ``<root>/annotations/instances_<split><year>.json``).
        image_dir: image folder (default ``<root>/<split><year>``).
        label_dir: label folder under ``root``; PNGs go to ``<label_dir>/<split><year>/``.
        force: rewrite label PNGs that exist already (otherwise they are kept: the command resumes).

    Returns:
        A :class:`CocoSplitResult`. The list, tags and classes files are written by :func:`convert_coco`.
    """
    root = Path(root)
    folder = f"{split}{year}"
    ann_path = Path(annotations) if annotations else root / "annotations" / f"instances_{folder}.json"
    img_dir = Path(image_dir) if image_dir else root / folder
    if not img_dir.is_dir():
        raise DataError(f"{img_dir}: image folder not found (unpack {folder}.zip under {root})")
    data = load_instances(ann_path)
    src = str(ann_path)
    res = CocoSplitResult()

    images: dict[int, dict] = {}
    for entry in data["images"]:
        ok = (isinstance(entry, dict) and isinstance(entry.get("id"), int) and isinstance(entry.get("file_name"), str)
              and all(isinstance(entry.get(k), int) and 0 < entry[k] <= MAX_SIDE for k in ("height", "width")))
        name = entry.get("file_name") if isinstance(entry, dict) else None
        if ok and (PurePosixPath(name).name != name or name in ("", ".", "..") or "\\" in name):
            ok = False
        if not ok:
            res.skip("malformed image entry", f"{src}: malformed image entry {str(entry)[:120]}")
            continue
        if entry["id"] in images:
            raise DataError(f"{src}: image id {entry['id']} is listed twice")
        images[entry["id"]] = entry

    per_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or not isinstance(ann.get("image_id"), int):
            res.skip("malformed annotation", f"{src}: malformed annotation {str(ann)[:120]}")
            continue
        aid = ann.get("id")
        if ann["image_id"] not in images:
            res.skip("unknown image id", f"{src}: annotation {aid}: unknown image id {ann['image_id']}")
            continue
        if ann.get("category_id") not in CATEGORY_TO_CLASS:
            res.skip("unknown category", f"{src}: annotation {aid}: unknown category id {ann.get('category_id')!r}")
            continue
        per_image.setdefault(ann["image_id"], []).append(ann)

    out_dir = root / label_dir / folder
    palette = COCO_META.palette
    for image_id in sorted(images):
        entry = images[image_id]
        h, w = entry["height"], entry["width"]
        stem = Path(entry["file_name"]).stem
        sid = f"{folder}/{stem}"
        image_path = img_dir / entry["file_name"]
        if not image_path.is_file():
            res.skip("missing image", f"{image_path}: image of id {image_id} not found")
            continue
        try:
            real = image_size(image_path)
        except DataError as exc:
            res.skip("unreadable image", str(exc))
            continue
        if real != (h, w):
            res.skip("size mismatch", f"{image_path}: {real[0]}x{real[1]} but {src} declares {h}x{w}")
            continue
        out_path = out_dir / f"{stem}.png"
        draw = force or not out_path.is_file()
        instances, classes = [], set()
        for ann in per_image.get(image_id, []):
            crowd = bool(ann.get("iscrowd", 0))
            classes.add(CATEGORY_TO_CLASS[ann["category_id"]])  # the category is present even if its outline is bad
            if draw:
                try:
                    mask = decode_segmentation(ann.get("segmentation"), h, w)
                except (ValueError, TypeError) as exc:
                    res.skip("bad segmentation", f"{src}: annotation {ann.get('id')} (image {image_id}): {exc}")
                    continue
                instances.append((CATEGORY_TO_CLASS[ann["category_id"]], mask, crowd))
        if not classes:
            res.skipped["no annotations"] += 1  # normal in COCO (≈ 1 % of the images): counted, not listed
            continue
        if draw:
            save_label_png(out_path, rasterize_instances(instances, h, w), palette)
            res.written += 1
        res.ids.append(sid)
        res.tags[sid] = [0] + sorted(classes)
    return res


def convert_coco(root: str | os.PathLike, splits: tuple[str, ...] = ("train", "val"), year: str = "2014",
                 label_dir: str = "SegmentationClass", tags: str = "tags.json", force: bool = False
                 ) -> dict[str, CocoSplitResult]:
    """Convert ``splits`` and write ``ImageSets/Segmentation/<split>.txt``, ``<tags>`` (all splits) and
    ``classes.txt`` under ``root`` (atomic writes). Returns {split: result}."""
    root = Path(root)
    results: dict[str, CocoSplitResult] = {}
    all_tags: dict[str, list[int]] = {}
    for split in splits:
        res = convert_coco_split(root, split, year=year, label_dir=label_dir, force=force)
        results[split] = res
        if not res.ids:
            raise DataError(f"{root}: no usable image in the {split}{year} split "
                            f"({sum(res.skipped.values())} skipped: {dict(res.skipped)})")
        write_text_atomic(root / "ImageSets" / "Segmentation" / f"{split}.txt", "".join(f"{i}\n" for i in res.ids))
        all_tags.update(res.tags)
    tags_path = Path(tags) if Path(tags).is_absolute() else root / tags
    write_json_atomic(tags_path, all_tags)
    write_text_atomic(root / "classes.txt", "".join(f"{n}\n" for n in COCO_CLASSES))
    return results
