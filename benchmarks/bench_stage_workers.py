"""Scaling of the per-image stages over worker processes (issue: "per-image stages use the machine").

Runs the BES synthetic pipeline once up to ``make_pseudo_masks`` (the CAM and boundary networks briefly trained),
then re-runs the per-image stages ``make_cam``, ``make_boundary_labels`` and ``make_pseudo_masks`` with
``engine.stage_workers`` = 1 and = N, alternating (1, N, 1, N, ...) so that machine noise hits both alike, and
reports the median seconds per stage and the speed-up. The outputs of the two settings are compared byte for byte.

    python benchmarks/bench_stage_workers.py [--num 200] [--workers 2] [--repeats 2]

Writes benchmarks/results/stage_workers.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
from pathlib import Path

from weakseg.data.synth import generate_synth
from weakseg.engine.config import load_config
from weakseg.engine.pipeline import run_pipeline
from weakseg.utils.io import write_json_atomic, write_text_atomic
from weakseg.utils.machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs/bes/bes_mnv2-os16_b16-8e_synth-128.yaml"
STAGES = ["make_cam", "make_boundary_labels", "make_pseudo_masks"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=200, help="synthetic images (80 %% train)")
    ap.add_argument("--workers", type=int, default=2, help="processes of the parallel setting")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per setting")
    ap.add_argument("--work", type=Path, default=ROOT / "work_dirs/bench_stage_workers")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks/results")
    args = ap.parse_args()

    root = args.work / f"synth{args.num}"
    if not (root / "classes.txt").exists():
        generate_synth(root, num_images=args.num, size=128, seed=0)
    base = [f"data.root={root}", "engine.device=cpu", "engine.tensorboard=false", "data.num_workers=0",
            "method.cam.schedule.epochs=2", "method.boundary.schedule.epochs=1", "schedule.iters=10",
            "schedule.warmup_iters=0"]
    prepared = args.work / "prepared"
    run_pipeline(load_config(PRESET, [*base, f"engine.work_dir={prepared}", "engine.stage_workers=1"]),
                 only=["train_cam", *STAGES[:2], "train_boundary_net", STAGES[2]])

    seconds: dict[int, dict[str, list[float]]] = {1: {s: [] for s in STAGES}, args.workers: {s: [] for s in STAGES}}
    outputs: dict[int, Path] = {}
    for _ in range(args.repeats):
        for workers in (1, args.workers):
            work = args.work / f"w{workers}"
            if work.exists():
                shutil.rmtree(work)
            shutil.copytree(prepared, work)
            # one torch thread per process in both settings: the comparison is processes, not threads
            cfg = load_config(PRESET, [*base, f"engine.work_dir={work}", f"engine.stage_workers={workers}",
                                       "engine.threads=1"])
            summary = run_pipeline(cfg, only=STAGES, force=True)
            for stage in STAGES:
                seconds[workers][stage].append(summary[stage]["seconds"])
            outputs[workers] = work
    identical = all((outputs[1] / s / p.name).read_bytes() == p.read_bytes()
                    for s in STAGES for p in (outputs[args.workers] / s).iterdir() if not p.name.startswith("_"))
    rows = {}
    for stage in STAGES + ["total"]:
        if stage == "total":
            one = statistics.median([sum(x) for x in zip(*seconds[1].values())])
            many = statistics.median([sum(x) for x in zip(*seconds[args.workers].values())])
        else:
            one, many = statistics.median(seconds[1][stage]), statistics.median(seconds[args.workers][stage])
        rows[stage] = {"seconds_1": one, f"seconds_{args.workers}": many, "speedup": one / many}
    load = os.getloadavg()
    info = {"cpu": cpu_name(), "cpus": os.cpu_count(), "load_average": [round(x, 2) for x in load],
            "images": len((root / "ImageSets/Segmentation/train.txt").read_text().split()),
            "workers": args.workers, "repeats": args.repeats, "rows": rows, "raw_seconds": seconds,
            "identical_outputs": identical}
    args.results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.results / "stage_workers.json", info)
    lines = [f"# Per-image stages: 1 process vs {args.workers} (BES synthetic pipeline, {info['images']} images)", "",
             f"| stage | 1 process (s) | {args.workers} processes (s) | speed-up |", "|---|---:|---:|---:|"]
    for stage, r in rows.items():
        lines.append(f"| {stage} | {r['seconds_1']:.1f} | {r[f'seconds_{args.workers}']:.1f} | {r['speedup']:.2f}× |")
    lines += ["", f"Median of {args.repeats} alternating runs per setting, one torch thread per process. Outputs "
              f"{'identical' if identical else 'DIFFER'} byte for byte. CPU: {info['cpu']} ({info['cpus']} cores), "
              f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}.",
              "", "Command: `python benchmarks/bench_stage_workers.py "
              f"--num {args.num} --workers {args.workers} --repeats {args.repeats}`", ""]
    write_text_atomic(args.results / "stage_workers.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
