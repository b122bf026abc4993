"""Benchmark 1 of WebCoseg: co-segmentation quality on the Weizmann horses (all photos as ONE class).

The masks are used only for scoring. Three rows on the same images, side by side:

* U²-Net-p saliency alone, thresholded at 0.5 (the baseline to beat);
* the built-in co-segmentation (weakseg.modules.coseg, default CosegConfig);
* the same without cross-image voting (``voting=False``: each image picks its foreground clusters and prototype
  from its own saliency), and without outlier rejection (``outlier_z=0``: every photo here shows a horse).

Metric (Rubinstein et al. 2013): J = foreground IoU averaged over images; P = pixel accuracy averaged over images.
The co-segmentation is scored on its decided foreground (``CosegResult.foreground``, before the 255 band).
Seconds per image come from the first (full) co-segmentation run, split by stage; the other rows reuse its
saliency maps and descriptors (same models, same inputs), so only the first run's times are meaningful.

    OMP_NUM_THREADS=1 python benchmarks/bench_coseg.py              # all 260 photos (~10 min on 2 busy cores)
    OMP_NUM_THREADS=1 python benchmarks/bench_coseg.py --limit 40   # a quick look

Writes benchmarks/results/coseg.{json,md} and, for the default output, the README table between
``<!-- coseg-table -->`` markers.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from weakseg.modules.coseg import CosegConfig, CosegModels, cosegment_class, saliency_masks  # noqa: E402
from weakseg.utils.io import (read_label, read_rgb, replace_marked_section, write_json_atomic,  # noqa: E402
                              write_text_atomic)
from weakseg.utils.machine import cpu_name  # noqa: E402

HORSE = ROOT.parent / "shared" / "data" / "weizmann-horse"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "coseg"


class _Memo:
    """Wraps a model method so that the same input array is computed once (keyed by its bytes and shape)."""

    def __init__(self, fn):
        self.fn, self.cache = fn, {}

    def __call__(self, image: np.ndarray) -> np.ndarray:
        key = hashlib.sha1(image.tobytes()).hexdigest() + str(image.shape)
        if key not in self.cache:
            self.cache[key] = self.fn(image)
        return self.cache[key]


class _MemoSaliency:
    def __init__(self, model):
        self.predict = _Memo(model.predict)


def scores(pred: list[np.ndarray], gt: list[np.ndarray]) -> dict:
    """Mean J (foreground IoU; 1 when both are empty) and mean P (pixel accuracy) over images, in %."""
    j, p = [], []
    for a, b in zip(pred, gt):
        union = (a | b).sum()
        j.append((a & b).sum() / union if union else 1.0)
        p.append((a == b).mean())
    return {"J": 100 * float(np.mean(j)), "P": 100 * float(np.mean(p)), "per_image_J": [round(float(x), 4) for x in j]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=HORSE, help="weizmann-horse folder (VOC layout)")
    ap.add_argument("--limit", type=int, default=0, help="use every n-th photo to keep about this many (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results stem (.json and .md are written)")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    ids = sorted(p.stem for p in (args.root / "JPEGImages").glob("*.jpg"))
    if not ids:
        raise SystemExit(f"{args.root}/JPEGImages: no photos found")
    if args.limit:
        ids = ids[:: max(1, len(ids) // args.limit)][: args.limit]
    images = [read_rgb(args.root / "JPEGImages" / f"{i}.jpg") for i in ids]
    gts = [read_label(args.root / "SegmentationClass" / f"{i}.png") == 1 for i in ids]
    load_before = os.getloadavg()

    cfg = CosegConfig()
    models = CosegModels(cfg)
    models.saliency = _MemoSaliency(models.saliency)
    models.descriptors = _Memo(models.descriptors)
    t0 = time.perf_counter()
    full = cosegment_class(images, 1, cfg, models=models, seed=args.seed)
    wall = time.perf_counter() - t0
    novote = cosegment_class(images, 1, dataclasses.replace(cfg, voting=False), models=models, seed=args.seed)
    keep_all = cosegment_class(images, 1, dataclasses.replace(cfg, outlier_z=0.0), models=models, seed=args.seed)
    sal = saliency_masks(images, 1, cfg, saliency=models.saliency)

    rows = [
        ("U²-Net-p saliency alone (≥ 0.5)", scores([m > 0 for m in sal], gts), None),
        ("co-segmentation without cross-image voting", scores(novote.foreground, gts), None),
        ("co-segmentation without outlier rejection", scores(keep_all.foreground, gts), None),
        ("co-segmentation (default CosegConfig)", scores(full.foreground, gts), full.seconds_per_image()),
    ]
    result = {
        "dataset": f"weizmann-horse, {len(ids)} photos as one class (masks used only for scoring)",
        "command": "OMP_NUM_THREADS=1 python benchmarks/bench_coseg.py"
                   + (f" --limit {args.limit}" if args.limit else ""),
        "cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "seed": args.seed, "config": dataclasses.asdict(cfg),
        "num_clusters": full.num_clusters, "outliers": [ids[i] for i in np.flatnonzero(full.outliers)],
        "wall_seconds": round(wall, 1),
        "rows": [{"method": name, "J": round(s["J"], 2), "P": round(s["P"], 2),
                  "seconds_per_image": None if t is None else {k: round(v, 3) for k, v in t.items()},
                  "per_image_J": dict(zip(ids, s["per_image_J"]))} for name, s, t in rows],
    }
    base_j = rows[0][1]["J"]
    result["gain_over_saliency_J"] = round(rows[-1][1]["J"] - base_j, 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out.with_suffix(".json"), result)

    sec = full.seconds_per_image()
    table = ["| method | J (%) | P (%) | s / image |", "|---|---:|---:|---:|"]
    for name, s, t in rows:
        secs = "" if t is None else f"{t['total']:.2f}"
        table.append(f"| {name} | {s['J']:.2f} | {s['P']:.2f} | {secs} |")
    stages = ", ".join(f"{k} {v:.2f}" for k, v in sec.items() if k != "total")
    md = [f"# Co-segmentation on {result['dataset']}", "", *table, "",
          f"Per-image seconds of the co-segmentation by stage: {stages} (total {sec['total']:.2f}).",
          f"k = {full.num_clusters} clusters (elbow rule); {len(result['outliers'])} image(s) rejected as outliers "
          f"({', '.join(result['outliers']) or 'none'}).",
          f"CPU: {result['cpu']}, {result['cores']} cores, torch threads {result['torch_threads']}; load average "
          f"before/after (1, 5, 15 min): {result['load_average_before']} / {result['load_average_after']}.",
          f"Command: `{result['command']}`", ""]
    write_text_atomic(args.out.with_suffix(".md"), "\n".join(md))
    print("\n".join(md))

    readme = ROOT / "README.md"
    if args.out == DEFAULT_OUT and readme.is_file():
        replace_marked_section(readme, "coseg-table", "\n".join([
            *table, "", f"`{result['command']}` on {result['cpu']} ({result['cores']} cores, shared; load average "
            f"{result['load_average_before'][0]:.1f} at the start)."]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
