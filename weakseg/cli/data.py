"""``weakseg data …``: dataset preparation commands.

Sub-commands (each prints a one-line summary: counts, skipped files, output path):

* ``trainaug``: write ``ImageSets/Segmentation/train_aug.txt`` (every SegmentationClassAug stem not in val.txt).
* ``scribbles``: ScribbleSup XML → scribble PNGs (``--line-width 1`` BLPSeg, ``3`` rloss/CDSP).
* ``context``: PASCAL-Context 459-class ``.mat`` LabelMaps → 60-class PNGs (single LUT lookup).
* ``simulate-scribbles``: simulated scribbles from dense masks (optionally shrunk / dropped).
* ``synth``: the synthetic scribble benchmark.
* ``image-labels``: image-level labels ``{id: [class ids]}`` from XML, dense masks or scribbles.
* ``saliency``: U²-Net-p saliency maps (8-bit PNGs) for SBE, resumable.
* ``web``: index a web image set (class folders or the reference's flat ``<class>_<n>`` names) into a list.
* ``coseg``: co-segment an indexed web set class by class (WebCoseg's masks), resumable per class.
* ``coco``: MS COCO instance JSON → 81-class label PNGs (255 = crowd), train/val id lists and image-level tags.
* ``import-scribbles``: strokes and points of a CVAT XML / Label Studio JSON export → a ``weakseg annotate`` folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from weakseg.data.scribble_xml import MAX_SIZE, MAX_UNCHECKED_SIZE
from weakseg.utils.io import DataError


def _print_problems(problems: list[str], limit: int = 5) -> None:
    for p in problems[:limit]:
        print(f"  skipped: {p}", file=sys.stderr)
    if len(problems) > limit:
        print(f"  ... and {len(problems) - limit} more", file=sys.stderr)


def cmd_trainaug(args: argparse.Namespace) -> int:
    from weakseg.data.voc_tools import build_trainaug_list

    ids = build_trainaug_list(args.root, aug_dir=args.aug_dir, val_list=args.val_list, out=args.out)
    out = Path(args.out) if Path(args.out).is_absolute() else Path(args.root) / args.out
    print(f"train_aug: {len(ids)} ids -> {out}")
    return 0


def cmd_scribbles(args: argparse.Namespace) -> int:
    from weakseg.data.scribble_xml import convert_scribble_folder

    n_ok, n_skip, problems = convert_scribble_folder(args.xml, args.out, dataset=args.dataset,
                                                     line_width=args.line_width, image_dir=args.images,
                                                     classes=args.classes, max_unchecked=args.max_size)
    _print_problems(problems)
    print(f"scribbles: {n_ok} converted, {n_skip} skipped (line width {args.line_width}, {args.dataset}) -> {args.out}")
    return 0 if n_ok or not n_skip else 1


def cmd_context(args: argparse.Namespace) -> int:
    from pathlib import Path

    from weakseg.data.context import context_meta, convert_context_folder
    from weakseg.utils.io import write_text_atomic

    n_ok, n_skip, problems = convert_context_folder(args.mat_dir, args.labels, args.labels59, args.out)
    _print_problems(problems)
    # the 60 class names next to the label folder, so that the dataset root describes its classes
    classes = Path(args.classes_out) if args.classes_out else Path(args.out).resolve().parent / "classes.txt"
    write_text_atomic(classes, "".join(f"{n}\n" for n in context_meta(args.labels59).classes))
    print(f"context: {n_ok} converted, {n_skip} skipped -> {args.out} (class names: {classes})")
    return 0 if n_ok or not n_skip else 1


def cmd_simulate(args: argparse.Namespace) -> int:
    from weakseg.data.simulate import simulate_folder

    n_ok, n_skip, problems = simulate_folder(
        args.root, args.list, args.label_dir, args.out, seed=args.seed, strokes_per_region=args.strokes_per_region,
        width=args.width, shrink=args.shrink, drop=args.drop, erosion=args.erosion,
        min_region_area=args.min_region_area, reach=args.reach)
    _print_problems(problems)
    out = Path(args.out) if Path(args.out).is_absolute() else Path(args.root) / args.out
    print(f"simulate-scribbles: {n_ok} written, {n_skip} skipped (seed {args.seed}) -> {out}")
    return 0 if n_ok or not n_skip else 1


def cmd_synth(args: argparse.Namespace) -> int:
    import time

    from weakseg.data.synth import generate_synth
    from weakseg.data.synth_demo import generate_synth_demo
    from weakseg.data.synth_web import generate_synth_web

    # variant → (generator, default number of images, default side)
    variants = {"bench": (generate_synth, 1000, 128), "demo": (generate_synth_demo, 400, 64),
                "web": (generate_synth_web, 700, 128)}
    generate, num, size = variants[args.variant]
    num, size = args.num or num, args.size or size
    t0 = time.perf_counter()
    info = generate(args.out, num_images=num, size=size, seed=args.seed, val_fraction=args.val_fraction)
    print(f"synth: {info['num_train']} train + {info['num_val']} val images of {size}x{size} "
          f"(variant {args.variant}, seed {args.seed}) in {time.perf_counter() - t0:.1f} s -> {args.out}")
    return 0


def _classes_meta(classes: str | None):
    """DatasetMeta of ``--classes``: a classes.txt file or a dataset root holding one; the VOC classes when None."""
    from weakseg.data.dataset import meta_from_root
    from weakseg.data.meta import VOC_META

    if classes is None:
        return VOC_META
    path = Path(classes)
    root = path if path.is_dir() else path.parent
    if not (root / "classes.txt").is_file() or (not path.is_dir() and path.name != "classes.txt"):
        raise DataError(f"{path}: expected a classes.txt file or a folder holding one")
    return meta_from_root(root)


def cmd_web(args: argparse.Namespace) -> int:
    from weakseg.data.web import index_web_images

    meta = _classes_meta(args.classes)
    summary = index_web_images(args.root, meta, layout=args.layout, image_dir=args.image_dir,
                               min_side=args.min_side, out=args.out)
    _print_problems(summary.problems)
    out = Path(args.out) if Path(args.out).is_absolute() else Path(args.root) / args.out
    skipped = ", ".join(f"{n} {kind}" for kind, n in summary.skipped.items() if n) or "none"
    print(f"web: {len(summary.items)} images of {len(summary.per_class)} classes ({summary.layout} layout), "
          f"skipped: {skipped} -> {out}")
    return 0


def cmd_coseg(args: argparse.Namespace) -> int:
    import time

    import yaml

    from weakseg.data.web import group_by_class, read_web_list, web_mask_path
    from weakseg.modules.coseg import CosegModels, config_from_dict, cosegment_class
    from weakseg.utils.io import save_label_png

    meta = _classes_meta(args.classes)
    list_path = Path(args.list) if Path(args.list).is_absolute() else Path(args.root) / args.list
    items = read_web_list(list_path, args.root, meta.num_classes)
    overrides = {}
    for kv in args.set or []:
        key, sep, value = kv.partition("=")
        if not sep:
            raise DataError(f"--set expects key=value, got {kv!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    try:
        cfg = config_from_dict(overrides)
    except (TypeError, ValueError) as exc:
        raise DataError(f"--set: {exc}") from exc
    groups = group_by_class(items)
    if args.only:
        wanted = {meta.classes.index(n) if n in meta.classes else -1 for n in args.only}
        if -1 in wanted:
            raise DataError(f"--only: unknown class names {[n for n in args.only if n not in meta.classes]}")
        groups = {c: g for c, g in groups.items() if c in wanted}
    models = None
    written = 0
    for class_id, group in groups.items():
        todo = [it for it in group if not web_mask_path(args.out, it).exists()]
        if not todo:  # resume: this class is complete
            continue
        models = models or CosegModels(cfg, device=args.device)
        t0 = time.perf_counter()
        result = cosegment_class([it.path for it in group], class_id, cfg, models=models, seed=args.seed)
        for item, mask in zip(group, result.masks):
            save_label_png(web_mask_path(args.out, item), mask, meta.palette)
        written += len(group)
        print(f"coseg: {meta.classes[class_id]}: {len(group)} images, k={result.num_clusters}, "
              f"{int(result.outliers.sum())} outliers, {(time.perf_counter() - t0) / len(group):.2f} s/image")
    print(f"coseg: {written} masks written for {len(groups)} classes (seed {args.seed}) -> {args.out}")
    return 0


def cmd_image_labels(args: argparse.Namespace) -> int:
    from weakseg.data.dataset import meta_from_root, read_list_file
    from weakseg.data.voc_tools import build_image_labels

    root = Path(args.root)
    list_path = Path(args.list) if Path(args.list).is_absolute() else root / args.list
    ids = read_list_file(list_path)
    labels, problems = build_image_labels(root, ids, args.source, out=args.out, meta=meta_from_root(root),
                                          xml_dir=args.xml_dir, label_dir=args.label_dir,
                                          scribble_dir=args.scribble_dir)
    _print_problems(problems)
    print(f"image-labels: {len(labels)} ids from {args.source}, {len(problems)} skipped -> {args.out}")
    return 0 if labels or not problems else 1


def cmd_import_scribbles(args: argparse.Namespace) -> int:
    from weakseg.annotate.store import open_store
    from weakseg.data.scribble_import import read_export

    items = read_export(args.export, args.format)
    store, _ = open_store(args.images, args.out, args.classes, ext=args.ext, list_file=args.list)
    n_ok, n_empty, problems = store.import_scribbles(items, line_width=args.line_width)
    _print_problems(problems)
    ignored = sum(item.ignored for item in items)
    print(f"import-scribbles: {n_ok} images imported, {n_empty} without scribbles, {len(problems)} skipped, "
          f"{ignored} non-scribble shapes ignored (line width {args.line_width}) -> {store.out}")
    return 0 if n_ok or not problems else 1


def cmd_saliency(args: argparse.Namespace) -> int:
    import time

    from weakseg.data.dataset import read_list_file
    from weakseg.data.saliency import SaliencyModel, compute_saliency_folder

    root = Path(args.root)
    list_path = Path(args.list) if Path(args.list).is_absolute() else root / args.list
    ids = read_list_file(list_path)
    t0 = time.perf_counter()
    model = SaliencyModel(num_threads=args.threads)
    written = compute_saliency_folder(root, ids, args.image_dir, args.out, image_ext=args.image_ext, model=model)
    out = Path(args.out) if Path(args.out).is_absolute() else root / args.out
    print(f"saliency: {written} written, {len(ids) - written} already there ({len(ids)} ids, U2-Net-p) in "
          f"{time.perf_counter() - t0:.1f} s -> {out}")
    return 0


def cmd_coco(args: argparse.Namespace) -> int:
    import time

    from weakseg.data.coco import convert_coco

    t0 = time.perf_counter()
    results = convert_coco(args.root, splits=tuple(args.splits), year=args.year, label_dir=args.label_dir,
                           tags=args.tags, force=args.force)
    for split, res in results.items():
        _print_problems(res.problems)
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(res.skipped.items())) or "none"
        print(f"coco {split}{args.year}: {len(res.ids)} ids, {res.written} label PNGs written, skipped: {skipped}")
    print(f"coco: done in {time.perf_counter() - t0:.1f} s -> {Path(args.root) / args.label_dir}, "
          f"{Path(args.root) / 'ImageSets/Segmentation'}, {args.tags}, classes.txt")
    return 0


def add_data_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data`` and its sub-commands to a top-level sub-parser set; each leaf sets ``func(args) -> int``."""
    data = subparsers.add_parser("data", help="prepare datasets (lists, scribbles, Context labels, synth)",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")

    p = sub.add_parser("trainaug", help="write the VOC train_aug id list")
    p.add_argument("--root", required=True, help="VOC2012 folder")
    p.add_argument("--aug-dir", default="SegmentationClassAug", help="augmented labels (relative to --root)")
    p.add_argument("--val-list", default="ImageSets/Segmentation/val.txt", help="ids to exclude")
    p.add_argument("--out", default="ImageSets/Segmentation/train_aug.txt", help="list to write")
    p.set_defaults(func=cmd_trainaug)

    p = sub.add_parser("scribbles", help="ScribbleSup XML -> scribble PNGs")
    p.add_argument("--xml", required=True, help="folder of <id>.xml")
    p.add_argument("--out", required=True, help="output folder of <id>.png")
    p.add_argument("--dataset", choices=("voc", "context"), default="voc", help="tag table")
    p.add_argument("--line-width", type=int, choices=(1, 3), default=1, help="1 = BLPSeg, 3 = rloss/CDSP")
    p.add_argument("--images", default=None, help="image folder for the declared-size check")
    p.add_argument("--max-size", type=int, default=MAX_UNCHECKED_SIZE, metavar="PIXELS",
                   help=f"largest declared side accepted for an XML without its image (default "
                        f"{MAX_UNCHECKED_SIZE}; up to {MAX_SIZE})")
    p.add_argument("--classes", default=None,
                   help="context: class list of the labels (classes.txt or 59_labels.txt; default <out>/../classes.txt)")
    p.set_defaults(func=cmd_scribbles)

    p = sub.add_parser("context", help="PASCAL-Context .mat (459 classes) -> 60-class PNGs")
    p.add_argument("--mat-dir", required=True, help="folder of <id>.mat with LabelMap")
    p.add_argument("--labels", required=True, help="labels.txt (459 classes)")
    p.add_argument("--labels59", required=True, help="59_labels.txt")
    p.add_argument("--out", required=True, help="output folder of <id>.png")
    p.add_argument("--classes-out", help="where to write the 60 class names (default: <out>/../classes.txt)")
    p.set_defaults(func=cmd_context)

    p = sub.add_parser("simulate-scribbles", help="simulate scribbles from dense masks")
    p.add_argument("--root", required=True, help="dataset root")
    p.add_argument("--list", required=True, help="id list (relative to --root or absolute)")
    p.add_argument("--label-dir", default="SegmentationClass", help="dense masks (relative to --root)")
    p.add_argument("--out", required=True, help="output folder (relative to --root or absolute)")
    p.add_argument("--strokes-per-region", type=int, default=1)
    p.add_argument("--width", type=int, default=3, help="stroke width in pixels")
    p.add_argument("--shrink", type=float, default=0.0, help="fraction of each stroke's length removed")
    p.add_argument("--drop", type=float, default=0.0, help="probability that a stroke is removed")
    p.add_argument("--erosion", type=float, default=0.4, help="core depth as a fraction of the region's max depth")
    p.add_argument("--min-region-area", type=int, default=100, help="smaller regions get a dot")
    p.add_argument("--reach", type=float, default=0.0,
                   help="probability that a stroke also runs into the region's most remote thin part")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("synth", help="generate the synthetic scribble benchmark")
    p.add_argument("--out", required=True, help="output dataset root")
    p.add_argument("--num", type=int, default=None, help="number of images (default: bench 1000, demo 400)")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default: bench 128, demo 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--variant", choices=("bench", "demo", "web"), default="bench",
                   help="bench: the hard benchmark (ablations); demo: fewer, larger objects that identify their class "
                        "by shape, colour and texture (learnt in a minute; `weakseg demo`); web: a web image set "
                        "(one class per image, clutter, off-topic images; masks for scoring only; default 700)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("web", help="index a web image set (class folders or flat <class>_<n> names) into a list")
    p.add_argument("--root", required=True, help="web root")
    p.add_argument("--classes", default=None, help="classes.txt of the target dataset (default: the VOC classes)")
    p.add_argument("--layout", choices=("auto", "folders", "flat"), default="auto")
    p.add_argument("--image-dir", default="web_images", help="image folder of the flat layout (relative to --root)")
    p.add_argument("--min-side", type=int, default=32, help="images with a shorter side are skipped as tiny")
    p.add_argument("--out", default="web_train_list.txt", help="list file (relative to --root or absolute)")
    p.set_defaults(func=cmd_web)

    p = sub.add_parser("coseg", help="co-segment an indexed web set, class by class, into <out>/<id>.png masks")
    p.add_argument("--root", required=True, help="web root")
    p.add_argument("--list", default="web_train_list.txt", help="web list (relative to --root or absolute)")
    p.add_argument("--out", required=True, help="mask folder (classes whose masks all exist are skipped)")
    p.add_argument("--classes", default=None, help="classes.txt of the target dataset (default: the VOC classes)")
    p.add_argument("--only", nargs="+", default=None, metavar="CLASS", help="co-segment only these class names")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="CosegConfig field (YAML value), repeatable")
    p.add_argument("--device", default="cpu", help="torch device of the feature CNN")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_coseg)

    p = sub.add_parser("image-labels", help="image-level labels {id: [class ids]} as JSON")
    p.add_argument("--root", required=True, help="dataset root (classes.txt there sets the classes; VOC otherwise)")
    p.add_argument("--list", required=True, help="id list (relative to --root or absolute)")
    p.add_argument("--source", choices=("xml", "label", "scribble"), required=True)
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--xml-dir", default="Annotations")
    p.add_argument("--label-dir", default="SegmentationClass")
    p.add_argument("--scribble-dir", default="Scribbles")
    p.set_defaults(func=cmd_image_labels)

    p = sub.add_parser("saliency", help="U2-Net-p saliency maps <out>/<id>.png for SBE (skips existing files)")
    p.add_argument("--root", required=True, help="dataset root")
    p.add_argument("--list", required=True, help="id list (relative to --root or absolute)")
    p.add_argument("--out", required=True, help="output folder (relative to --root or absolute), e.g. Sal")
    p.add_argument("--image-dir", default="JPEGImages", help="image folder (relative to --root)")
    p.add_argument("--image-ext", default=".jpg", help="image suffix")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime CPU threads (default: its choice)")
    p.set_defaults(func=cmd_saliency)

    p = sub.add_parser("import-scribbles", help="CVAT XML / Label Studio JSON strokes -> a weakseg annotate folder")
    p.add_argument("export", help="CVAT 'for images' annotations.xml or Label Studio JSON export")
    p.add_argument("--images", required=True, help="the image folder (ids are file stems; sizes are checked)")
    p.add_argument("--out", required=True, help="annotation folder (as for weakseg annotate --out)")
    p.add_argument("--classes", help="class names, background first (optional when OUT/classes.txt exists)")
    p.add_argument("--format", choices=("cvat", "label-studio"), help="default: from the suffix (.xml / .json)")
    p.add_argument("--line-width", type=int, choices=(1, 3), default=1, help="1 = BLPSeg, 3 = rloss/CDSP")
    p.add_argument("--list", help="only these ids of the image folder")
    p.add_argument("--ext", help="image suffix when the folder mixes several")
    p.set_defaults(func=cmd_import_scribbles)

    p = sub.add_parser("coco", help="COCO instances JSON -> 81-class label PNGs, id lists, image-level tags")
    p.add_argument("--root", required=True, help="COCO root: annotations/instances_<split><year>.json, <split><year>/")
    p.add_argument("--splits", nargs="+", default=["train", "val"], help="splits to convert")
    p.add_argument("--year", default="2014", choices=("2014", "2017"))
    p.add_argument("--label-dir", default="SegmentationClass", help="label folder under --root")
    p.add_argument("--tags", default="tags.json", help="image-level tags JSON (relative to --root or absolute)")
    p.add_argument("--force", action="store_true", help="rewrite label PNGs that exist already")
    p.set_defaults(func=cmd_coco)


def run_data_command(args: argparse.Namespace) -> int:
    """Dispatch a parsed ``data`` command, turning DataError into a one-line message and exit code 2."""
    try:
        return int(args.func(args))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
