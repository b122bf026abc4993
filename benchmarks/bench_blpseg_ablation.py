"""BLPSeg ablation on the synthetic benchmark and on the Weizmann horses (val split), same network (MobileNetV2 +
PPM/UPerNet at stride 4) and budget:

    full supervision | partial CE | BLPSeg w/o LAM | BLPSeg w/o BLP loss | BLPSeg w/o self-training | BLPSeg

Reports mIoU overall and on the pixels farthest from any scribble (per image, the top quartile of the distance to
the nearest scribble pixel), where the label preference hurts most. Datasets:

    synth        the synthetic benchmark (1,000 images of 128², its own simulated scribbles)
    horse        Weizmann horses, simulated scribbles that never leave the deep interior (legs/tails never drawn)
    horse-reach  the same horses and strokes, plus excursions into thin parts for 30 % of the strokes
                 (``simulate_scribbles(reach=0.3)``: thin parts annotated rarely instead of never)

Results are merged into benchmarks/results/blpseg_ablation.json (rows of other datasets/runs are kept) and the
whole table is rewritten to blpseg_ablation.md. Run from the repository root:

    python benchmarks/bench_blpseg_ablation.py [--datasets synth horse horse-reach] [--runs NAME ...] [--iters N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from weakseg.data.simulate import simulate_folder
from weakseg.engine.config import load_config
from weakseg.engine.trainer import train
from weakseg.utils.io import read_label, write_json_atomic, write_text_atomic
from weakseg.utils.metrics import ConfusionMatrix

ROOT = Path(__file__).resolve().parents[1]
HORSES = ROOT.parent / "shared" / "data" / "weizmann-horse"

RUNS = [  # (name, preset kind, method overrides)
    ("full supervision", "full", []),
    ("partial CE", "partial_ce", []),
    ("BLPSeg w/o LAM", "blpseg", ["method.use_lam=false"]),
    ("BLPSeg w/o BLP loss", "blpseg", ["method.use_blp=false"]),
    ("BLPSeg w/o self-training", "blpseg", ["method.self_training_start=null"]),
    ("BLPSeg", "blpseg", []),
]
REACH = 0.3  # horse-reach: probability of an excursion into a thin part per stroke

PRESETS = {
    "synth": {
        "full": "full/full_mnv2-os32-uper_b8-300i_synth-96.yaml",
        "partial_ce": "partial_ce/partial-ce_mnv2-os32-uper_b8-300i_synth-96.yaml",
        "blpseg": "blpseg/blpseg_mnv2-os32_b8-300i_synth-96.yaml",
    },
    "horse": {  # horse-reach uses the same presets
        "full": "full/full_mnv2-os32-uper_b8-800i_horse-192.yaml",
        "partial_ce": "partial_ce/partial-ce_mnv2-os32-uper_b8-800i_horse-192.yaml",
        "blpseg": "blpseg/blpseg_mnv2-os32_b8-800i_horse-192.yaml",
    },
}


def prepare(dataset: str, work: Path) -> tuple[str, str]:
    """(data.root, absolute scribble folder) for a dataset, generating what is missing."""
    if dataset == "synth":
        from weakseg.data.synth import generate_synth

        root = work / "synth"
        if not (root / "ImageSets/Segmentation/val.txt").exists():
            generate_synth(root, num_images=1000, size=128, seed=0)
        return str(root), str((root / "Scribbles").resolve())
    if not HORSES.is_dir():
        raise SystemExit(f"{HORSES} not found")
    reach = REACH if dataset == "horse-reach" else 0.0
    out = (work / f"{dataset}-scribbles").resolve()
    for split in ("train", "val"):
        simulate_folder(HORSES, HORSES / f"ImageSets/Segmentation/{split}.txt", "SegmentationClass", out, seed=0,
                        overwrite=False, reach=reach)
    return str(HORSES), str(out)


def far_pixel_miou(root: Path, scribble_dir: Path, pred_dir: Path, ids: list[str], num_classes: int) -> float:
    """mIoU over the pixels in the top quartile of distance to the nearest scribble pixel (per image)."""
    cm = ConfusionMatrix(num_classes)
    for i in ids:
        gt = read_label(root / "SegmentationClass" / f"{i}.png")
        scribble = read_label(scribble_dir / f"{i}.png")
        pred = read_label(pred_dir / f"{i}.png")
        dist = ndimage.distance_transform_edt(scribble == 255)
        far = dist >= np.quantile(dist[gt != 255], 0.75)
        cm.update(pred[far], np.where(far, gt, 255)[far])
    return cm.compute()["miou"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["synth", "horse", "horse-reach"],
                    choices=["synth", "horse", "horse-reach"])
    ap.add_argument("--runs", nargs="+", default=[r[0] for r in RUNS], choices=[r[0] for r in RUNS],
                    metavar="NAME", help="subset of the runs (default: all)")
    ap.add_argument("--iters", type=int, help="override every run's schedule.iters (same budget for all)")
    ap.add_argument("--work", default="work_dirs/bench", help="work folder")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "blpseg_ablation"))
    args = ap.parse_args()
    work = Path(args.work)
    out = Path(args.out)
    results = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    for dataset in args.datasets:
        root, scribbles = prepare(dataset, work)
        for name, kind, extra in RUNS:
            if name not in args.runs:
                continue
            tag = f"{dataset}-{name.lower().replace(' ', '-').replace('/', '')}"
            sets = [f"data.root={root}", f"data.scribble_dir={scribbles}", f"engine.work_dir={work / tag}", *extra]
            if args.iters:
                sets += [f"schedule.iters={args.iters}"]
                if kind == "blpseg" and "method.self_training_start" not in " ".join(extra):
                    sets += [f"method.self_training_start={int(0.6 * args.iters)}"]
            cfg = load_config(ROOT / "configs" / PRESETS[dataset.split("-")[0]][kind], sets)
            t0 = time.time()
            res = train(cfg, resume=True)
            minutes = (time.time() - t0) / 60
            ids = (Path(root) / cfg.data.val_list).read_text().split()
            far = far_pixel_miou(Path(root), Path(scribbles), work / tag / "eval" / "predictions", ids,
                                 len(res["metrics"]["iou"]))
            results[f"{dataset}/{name}"] = {"dataset": dataset, "run": name, "miou": res["metrics"]["miou"],
                                            "miou_far": far, "iters": cfg.schedule.iters, "minutes": minutes}
            write_json_atomic(out.with_suffix(".json"), results)  # after every run: a long sweep can be stopped
            print(f"{dataset:11s} {name:24s} mIoU {100 * res['metrics']['miou']:6.2f}  far {100 * far:6.2f}  "
                  f"({minutes:.1f} min)", flush=True)
    order = {f"{d}/{r[0]}": k for k, (d, r) in enumerate((d, r) for d in ("synth", "horse", "horse-reach")
                                                           for r in RUNS)}
    results = dict(sorted(results.items(), key=lambda kv: order.get(kv[0], len(order))))
    write_json_atomic(out.with_suffix(".json"), results)
    lines = ["| dataset | run | iterations | mIoU | mIoU far from scribbles |", "|---|---|---:|---:|---:|"]
    for r in results.values():
        lines.append(f"| {r['dataset']} | {r['run']} | {r['iters']} | {100 * r['miou']:.2f} | "
                     f"{100 * r['miou_far']:.2f} |")
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps({"written": str(out.with_suffix(".json"))}))


if __name__ == "__main__":
    main()
