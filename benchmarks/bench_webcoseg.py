"""Benchmark 2 of WebCoseg (methods.md §5): the whole pipeline on the synthetic web variant and on the horses, next to
BES / SBE on the same tags and to full supervision with the same final network and budget.

Per WebCoseg row (everything through ``weakseg run``, i.e. :func:`weakseg.engine.pipeline.run_pipeline`):

* co-segmentation Jaccard: the ``cosegment`` masks against the web images' own masks (read for scoring only):
  J = foreground IoU averaged over images (Rubinstein et al. 2013) on the pixels the mask decides (its 255 band of
  unsure pixels, which the initial generator ignores too, is left out of both sides); ``unsure`` = the band's share;
* initial-generator mIoU on val (stage ``eval_init``: the snapshot chosen on held-out training images);
* estimated-mask mIoU on the training split (``eval_estimated_masks``);
* final mIoU on val (``evaluate``).

Datasets and reference rows:

    synth  target: the synthetic benchmark as benchmarks/bench_sbe_synth.py builds it (500 images of 128², seed 0,
           400 train / 100 val, 8 classes); web set: ``weakseg data synth --variant web`` (700 images, 100 per
           class, ~10 % off-topic, seed 0). The final network and budget (DeepLab-v2 on MobileNetV2 OS16, the base
           recipe, 300 iterations, batch 16) are those of bench_sbe_synth.py, whose BES / SBE / full-supervision
           rows are read from benchmarks/results/sbe_synth.json (same data, network, recipe and budget; not re-run:
           about 26 min on 2 cores).
    horse  target: the 200 Weizmann horse training photos tagged "horse", val = the 60 val photos; web set: the
           same 200 training photos copied into <work>/horse-web/horse/ (their masks are never read). Network and
           budget of the BLPSeg ablation's horse rows (MobileNetV2 + PPM/UPerNet OS32, 192² crops, batch 8,
           150 iterations). Full supervision: the BLPSeg ablation's horse row (benchmarks/results/
           blpseg_ablation.json, seed 0, exactly these settings), or trained here with ``--rows full``. BES
           (``--rows bes``) runs its synthetic CPU preset moved onto the horses with the same final network and
           budget; with one foreground class in every image its CAM classifier has nothing to discriminate.

    OMP_NUM_THREADS=1 python benchmarks/bench_webcoseg.py                       # WebCoseg on both datasets
    OMP_NUM_THREADS=1 python benchmarks/bench_webcoseg.py --datasets horse --rows full bes   # horse references

Results are merged into benchmarks/results/webcoseg.json after every row (a stopped run keeps what it measured;
finished stages are reused on a re-run), the table goes to webcoseg.md and into README.md between
``<!-- webcoseg-table -->`` and ``<!-- /webcoseg-table -->`` (default ``--out`` only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from weakseg.data.web import read_web_list  # noqa: E402
from weakseg.engine.config import load_config  # noqa: E402
from weakseg.engine.pipeline import method_stages, run_pipeline  # noqa: E402
from weakseg.engine.trainer import train  # noqa: E402
from weakseg.utils.io import read_label, replace_marked_section, write_json_atomic, write_text_atomic  # noqa: E402

HORSES = ROOT.parent / "shared" / "data" / "weizmann-horse"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "webcoseg"
PRESETS = {
    "synth": ROOT / "configs/webcoseg/webcoseg_mnv2-os16_b16-synth-128.yaml",
    "horse": ROOT / "configs/webcoseg/webcoseg_mnv2-os32-uper_b8-horse-192.yaml",
}
FULL_HORSE = ROOT / "configs/full/full_mnv2-os32-uper_b8-800i_horse-192.yaml"
BES_SYNTH = ROOT / "configs/bes/bes_mnv2-os16_b16-8e_synth-128.yaml"
SYNTH = {"num_images": 500, "size": 128, "seed": 0}  # bench_sbe_synth.py's reduced run (its sbe_synth.json rows)
SYNTH_WEB = {"num_images": 700, "size": 128, "seed": 0}
ITERS = {"synth": 300, "horse": 150}  # final-model iterations of the reference rows

# The BES synthetic CPU preset moved onto the horses: the horse data, and the final network / recipe / budget of the
# horse rows (configs/_base_/horse-192_mnv2-os32-uper.yaml as the full preset sets it). CAM / boundary crops follow
# the 192² training crops; the CAM thresholds go back to the reference's (objects are large, as on VOC).
BES_HORSE = [
    f"data.root={HORSES}", "data.image_ext=.jpg", "data.tags_source=label", "data.crop_size=192",
    "data.scale_range=[0.75, 1.25]", "model.output_stride=32", "model.head=uper",
    "model.head_kwargs={channels: 128, pool_scales: [1, 2, 3, 6], dropout: 0.1}", "optim.lr=5.0e-4",
    "schedule.warmup_iters=50", "engine.batch_size=8", "engine.ckpt_interval=50",
    "method.cam.resize_long=[160, 256]", "method.cam.crop_size=192", "method.cam.eval_thres=0.15",
    "method.labels.conf_fg_thres=0.30", "method.labels.conf_bg_thres=0.07", "method.boundary.crop_size=192",
    "method.walk.bg_thres=0.25",
]


# ----------------------------------------------------------------------------------------------------------------
# data


def prepare(dataset: str, work: Path) -> tuple[Path, Path, callable]:
    """(target data.root, web root, gt(web item) -> H×W bool foreground mask for scoring), generating what is
    missing."""
    if dataset == "synth":
        from weakseg.data.synth import generate_synth
        from weakseg.data.synth_web import generate_synth_web

        root, web = work / "synth", work / "synth-web"
        if not (root / "ImageSets/Segmentation/val.txt").exists():
            generate_synth(root, **SYNTH)
        if not (web / "README.txt").exists():
            generate_synth_web(web, **SYNTH_WEB)
        return root, web / "web", lambda item: read_label(web / "masks" / f"{item.id}.png") == item.class_id
    if not HORSES.is_dir():
        raise SystemExit(f"{HORSES}: Weizmann horses not found")
    web = work / "horse-web"
    (web / "horse").mkdir(parents=True, exist_ok=True)
    for sid in (HORSES / "ImageSets/Segmentation/train.txt").read_text().split():
        target = web / "horse" / f"{sid}.jpg"
        if not target.exists():  # copies, not links: the indexer refuses links leaving the web root
            shutil.copyfile(HORSES / "JPEGImages" / f"{sid}.jpg", target)
    return HORSES, web, lambda item: read_label(HORSES / "SegmentationClass" / f"{Path(item.id).name}.png") == 1


def coseg_jaccard(run_dir: Path, web_root: Path, gt, num_classes: int) -> dict:
    """J and P (in %) of the cosegment masks over the web images, 255 band excluded; per class J."""
    items = read_web_list(run_dir / "index_web/web_train_list.txt", web_root, num_classes)
    js, ps, unsure, per_class = [], [], [], {}
    for item in items:
        mask = read_label(run_dir / "cosegment/masks" / f"{item.id}.png")
        truth = gt(item)
        decided = mask != 255
        pred, ref = (mask == item.class_id) & decided, truth & decided
        union = (pred | ref).sum()
        j = float((pred & ref).sum() / union) if union else 1.0
        js.append(j)
        ps.append(float((pred == ref)[decided].mean()) if decided.any() else 1.0)
        unsure.append(float(1 - decided.mean()))
        per_class.setdefault(item.class_id, []).append(j)
    return {"J": 100 * float(np.mean(js)), "P": 100 * float(np.mean(ps)), "unsure": 100 * float(np.mean(unsure)),
            "images": len(items), "per_class_J": {str(c): 100 * float(np.mean(v)) for c, v in per_class.items()}}


# ----------------------------------------------------------------------------------------------------------------
# rows


def metric(run_dir: Path, stage: str) -> float | None:
    path = run_dir / stage / "metrics.json"
    return json.loads(path.read_text())["miou"] if path.exists() else None


def stage_seconds(run_dir: Path) -> dict:
    """{stage: seconds} from the stages' _done.json (the first, real run's times; a re-run that reuses a stage
    keeps them)."""
    out = {}
    for done in sorted(run_dir.glob("*/_done.json")):
        seconds = json.loads(done.read_text()).get("seconds")
        if seconds is not None:
            out[done.parent.name] = round(float(seconds), 1)
    classes = sorted((run_dir / "cosegment").glob("class_*.json"))
    if classes:  # a resumed co-segmentation's _done.json times only its last part: sum the classes' own times
        out["cosegment"] = round(sum(json.loads(p.read_text())["seconds_per_image"]["total"] *
                                     json.loads(p.read_text())["images"] for p in classes), 1)
    return out


def run_webcoseg(dataset: str, work: Path, seed: int, extra: list[str], save) -> dict:
    """Run the pipeline a group of stages at a time, calling ``save(row)`` after each group so that a run stopped
    later keeps the figures measured so far (``row["complete"]`` tells whether the final model was evaluated)."""
    root, web, gt = prepare(dataset, work)
    run_dir = work / (f"{dataset}-webcoseg" + (f"-seed{seed}" if seed else ""))
    sets = [f"method.web.root={web.resolve()}", f"engine.work_dir={run_dir}", f"engine.seed={seed}",
            f"schedule.iters={ITERS[dataset]}", *extra]
    if dataset == "synth":  # the horse preset's data.root is the shared dataset already
        sets.insert(0, f"data.root={root.resolve()}")
    cfg = load_config(PRESETS[dataset], sets)
    names = [s.name for s in method_stages(cfg)]
    groups = [["index_web", "cosegment"], ["train_init", "eval_init"], ["estimate_masks", "eval_estimated_masks"],
              ["train_seg", "evaluate"]]
    row: dict = {"overrides": sets}
    for group in groups:
        run_pipeline(cfg, only=[n for n in group if n in names])
        if "cosegment" in group and "cosegment" in names:
            row["coseg"] = coseg_jaccard(run_dir, web, gt, len(read_classes(cfg)))
        row.update(init_val=metric(run_dir, "eval_init"), estimated_train=metric(run_dir, "eval_estimated_masks"),
                   final_val=metric(run_dir, "evaluate"), stage_seconds=stage_seconds(run_dir),
                   complete=metric(run_dir, "evaluate") is not None)
        row["minutes"] = sum(row["stage_seconds"].values()) / 60
        save(row)
    return row


def read_classes(cfg) -> list[str]:
    from weakseg.data.dataset import meta_from_root

    return list(meta_from_root(cfg.data.root).classes)


def run_full_horse(work: Path, seed: int) -> dict:
    run_dir = work / ("horse-full" + (f"-seed{seed}" if seed else ""))
    sets = [f"data.root={HORSES}", f"engine.work_dir={run_dir}", f"engine.seed={seed}",
            f"schedule.iters={ITERS['horse']}", "data.tags_source=label"]
    t0 = time.time()
    res = train(load_config(FULL_HORSE, sets), resume=True)
    return {"final_val": res["metrics"]["miou"], "minutes": (time.time() - t0) / 60, "overrides": sets}


def run_bes_horse(work: Path, seed: int) -> dict:
    run_dir = work / ("horse-bes" + (f"-seed{seed}" if seed else ""))
    sets = [*BES_HORSE, f"engine.work_dir={run_dir}", f"engine.seed={seed}", f"schedule.iters={ITERS['horse']}"]
    run_pipeline(load_config(BES_SYNTH, sets))
    return {"cam_train": metric(run_dir, "eval_cam"), "estimated_train": metric(run_dir, "eval_pseudo_masks"),
            "final_val": metric(run_dir, "evaluate"), "minutes": sum(stage_seconds(run_dir).values()) / 60,
            "overrides": sets}


def horse_reference_row() -> dict | None:
    """The BLPSeg ablation's horse full-supervision row (same network, 150 iterations), when it is there."""
    path = ROOT / "benchmarks/results/blpseg_ablation.json"
    row = json.loads(path.read_text()).get("horse/full supervision") if path.exists() else None
    if not row or row.get("iters") != ITERS["horse"]:
        return None
    minutes = [s.get("minutes") for s in row.get("seeds", []) if s.get("minutes") is not None]
    return {"dataset": "horse", "method": "full supervision", "final_val": row["miou"],
            "seeds": [s["seed"] for s in row.get("seeds", [])], "source": str(path.relative_to(ROOT)),
            "command": "python benchmarks/bench_blpseg_ablation.py --datasets horse --iters 150",
            "minutes": minutes[0] if minutes else None}


def run_bes_cam_horse(work: Path, seed: int, images: int = 80) -> dict:
    """BES's CAM stages alone on the horses, reduced (the first ``images`` training photos, 3 CAM epochs, CAM
    scales 1.0 / 0.5): what a tag-only method gets from single-tag data. Scored at the preset's threshold (eval_cam)
    and, optimistically, at thresholds chosen with the ground truth."""
    ids = (HORSES / "ImageSets/Segmentation/train.txt").read_text().split()[:images]
    subset = work / f"horse_train{images}.txt"
    if not subset.exists():
        write_text_atomic(subset, "\n".join(ids) + "\n")
    run_dir = work / ("horse-bes-cam" + (f"-seed{seed}" if seed else ""))
    sets = [*BES_HORSE, f"data.train_list={subset.resolve()}", "method.cam.schedule.epochs=3",
            "method.cam.scales=[1.0, 0.5]", f"engine.work_dir={run_dir}", f"engine.seed={seed}", "engine.threads=1",
            "engine.stage_workers=1"]
    run_pipeline(load_config(BES_SYNTH, sets), only=["train_cam", "make_cam", "eval_cam"])
    conf = {t: np.zeros((2, 2)) for t in (0.15, 0.5, 0.7, 0.8, 0.9, 0.95)}
    quantiles = []
    for sid in ids:
        cam = np.load(run_dir / "make_cam" / f"{sid}.npz", allow_pickle=False)["high_res"][0].astype(np.float32)
        gt = read_label(HORSES / "SegmentationClass" / f"{sid}.png")
        valid = gt != 255
        quantiles.append(np.quantile(cam, [0.1, 0.5, 0.9]))
        for t, cm in conf.items():
            cm += np.bincount(gt[valid].astype(int) * 2 + (cam[valid] > t), minlength=4).reshape(2, 2)
    sweep = {}
    for t, cm in conf.items():
        iou = np.diag(cm) / np.maximum(cm.sum(0) + cm.sum(1) - np.diag(cm), 1)
        sweep[str(t)] = {"miou": float(iou.mean()), "iou": iou.tolist()}
    return {"cam_train": metric(run_dir, "eval_cam"), "cam_threshold_sweep": sweep, "images": len(ids),
            "cam_quantiles_10_50_90": np.mean(quantiles, axis=0).tolist(),
            "minutes": sum(stage_seconds(run_dir).values()) / 60,
            "overrides": sets, "note": f"CAM stages only, {len(ids)} training photos, 3 CAM epochs, 2 scales"}


def synth_reference_rows() -> dict:
    """BES / SBE / full supervision on the same synthetic data, network and budget, from sbe_synth.json."""
    path = ROOT / "benchmarks/results/sbe_synth.json"
    if not path.exists():
        return {}
    ref = json.loads(path.read_text())
    data = ref.get("dataset", {})
    if (data.get("num_images"), data.get("size"), data.get("seed")) != (SYNTH["num_images"], SYNTH["size"],
                                                                          SYNTH["seed"]):
        print(f"{path}: another synthetic dataset ({data}); its rows are not comparable and are left out")
        return {}
    names = {"bes": "BES", "sbe": "SBE (oracle-ish saliency)", "full": "full supervision"}
    rows = {}
    for key, scores in ref.get("miou", {}).items():
        seconds = ref.get("seconds", {}).get(key, {}).get("total")
        rows[names.get(key, key)] = {"cam_train": scores.get("cam"), "estimated_train": scores.get("pseudo"),
                                     "final_val": scores.get("final"), "command": ref.get("command"),
                                     "minutes": seconds / 60 if seconds else None}
    return {"source": str(path.relative_to(ROOT)), "rows": rows}


# ----------------------------------------------------------------------------------------------------------------
# table


def pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def markdown_table(results: dict) -> str:
    lines = ["| dataset | method | co-seg J (web) | initial generator (val) | estimated masks (train) | final (val) | "
             "final / full | minutes |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results["rows"].values():
        full = results["rows"].get(f"{r['dataset']}/full supervision", {}).get("final_val")
        ratio = f"{r['final_val'] / full:.2f}" if full and r.get("final_val") is not None else "–"
        coseg = f"{r['coseg']['J']:.1f}" if "coseg" in r else "–"
        est = pct(r.get("estimated_train"))
        if r.get("cam_train") is not None:
            est += f" (CAM {pct(r['cam_train'])}"
            if r.get("cam_threshold_sweep"):  # the best threshold, chosen with the ground truth
                t, best = max(r["cam_threshold_sweep"].items(), key=lambda kv: kv[1]["miou"])
                est += f"; {pct(best['miou'])} at a GT-chosen threshold {t}"
            est += ")"
        minutes = f"{r['minutes']:.1f}" if r.get("minutes") is not None else "–"
        method = r["method"] + (" (stopped before the final model)" if r.get("complete") is False else "")
        if r.get("source"):
            method += f" [{Path(r['source']).name}]"
        lines.append(f"| {r['dataset']} | {method} | {coseg} | {pct(r.get('init_val'))} | {est} | "
                     f"{pct(r.get('final_val'))} | {ratio} | {minutes} |")
    env = results.get("environment", {})
    lines += ["", textwrap.fill(f"mIoU in %, seed {env.get('seed', 0)}; co-seg J = mean foreground IoU of the co-segmentation masks "
              "against the web images' own masks, on the pixels they decide (the 255 band left out); initial "
              "generator = the snapshot selected on held-out training images, on val; estimated masks on the "
              "training split; rows in [brackets] are read from that results file (same data, final network, recipe "
              "and budget); minutes = the stages' own times on the shared 2-core VM (torch "
              f"{env.get('torch', '?')}, {env.get('threads', 1)} thread, load average about "
              f"{env.get('load_average', 0):.0f}). `python benchmarks/bench_webcoseg.py`, details in "
              "benchmarks/results/webcoseg.json and docs/webcoseg.md.", width=115)]
    return "\n".join(lines) + "\n"


def update_readme_table(readme: Path, table: str) -> None:
    replace_marked_section(readme, "webcoseg-table", table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["synth", "horse"], choices=["synth", "horse"])
    ap.add_argument("--rows", nargs="+", default=["webcoseg"], choices=["webcoseg", "full", "bes", "bes-cam"],
                    help="rows to run: webcoseg (both datasets); full, bes, bes-cam (horse: trained here; bes-cam = "
                         "BES's CAM stages alone, reduced; without 'full' the "
                         "horse full-supervision row is read from blpseg_ablation.json). The synthetic BES / SBE / "
                         "full rows always come from sbe_synth.json")
    ap.add_argument("--seed", type=int, default=0, help="engine.seed of every run")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra override of the WebCoseg runs (e.g. method.init.schedule.iters=300)")
    ap.add_argument("--work", default="work_dirs/bench_webcoseg", help="work folder")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="results path without suffix (README updated only for "
                                                           "the default)")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    work, out = Path(args.work), Path(args.out)
    results = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    results.setdefault("rows", {})

    def save(key: str, row: dict) -> None:
        results["rows"][key] = row
        results["environment"] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                                  "cpus": os.cpu_count(), "python": platform.python_version(),
                                  "load_average": os.getloadavg()[0], "seed": args.seed}
        write_json_atomic(out.with_suffix(".json"), results)  # after every row: a long sweep can be stopped
        print(f"{key}: " + json.dumps({k: v for k, v in row.items() if k not in ("overrides", "stage_seconds")}),
              flush=True)

    for dataset in args.datasets:
        if "webcoseg" in args.rows:
            head = {"dataset": dataset, "method": "WebCoseg", "seed": args.seed}
            run_webcoseg(dataset, work, args.seed, args.set, lambda row: save(f"{dataset}/WebCoseg", {**head, **row}))
        if dataset == "synth":
            ref = synth_reference_rows()
            for name, row in ref.get("rows", {}).items():
                save(f"synth/{name}", {"dataset": "synth", "method": name, "source": ref["source"], **row})
            continue
        if "full" not in args.rows and "horse/full supervision" not in results["rows"]:
            ref = horse_reference_row()
            if ref is not None:
                save("horse/full supervision", ref)
        if "full" in args.rows:
            save("horse/full supervision", {"dataset": "horse", "method": "full supervision", "seed": args.seed,
                                            **run_full_horse(work, args.seed)})
        if "bes-cam" in args.rows:
            save("horse/BES (CAM only)", {"dataset": "horse", "method": "BES (CAM only)", "seed": args.seed,
                                          **run_bes_cam_horse(work, args.seed)})
        if "bes" in args.rows:
            save("horse/BES", {"dataset": "horse", "method": "BES", "seed": args.seed,
                               **run_bes_horse(work, args.seed)})
    order = [f"{d}/{m}" for d in ("synth", "horse")
             for m in ("WebCoseg", "BES", "BES (CAM only)", "SBE", "SBE (oracle-ish saliency)", "full supervision")]
    results["rows"] = dict(sorted(results["rows"].items(), key=lambda kv: order.index(kv[0])
                                  if kv[0] in order else len(order)))
    write_json_atomic(out.with_suffix(".json"), results)
    table = markdown_table(results)
    write_text_atomic(out.with_suffix(".md"), table)
    if out.resolve() == DEFAULT_OUT.resolve():
        update_readme_table(ROOT / "README.md", table)
    print(table)


if __name__ == "__main__":
    main()
