"""CDSP (methods.md §3) on the Weizmann horses with simulated scribbles, next to full supervision, partial CE and
BLPSeg with the same network, crop, batch and iterations (MobileNetV2 + UPerNet at OS32, 192² crops, batch 8,
150 iterations: the BLPSeg ablation's horse-reach setting, benchmarks/bench_blpseg_ablation.py).

    python benchmarks/bench_cdsp.py                                  # everything (resumes finished runs)
    python benchmarks/bench_cdsp.py --parts stage1                   # only the pseudo-label sources
    python benchmarks/bench_cdsp.py --parts rows --rows CDSP --seeds 0 1 2

Parts:

    stage1      pseudo-label quality on the training split (eval_pseudo_labels) of the sources
                cam (CAMs of the horse tag), sbe (CAMs + U²-Net-p saliency + boundary net + random walk) and
                coseg (``pseudo.source: folder`` on weakseg's co-segmentation of the 200 training photos,
                weakseg/modules/coseg.py, written to <work>/coseg-horse), and saliency (``folder`` of sbe's
                U²-Net-p maps thresholded at 0.5: the salient-object detector alone); for cam also argmax([t, CAM])
                for t = 0.05 … 0.95 (the best threshold any CAM could reach)
    rows        val mIoU of CDSP and its ablations (w/o LoRM; w/o the distance entropy losses; trained on the
                pseudo-labels alone) on horse-reach scribbles, and of partial CE / BLPSeg / CDSP with dropped
                (``simulate-scribbles --drop 0.5``) or shrunk (``--shrink 0.5``) strokes (both on top of
                horse-reach's ``--reach 0.3``, seed 0)

Full supervision, partial CE and BLPSeg on horse-reach at 150 iterations are NOT re-trained: their rows are read
from benchmarks/results/blpseg_ablation.json (3 seeds of the same presets and settings). CDSP runs share their
stage-1 artefacts: a stage whose fingerprint matches a finished stage of an earlier run is copied from it.

Results are merged into benchmarks/results/cdsp.json after every run (a stopped run keeps its figures; several
processes with different --rows may run at once: the merge holds a file lock); cdsp.md, and README.md and
docs/cdsp.md between ``<!-- cdsp-table -->`` and ``<!-- /cdsp-table -->``, are rewritten at the end
(``--table-only`` just rewrites them).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import shutil
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_blpseg_ablation import HORSES, distance_quartile_miou, prepare  # noqa: E402

from weakseg.data.simulate import simulate_folder  # noqa: E402
from weakseg.engine.config import load_config  # noqa: E402
from weakseg.engine.pipeline import fingerprints, method_stages, run_pipeline  # noqa: E402
from weakseg.utils.io import (read_label, replace_marked_section, save_label_png, write_json_atomic,  # noqa: E402
                              write_text_atomic)
from weakseg.utils.metrics import ConfusionMatrix  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs/cdsp/cdsp_mnv2-os32-uper_b8-800i_horse-192.yaml"
BASELINES = {"partial CE": "configs/partial_ce/partial-ce_mnv2-os32-uper_b8-800i_horse-192.yaml",
             "BLPSeg": "configs/blpseg/blpseg_mnv2-os32_b8-800i_horse-192.yaml"}
ABLATION = ROOT / "benchmarks/results/blpseg_ablation.json"
DEFAULT_OUT = ROOT / "benchmarks/results/cdsp"
ITERS = 150
SCRIBBLES = {"reach": {}, "drop": {"drop": 0.5}, "shrink": {"shrink": 0.5}}  # on top of reach=0.3, seed 0
LOSS_OFF = {"scribble": 0, "lorm": 0, "dist_scribble": 0, "dist_pseudo": 0}

# stage-1 sources: (name, overrides); coseg's folder is filled in at run time
SOURCES = {
    "cam": ["method.pseudo.source=cam"],
    "sbe": ["method.pseudo.source=sbe"],
    "coseg": ["method.pseudo.source=folder"],
    "saliency": ["method.pseudo.source=folder"],  # U²-Net-p alone: sbe's make_saliency maps > SALIENCY_THRES
}
SALIENCY_THRES = 0.5  # the midpoint of the [0, 1] saliency, not tuned
# (row, scribbles, method, overrides): method cdsp runs the preset through `weakseg run` (pseudo-labels: coseg)
ROWS = [
    ("CDSP", "reach", "cdsp", []),
    ("CDSP w/o LoRM", "reach", "cdsp", ["method.loss.lorm=0"]),
    ("CDSP w/o distance entropy loss", "reach", "cdsp", ["method.loss.dist_scribble=0", "method.loss.dist_pseudo=0"]),
    ("pseudo-labels only", "reach", "cdsp", [f"method.loss.{k}={v}" for k, v in LOSS_OFF.items()]),
    ("partial CE", "drop", "partial CE", []),
    ("BLPSeg", "drop", "BLPSeg", []),
    ("CDSP", "drop", "cdsp", []),
    ("partial CE", "shrink", "partial CE", []),
    ("BLPSeg", "shrink", "BLPSeg", []),
    ("CDSP", "shrink", "cdsp", []),
]
REUSED = ("full supervision", "partial CE", "BLPSeg")  # horse-reach rows of blpseg_ablation.json


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-").replace("--", "-")


# ----------------------------------------------------------------------------------------------------------------
# data


def scribble_folders(work: Path) -> dict[str, str]:
    """{variant: absolute scribble folder}: horse-reach (bench_blpseg_ablation.prepare) and its drop/shrink twins."""
    root, reach = prepare("horse-reach", work)
    out = {"reach": reach}
    for name, extra in SCRIBBLES.items():
        if not extra:
            continue
        folder = (work / f"horse-reach-{name}-scribbles").resolve()
        for split in ("train", "val"):
            simulate_folder(HORSES, HORSES / f"ImageSets/Segmentation/{split}.txt", "SegmentationClass", folder,
                            seed=0, overwrite=False, reach=0.3, **extra)
        out[name] = str(folder)
    return out


def coseg_folder(work: Path) -> tuple[str, dict]:
    """Co-segment the 200 training photos as one class (id 1) into ``<work>/coseg-horse/<id>.png`` (kept when
    complete); returns the folder and the co-segmentation's facts (seconds per image, k, outliers)."""
    from weakseg.modules.coseg import CosegConfig, cosegment_class

    out = (work / "coseg-horse").resolve()
    info_path = out / "_coseg.json"
    ids = (HORSES / "ImageSets/Segmentation/train.txt").read_text().split()
    if all((out / f"{i}.png").exists() for i in ids):
        return str(out), json.loads(info_path.read_text()) if info_path.exists() else {}
    t0 = time.time()
    res = cosegment_class([HORSES / "JPEGImages" / f"{i}.jpg" for i in ids], 1, CosegConfig(), seed=0)
    out.mkdir(parents=True, exist_ok=True)
    for i, mask in zip(ids, res.masks):
        save_label_png(out / f"{i}.png", mask)
    info = {"seconds": time.time() - t0, "seconds_per_image": res.seconds_per_image(), "k": res.num_clusters,
            "outliers": int(res.outliers.sum()), "images": len(ids)}
    write_json_atomic(info_path, info)
    return str(out), info


# ----------------------------------------------------------------------------------------------------------------
# runs


def cdsp_config(work_dir: Path, scribbles: str, folder: str, extra: list[str], seed: int = 0, iters: int = ITERS):
    sets = [f"data.scribble_dir={scribbles}", f"engine.work_dir={work_dir}", f"engine.seed={seed}",
            f"schedule.iters={iters}", f"method.pseudo.folder={folder}", *extra]
    return load_config(PRESET, sets)


def share_stages(cfg, donors: list[Path]) -> list[str]:
    """Copy every finished stage of a donor work folder whose fingerprint equals this run's (stage 1, distance
    maps); returns the names copied. The copies' ``_done.json`` get a ``shared_from`` entry."""
    prints = fingerprints(method_stages(cfg), cfg)
    work = Path(cfg.engine.work_dir)
    copied = []
    for name, (h, _, _) in prints.items():
        if name in ("train_seg", "evaluate") or (work / name / "_done.json").exists():
            continue
        for donor in donors:
            done = donor / name / "_done.json"
            if donor != work and done.exists() and json.loads(done.read_text()).get("fingerprint") == h:
                shutil.copytree(donor / name, work / name, dirs_exist_ok=True)
                info = json.loads((work / name / "_done.json").read_text())
                info.update(shared_from=str(donor / name))
                write_json_atomic(work / name / "_done.json", info)
                copied.append(name)
                break
    return copied


def stage1_names(cfg) -> list[str]:
    names = [s.name for s in method_stages(cfg)]
    return names[:names.index("eval_pseudo_labels") + 1]


def saliency_folder(work: Path) -> str:
    """``<work>/saliency-horse/<id>.png`` = 1 where the U²-Net-p map of stage1-sbe's make_saliency exceeds
    SALIENCY_THRES, else 0 (needs the sbe source first)."""
    from PIL import Image

    src, out = work / "stage1-sbe" / "make_saliency", (work / "saliency-horse").resolve()
    if not (src / "_done.json").exists():
        raise SystemExit("source saliency reads the sbe source's make_saliency maps: run --sources sbe first")
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.glob("*.png")):
        if not (out / path.name).exists():
            sal = np.asarray(Image.open(path), dtype=np.float32) / 255
            save_label_png(out / path.name, (sal > SALIENCY_THRES).astype(np.uint8))
    return str(out)


def cam_threshold_sweep(work_dir: Path, ids: list[str]) -> dict[str, float]:
    """mIoU of argmax([t, CAM]) on the training split for t = 0.05 … 0.95 (one class: horse where CAM > t)."""
    thresholds = [round(0.05 * k, 2) for k in range(1, 20)]
    cms = {t: ConfusionMatrix(2) for t in thresholds}
    for i in ids:
        with np.load(work_dir / "make_cam" / f"{i}.npz") as z:
            cam = z["high_res"].astype(np.float32)
        gt = read_label(HORSES / "SegmentationClass" / f"{i}.png")
        cam = cam[0] if len(cam) else np.zeros(gt.shape, np.float32)
        for t, cm in cms.items():
            cm.update((cam > t).astype(np.int64), gt)
    return {f"{t:.2f}": cms[t].compute()["miou"] for t in thresholds}


def run_stage1(source: str, work: Path, scribbles: str, folder: str) -> dict:
    work_dir = work / f"stage1-{source}"
    sets = [f"data.scribble_dir={scribbles}", f"engine.work_dir={work_dir}", *SOURCES[source]]
    if source in ("coseg", "saliency"):
        sets += [f"method.pseudo.folder={folder if source == 'coseg' else saliency_folder(work)}"]
    cfg = load_config(PRESET, sets)
    t0 = time.time()
    share_stages(cfg, sorted(p for p in work.glob("stage1-*") if p.is_dir()))  # sbe reuses cam's CAM stages
    run_pipeline(cfg, only=stage1_names(cfg))
    m = json.loads((work_dir / "eval_pseudo_labels/metrics.json").read_text())
    row = {"source": source, "miou": m["miou"], "iou": m["iou"], "coverage": m["coverage"],
           "precision": m["precision"], "images": m["images"], "minutes": (time.time() - t0) / 60}
    if source in ("cam", "sbe"):
        row["eval_cam_miou"] = json.loads((work_dir / "eval_cam/metrics.json").read_text())["miou"]
    if source == "cam":
        ids = (HORSES / "ImageSets/Segmentation/train.txt").read_text().split()
        row["cam_threshold_sweep"] = cam_threshold_sweep(work_dir, ids)
    return row


def run_row(name: str, variant: str, kind: str, extra: list[str], seed: int, work: Path, folders: dict,
            coseg: str) -> dict:
    from weakseg.engine.trainer import train

    run_dir = (work / f"{variant}-{slug(name)}" / f"seed{seed}").resolve()
    scribbles = folders[variant]
    t0 = time.time()
    if kind == "cdsp":
        cfg = cdsp_config(run_dir, scribbles, coseg, extra, seed)
        donors = sorted(p.parent for p in work.glob("*/seed*/make_pseudo_distance/_done.json"))
        share_stages(cfg, donors)
        run_pipeline(cfg)
        metrics = json.loads((run_dir / "evaluate/metrics.json").read_text())
        pred_dir = run_dir / "evaluate/predictions"
        train_s = json.loads((run_dir / "train_seg/_done.json").read_text()).get("seconds")
    else:
        cfg = load_config(ROOT / BASELINES[kind], [f"data.root={HORSES}", f"data.scribble_dir={scribbles}",
                                                   f"engine.work_dir={run_dir}", f"engine.seed={seed}",
                                                   f"schedule.iters={ITERS}"])
        metrics = train(cfg, resume=True)["metrics"]
        pred_dir = run_dir / "eval/predictions"
        train_s = None
    ids = (HORSES / cfg.data.val_list).read_text().split()
    # distance quarters to the horse-reach scribbles (the same strokes for every row, as in the ablation table)
    quarters = (distance_quartile_miou(HORSES, Path(folders["reach"]), pred_dir, ids, 2)
                if pred_dir.is_dir() else None)
    return {"seed": seed, "miou": metrics["miou"], "iou": metrics["iou"], "miou_quarters": quarters,
            "minutes": (time.time() - t0) / 60, "train_seconds": train_s}


# ----------------------------------------------------------------------------------------------------------------
# results


@contextlib.contextmanager
def locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def merge(out: Path, update) -> dict:
    """Re-read the results file, apply ``update(results)`` and write it back, under a file lock."""
    path = out.with_suffix(".json")
    with locked(path):
        results = json.loads(path.read_text()) if path.exists() else {}
        update(results)
        write_json_atomic(path, results)
    return results


def reused_rows() -> dict:
    """full supervision / partial CE / BLPSeg on horse-reach at 150 iterations from blpseg_ablation.json."""
    ablation = json.loads(ABLATION.read_text())
    out = {}
    for name in REUSED:
        r = ablation.get(f"horse-reach/{name}")
        if r is None or r.get("iters") != ITERS:
            raise SystemExit(f"{ABLATION}: no horse-reach/{name} row at {ITERS} iterations; run "
                             f"benchmarks/bench_blpseg_ablation.py --datasets horse-reach --iters {ITERS} first")
        out[name] = {"run": name, "scribbles": "reach", "iters": r["iters"], "miou": r["miou"],
                     "seeds": [{"seed": s["seed"], "miou": s["miou"], "miou_quarters": s.get("miou_quarters")}
                               for s in r["seeds"]],
                     "from": "benchmarks/results/blpseg_ablation.json"}
    return out


def row_key(name: str, variant: str) -> str:
    return f"{variant}/{name}"


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


SOURCE_LABELS = {"cam": "cam (CAMs of the horse tag, t = 0.3)", "sbe": "sbe (CAMs + saliency + boundary net + walk)",
                 "coseg": "folder: co-segmentation (the preset's)", "saliency": "folder: U²-Net-p saliency > 0.5"}


def wrap(text: str) -> list[str]:
    return textwrap.wrap(text, 120, break_on_hyphens=False)


def markdown(results: dict) -> str:
    rows = {**{row_key(n, "reach"): r for n, r in reused_rows().items()}, **results.get("rows", {})}
    lines = wrap("**Stage-1 pseudo-labels** (training split, 200 images, against the ground-truth masks; pixels a "
                 "source leaves unlabelled (255) count as misses):")
    lines += ["", "| source | mIoU | background IoU | horse IoU | labelled pixels | precision on labelled |",
              "|---|---:|---:|---:|---:|---:|"]
    stage1 = results.get("stage1", {})
    for src in [s for s in SOURCES if s in stage1]:
        r = stage1[src]
        lines.append(f"| {SOURCE_LABELS[src]} | {pct(r['miou'])} | {pct(r['iou'][0])} | {pct(r['iou'][1])} | "
                     f"{pct(r['coverage'])} % | {pct(r['precision'])} % |")
    sweep = stage1.get("cam", {}).get("cam_threshold_sweep")
    if sweep:
        best = max(sweep, key=sweep.get)
        lines += [""] + wrap(f"CAM threshold sweep (argmax([t, CAM]), training split): best t = {best} with mIoU "
                             f"{pct(sweep[best])}; t = 0.05 / 0.30 / 0.50 / 0.80: "
                             + " / ".join(pct(sweep[t]) for t in ("0.05", "0.30", "0.50", "0.80")) + ".")
    lines += [""] + wrap(f"**Val mIoU** (60 images; {ITERS} iterations, MobileNetV2 + UPerNet OS32, 192² crops, batch "
                         "8; per-seed values in brackets; CDSP's pseudo-labels: the co-segmentation):")
    lines += ["", "| run | scribbles | seeds | mIoU | mIoU by distance quarter, near → far | from |",
              "|---|---|---:|---:|---|---|"]
    order = [row_key(n, "reach") for n in REUSED] + [row_key(n, v) for n, v, _, _ in ROWS]
    for key in order:
        r = rows.get(key)
        if r is None:
            continue
        seeds = r["seeds"]
        cell = pct(r["miou"]) + (" (" + " / ".join(f"{100 * s['miou']:.1f}" for s in seeds) + ")"
                                 if len(seeds) > 1 else "")
        qs = [s["miou_quarters"] for s in seeds if s.get("miou_quarters")]
        quarters = " / ".join(f"{100 * v:.1f}" for v in np.mean(qs, axis=0)) if qs else "–"
        src = "blpseg_ablation.json" if r.get("from") else "this benchmark"
        lines.append(f"| {r['run']} | {r['scribbles']} | {len(seeds)} | {cell} | {quarters} | {src} |")
    lines += ["", "**Targets** (robustness: seed-0 figures against seed-0 horse-reach figures):", ""]
    lines += [f"- {t}" for t in targets(rows)]
    return "\n".join(lines) + "\n"


def targets(rows: dict) -> list[str]:
    def get(name, variant="reach", seed=None):
        r = rows.get(row_key(name, variant))
        if r is None:
            return None
        if seed is None:
            return r["miou"]
        return next((s["miou"] for s in r["seeds"] if s["seed"] == seed), None)

    out = []
    cdsp, pce, full = get("CDSP"), get("partial CE"), get("full supervision")
    if None not in (cdsp, pce, full):
        out.append(f"CDSP − partial CE = {100 * (cdsp - pce):+.2f} mIoU (target ≥ +3): "
                   f"{'met' if cdsp - pce >= 0.03 else 'missed'}")
        out.append(f"CDSP / full supervision = {cdsp / full:.3f} (target ≥ 0.95): "
                   f"{'met' if cdsp / full >= 0.95 else 'missed'}")
    for variant in ("drop", "shrink"):
        c, p = get("CDSP", variant, 0), get("partial CE", variant, 0)
        c0, p0 = get("CDSP", "reach", 0), get("partial CE", "reach", 0)
        if None in (c, p, c0, p0):
            continue
        lc, lp = c0 - c, p0 - p
        ok = lc <= 0.5 * max(lp, 0.0)
        out.append(f"{variant}: CDSP loses {100 * lc:.2f}, partial CE loses {100 * lp:.2f} mIoU (target: CDSP at "
                   f"most half of partial CE's loss): {'met' if ok else 'missed'}")
    return out


def update_readme(readme: Path, table: str) -> None:
    replace_marked_section(readme, "cdsp-table", table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["stage1", "rows"], choices=["stage1", "rows"])
    ap.add_argument("--sources", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    ap.add_argument("--rows", nargs="+", metavar="ROW", help="rows as 'variant/name' (e.g. reach/CDSP, drop/BLPSeg); "
                    "default: all")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds of each row")
    ap.add_argument("--work", default="work_dirs/cdsp", help="work folder")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="results path without suffix (README only for the default)")
    ap.add_argument("--table-only", action="store_true", help="rewrite cdsp.md and the README table, run nothing")
    args = ap.parse_args()
    work, out = Path(args.work).resolve(), Path(args.out)
    known = {row_key(n, v) for n, v, _, _ in ROWS}
    if args.rows and set(args.rows) - known:
        raise SystemExit(f"unknown rows {sorted(set(args.rows) - known)}; known: {sorted(known)}")
    if not args.table_only:
        folders = scribble_folders(work)
        coseg = None
        if "stage1" in args.parts or any(kind == "cdsp" and (not args.rows or row_key(n, v) in args.rows)
                                         for n, v, kind, _ in ROWS):
            coseg, coseg_info = coseg_folder(work)
            if coseg_info:
                merge(out, lambda r: r.update(coseg=coseg_info))
        if "stage1" in args.parts:
            for source in args.sources:
                row = run_stage1(source, work, folders["reach"], coseg)
                print(f"stage 1 {source:6s} mIoU {100 * row['miou']:6.2f}  ({row['minutes']:.1f} min)", flush=True)
                merge(out, lambda r, row=row: r.setdefault("stage1", {}).__setitem__(row["source"], row))
        if "rows" in args.parts:
            for name, variant, kind, extra in ROWS:
                key = row_key(name, variant)
                if args.rows and key not in args.rows:
                    continue
                for seed in args.seeds:
                    res = run_row(name, variant, kind, extra, seed, work, folders, coseg)
                    print(f"{key:40s} seed {seed}  mIoU {100 * res['miou']:6.2f}  ({res['minutes']:.1f} min)",
                          flush=True)

                    def update(r, key=key, res=res, name=name, variant=variant):
                        row = r.setdefault("rows", {}).setdefault(key, {"run": name, "scribbles": variant,
                                                                        "iters": ITERS, "seeds": []})
                        row["seeds"] = sorted([s for s in row["seeds"] if s["seed"] != res["seed"]] + [res],
                                              key=lambda s: s["seed"])
                        row["miou"] = float(np.mean([s["miou"] for s in row["seeds"]]))

                    merge(out, update)
    results = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    table = markdown(results)
    write_text_atomic(out.with_suffix(".md"), table)
    if out.resolve() == DEFAULT_OUT.resolve():
        for doc in (ROOT / "README.md", ROOT / "docs/cdsp.md"):
            update_readme(doc, table)
    print(table)


if __name__ == "__main__":
    main()
