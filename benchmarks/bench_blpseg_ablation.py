"""BLPSeg ablation on the synthetic benchmark and on the Weizmann horses (val split), same network (MobileNetV2 +
PPM/UPerNet at stride 4) and budget:

    full supervision | partial CE | BLPSeg w/o LAM | BLPSeg w/o BLP loss | BLPSeg | BLPSeg + self-training from 60 %

Reports mIoU overall and on the pixels farthest from any scribble (per image, the top quartile of the distance to
the nearest scribble pixel), where the label preference hurts most, and the mIoU of each quarter of the pixels by
that distance (nearest quarter first; the last one is the "far" mIoU). Datasets:

    synth        the synthetic benchmark (1,000 images of 128², its own simulated scribbles)
    horse        Weizmann horses, simulated scribbles that never leave the deep interior (legs/tails never drawn)
    horse-reach  the same horses and strokes, plus excursions into thin parts for 30 % of the strokes
                 (``simulate_scribbles(reach=0.3)``: thin parts annotated rarely instead of never)

Results are merged into benchmarks/results/blpseg_ablation.json (rows of other datasets/runs are kept); the whole
table is rewritten to blpseg_ablation.md and into README.md between the markers ``<!-- ablation-table -->`` and
``<!-- /ablation-table -->`` (only with the default ``--out``). Run from the repository root:

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
from weakseg.utils.io import read_label, replace_marked_section, write_json_atomic, write_text_atomic
from weakseg.utils.metrics import ConfusionMatrix

ROOT = Path(__file__).resolve().parents[1]
HORSES = ROOT.parent / "shared" / "data" / "weizmann-horse"

RUNS = [  # (row name, work-dir tag, preset kind, overrides; {st60} = 60 % of the iterations)
    ("full supervision", "full-supervision", "full", []),
    ("partial CE", "partial-ce", "partial_ce", []),
    ("BLPSeg w/o LAM", "blpseg-wo-lam", "blpseg", ["method.use_lam=false"]),
    ("BLPSeg w/o BLP loss", "blpseg-wo-blp-loss", "blpseg", ["method.use_blp=false"]),
    ("BLPSeg", "blpseg", "blpseg", []),
    # the paper's online self-training (§2.5d), switched on for the last 40 % of the run: the CPU presets leave it
    # off because at these budgets it confirms the immature network's mistakes (this row measures that)
    ("BLPSeg + self-training from 60 %", "blpseg-st60", "blpseg", ["method.self_training_start={st60}"]),
]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "blpseg_ablation"
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


def distance_quartile_miou(root: Path, scribble_dir: Path, pred_dir: Path, ids: list[str],
                           num_classes: int) -> list[float]:
    """mIoU over each quarter of the pixels by distance to the nearest scribble pixel, nearest quarter first.

    Per image, the distance d of every pixel to the nearest scribble pixel splits its labelled pixels at the
    quartiles q25, q50, q75 of d: quarter k holds q_k ≤ d < q_(k+1) (q0 = 0, q100 = ∞), so the last entry is the
    "far" mIoU (d ≥ q75). Quarters are equal in size up to ties in d. Confusion matrices are summed over the images
    of each quarter.
    """
    cms = [ConfusionMatrix(num_classes) for _ in range(4)]
    for i in ids:
        gt = read_label(root / "SegmentationClass" / f"{i}.png")
        scribble = read_label(scribble_dir / f"{i}.png")
        pred = read_label(pred_dir / f"{i}.png")
        labelled = gt != 255
        dist = ndimage.distance_transform_edt(scribble == 255)
        quarter = np.digitize(dist, np.quantile(dist[labelled], [0.25, 0.5, 0.75]))  # 0..3, d ≥ q75 → 3
        for k, cm in enumerate(cms):
            sel = labelled & (quarter == k)
            cm.update(pred[sel], gt[sel])
    return [cm.compute()["miou"] for cm in cms]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["synth", "horse", "horse-reach"],
                    choices=["synth", "horse", "horse-reach"])
    ap.add_argument("--runs", nargs="+", default=[r[0] for r in RUNS], choices=[r[0] for r in RUNS],
                    metavar="NAME", help="subset of the runs (default: all)")
    ap.add_argument("--iters", type=int, help="override every run's schedule.iters (same budget for all)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="training seeds per row (engine.seed); the table shows the mean and each seed's value")
    ap.add_argument("--work", default="work_dirs/bench", help="work folder")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="results path without suffix (README updated only for "
                                                           "the default)")
    args = ap.parse_args()
    work = Path(args.work)
    out = Path(args.out)
    results = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    for dataset in args.datasets:
        root, scribbles = prepare(dataset, work)
        for name, tag, kind, extra in RUNS:
            if name not in args.runs:
                continue
            preset = ROOT / "configs" / PRESETS[dataset.split("-")[0]][kind]
            iters = args.iters or load_config(preset).schedule.iters
            per_seed = []
            earlier = results.get(f"{dataset}/{name}", {})
            earlier_minutes = {r["seed"]: r.get("minutes") for r in earlier.get("seeds", [])
                               if earlier.get("iters") == iters}
            for seed in args.seeds:
                run_dir = work / (f"{dataset}-{tag}" + (f"-seed{seed}" if seed else ""))
                sets = [f"data.root={root}", f"data.scribble_dir={scribbles}", f"engine.work_dir={run_dir}",
                        f"engine.seed={seed}", *(x.format(st60=int(0.6 * iters)) for x in extra)]
                if args.iters:
                    sets += [f"schedule.iters={args.iters}"]
                cfg = load_config(preset, sets)
                finished = (run_dir / "model_final.pth").exists()  # then train() only evaluates again
                t0 = time.time()
                res = train(cfg, resume=True)
                minutes = (time.time() - t0) / 60
                if finished and earlier_minutes.get(seed) is not None:
                    minutes = earlier_minutes[seed]  # keep the training time, not the re-evaluation's
                ids = (Path(root) / cfg.data.val_list).read_text().split()
                quarters = distance_quartile_miou(Path(root), Path(scribbles), run_dir / "eval" / "predictions", ids,
                                                  len(res["metrics"]["iou"]))
                far = quarters[-1]
                per_seed.append({"seed": seed, "miou": res["metrics"]["miou"], "miou_far": far,
                                 "miou_quarters": quarters, "minutes": minutes})
                print(f"{dataset:11s} {name:32s} seed {seed}  mIoU {100 * res['metrics']['miou']:6.2f}  "
                      f"far {100 * far:6.2f}  ({minutes:.1f} min)", flush=True)
            results[f"{dataset}/{name}"] = {
                "dataset": dataset, "run": name, "iters": iters, "seeds": per_seed,
                "miou": float(np.mean([r["miou"] for r in per_seed])),
                "miou_far": float(np.mean([r["miou_far"] for r in per_seed])),
                "miou_quarters": np.mean([r["miou_quarters"] for r in per_seed], axis=0).tolist()}
            write_json_atomic(out.with_suffix(".json"), results)  # after every row: a long sweep can be stopped
    order = {f"{d}/{r[0]}": k for k, (d, r) in enumerate((d, r) for d in ("synth", "horse", "horse-reach")
                                                           for r in RUNS)}
    results = dict(sorted(results.items(), key=lambda kv: order.get(kv[0], len(order))))
    write_json_atomic(out.with_suffix(".json"), results)
    table = markdown_table(results)
    write_text_atomic(out.with_suffix(".md"), table)
    if out.resolve() == DEFAULT_OUT.resolve():  # side experiments (--out elsewhere) leave the README alone
        update_readme_table(ROOT / "README.md", table)
    print(table)
    print(json.dumps({"written": str(out.with_suffix(".json"))}))


def update_readme_table(readme: Path, table: str) -> None:
    """Replace what lies between ``<!-- ablation-table -->`` and ``<!-- /ablation-table -->`` (if both are there)."""
    replace_marked_section(readme, "ablation-table", table)


def markdown_table(results: dict) -> str:
    """One row per dataset × run: mean over seeds, and the per-seed values when there are several."""
    def cell(r: dict, key: str) -> str:
        seeds = r.get("seeds", [])
        text = f"{100 * r[key]:.2f}"
        return text + (" (" + " / ".join(f"{100 * s[key]:.1f}" for s in seeds) + ")" if len(seeds) > 1 else "")

    def quarters(r: dict) -> str:  # rows from before the quartile breakdown have none
        return " / ".join(f"{100 * v:.1f}" for v in r["miou_quarters"]) if "miou_quarters" in r else "–"

    lines = ["| dataset | run | iterations | seeds | mIoU | mIoU far from scribbles | mIoU by distance quarter, "
             "near → far |", "|---|---|---:|---:|---:|---:|---|"]
    for r in results.values():
        lines.append(f"| {r['dataset']} | {r['run']} | {r['iters']} | {len(r.get('seeds', [])) or 1} | "
                     f"{cell(r, 'miou')} | {cell(r, 'miou_far')} | {quarters(r)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
