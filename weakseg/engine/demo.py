"""``weakseg demo``: the main job on built-in data.

Generates the synthetic benchmark (or reuses it), trains each demo method on CPU with its CPU-sized preset,
evaluates it on the synthetic val split, and writes ``report.md`` (mIoU table) and ``grid.png`` (image, scribbles,
one prediction per method, ground truth). Re-running continues finished or interrupted runs (``resume``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

import weakseg
from weakseg.data.meta import DatasetMeta
from weakseg.engine.config import load_config
from weakseg.engine.report import colorize, comparison_markdown, overlay, picture_grid
from weakseg.utils import dist as wdist
from weakseg.utils.io import read_label, read_rgb, save_image, write_json_atomic, write_text_atomic

log = logging.getLogger("weakseg")

#: (label in the report, preset relative to configs/)
DEMO_RUNS: list[tuple[str, str]] = [
    ("partial CE (scribbles)", "partial_ce/partial-ce_mnv2-os32-uper_b8-300i_synth-96.yaml"),
    ("BLPSeg (scribbles)", "blpseg/blpseg_mnv2-os32_b8-300i_synth-96.yaml"),
    ("full supervision (masks)", "full/full_mnv2-os32-uper_b8-300i_synth-96.yaml"),
]

SYNTH_IMAGES = 1000
SYNTH_SIZE = 128


def configs_dir() -> Path:
    """The ``configs/`` folder of the weakseg checkout."""
    path = Path(weakseg.__file__).resolve().parents[1] / "configs"
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: the presets folder is missing; run the demo from a weakseg checkout "
                                f"(pip install -e .)")
    return path


def run_demo(out: Path, quick: bool = False) -> Path:
    from weakseg.data.synth import generate_synth
    from weakseg.engine.runtime import setup_logging
    from weakseg.engine.trainer import train

    out = Path(out)
    setup_logging(out, "demo.log")
    synth = out / "synth"
    n_images = 160 if quick else SYNTH_IMAGES
    if not (synth / "ImageSets" / "Segmentation" / "val.txt").exists():
        t0 = time.time()
        if wdist.is_main():
            generate_synth(synth, num_images=n_images, size=SYNTH_SIZE, seed=0)
        wdist.barrier()
        log.info("synthetic benchmark: %d images of %d² in %.1f s → %s", n_images, SYNTH_SIZE, time.time() - t0, synth)
    results = []
    for label, preset in DEMO_RUNS:
        overrides = [f"data.root={synth}", f"engine.work_dir={out / Path(preset).stem}"]
        if quick:
            overrides += ["schedule.iters=20", "schedule.warmup_iters=0", "engine.ckpt_interval=10",
                          "engine.log_interval=5"]
        cfg = load_config(configs_dir() / preset, overrides)
        t0 = time.time()
        result = train(cfg, resume=True)
        minutes = (time.time() - t0) / 60
        results.append((label, preset, result, minutes))
        log.info("%s: mIoU %.2f (%.1f min)", label, 100 * result["metrics"]["miou"], minutes)
    return write_demo_report(out, synth, results)


def write_demo_report(out: Path, synth: Path, results: list) -> Path:
    classes = tuple((synth / "classes.txt").read_text().split())
    meta = DatasetMeta(classes)
    rows = [(label, r["metrics"]) for label, _, r, _ in results]
    lines = ["# weakseg demo: synthetic benchmark", "",
             f"Data: `{synth}` ({len(classes) - 1} foreground classes, 128×128, simulated scribbles).", "",
             "| run | preset | mIoU | minutes |", "|---|---|---:|---:|"]
    for label, preset, r, minutes in results:
        lines.append(f"| {label} | `configs/{preset}` | **{100 * r['metrics']['miou']:.2f}** | {minutes:.1f} |")
    lines += ["", "Per-class IoU (%):", "", comparison_markdown(rows, classes), "", "![grid](grid.png)", ""]
    report = out / "report.md"
    if wdist.is_main():
        write_text_atomic(report, "\n".join(lines))
        write_json_atomic(out / "results.json", {label: r for label, _, r, _ in results})
        _write_grid(out, synth, results, meta)
    return report


def _write_grid(out: Path, synth: Path, results: list, meta: DatasetMeta, n: int = 6) -> None:
    ids = (synth / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[:n]
    rows = []
    for sample_id in ids:
        image = read_rgb(next((synth / "JPEGImages").glob(f"{sample_id}.*")))
        scribble = read_label(synth / "Scribbles" / f"{sample_id}.png")
        gt = read_label(synth / "SegmentationClass" / f"{sample_id}.png")
        row = [image, _scribble_picture(image, scribble, meta)]
        for _, preset, _, _ in results:
            pred_path = out / Path(preset).stem / "eval" / "predictions" / f"{sample_id}.png"
            row.append(colorize(read_label(pred_path), meta.palette) if pred_path.exists()
                       else np.zeros_like(image))
        row.append(colorize(gt, meta.palette))
        rows.append(row)
    titles = ["image", "scribbles"] + [label.split(" (")[0] for label, *_ in results] + ["ground truth"]
    save_image(out / "grid.png", picture_grid(rows, titles))


def _scribble_picture(image: np.ndarray, scribble: np.ndarray, meta: DatasetMeta) -> np.ndarray:
    faded = (image.astype(np.float32) * 0.4 + 153).astype(np.uint8)
    pic = overlay(faded, scribble, meta.palette, alpha=1.0)
    bg = scribble == 0
    pic[bg] = (40, 40, 40)  # background strokes drawn dark so they show on the faded image
    return pic
