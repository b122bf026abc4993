"""BES and SBE on the synthetic benchmark (image-level tags only), next to full supervision (methods.md §4).

    python benchmarks/bench_sbe_synth.py                          # 1000 images of 128², CPU presets, 1 thread
    python benchmarks/bench_sbe_synth.py --num 400 --set method.walk.exp_times=6   # a reduced run

Rows: mIoU of the CAMs (eval_cam, training split), of the pseudo-masks (eval_pseudo_masks, training split) and of
the final DeepLab-v2 trained on them (evaluate, val split), for BES and SBE; and the same DeepLab-v2 with the same
recipe (model / optim / schedule / engine sections of the BES preset) trained on the ground-truth masks (the
``full`` method). Everything runs through ``weakseg run`` (``run_pipeline``) and ``weakseg.engine.trainer.train``.

Saliency for SBE ("oracle-ish"): the ground-truth foreground, Gaussian-blurred (σ = ``--sal-sigma`` px) plus
Gaussian noise (σ = ``--sal-noise``), clipped and stored as 8-bit ``Sal/<id>.png``. U²-Net-p (``weakseg data
saliency``) scores a foreground IoU of about 0.4 on these synthetic shapes (salient-object detectors are trained on
photographs), which would measure the detector, not SBE. Because the noisy background is rarely exactly 0, the SBE
preset uses ``sal_bg_thres = 0.05`` (the reference's exact-zero test would give no background prior, §4.9.6).

Results go to ``benchmarks/results/sbe_synth.{json,md}``; the run folders to ``--work`` (default
``work_dirs/bench_sbe_synth``). Finished stages are reused: re-running after an interruption resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from weakseg.data.synth import generate_synth
from weakseg.engine.config import config_from_dict, load_config, read_preset
from weakseg.engine.pipeline import fingerprints, method_stages, run_pipeline
from weakseg.engine.trainer import train
from weakseg.utils.io import save_label_png, write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]

PRESETS = {m: ROOT / f"configs/{m}/{m}_mnv2-os16_b16-8e_synth-128.yaml" for m in ("bes", "sbe")}


def oracle_saliency(root: Path, sigma: float, noise: float, seed: int) -> int:
    """Write ``Sal/<id>.png`` = clip(blur(foreground, σ) + N(0, noise²)) · 255 for every image with a GT mask."""
    out = root / "Sal"
    written = 0
    radius = max(1, int(round(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-x**2 / (2 * sigma**2))
    g = g / g.sum()
    for path in sorted((root / "SegmentationClass").glob("*.png")):
        target = out / path.name
        if target.exists():
            continue
        gt = np.asarray(Image.open(path))
        fg = torch.from_numpy(((gt > 0) & (gt < 255)).astype(np.float32))[None, None]
        fg = F.conv2d(F.pad(fg, (radius, radius, 0, 0), mode="replicate"), g.view(1, 1, 1, -1))
        fg = F.conv2d(F.pad(fg, (0, 0, radius, radius), mode="replicate"), g.view(1, 1, -1, 1))[0, 0].numpy()
        rng = np.random.default_rng([seed, written])
        sal = np.clip(fg + rng.normal(0.0, noise, fg.shape), 0.0, 1.0)
        save_label_png(target, np.round(sal * 255).astype(np.uint8))
        written += 1
    return written


def share_cam_stages(bes_cfg, sbe_cfg) -> None:
    """Reuse BES's train_cam / make_cam in the SBE run when their fingerprints agree (they do in the presets: the
    CAM settings are the same, only eval_cam's threshold differs). The copies get a ``shared_from`` entry. Saves
    ~5 min; the SBE row's time then excludes these two stages."""
    bes_prints = fingerprints(method_stages(bes_cfg), bes_cfg)
    sbe_prints = fingerprints(method_stages(sbe_cfg), sbe_cfg)
    bes_work, sbe_work = Path(bes_cfg.engine.work_dir), Path(sbe_cfg.engine.work_dir)
    for stage in ("train_cam", "make_cam"):
        src, dst = bes_work / stage, sbe_work / stage
        if bes_prints[stage][0] != sbe_prints[stage][0]:
            return
        if (dst / "_done.json").exists() or not (src / "_done.json").exists():
            continue
        shutil.copytree(src, dst, dirs_exist_ok=True)
        done = json.loads((dst / "_done.json").read_text())
        done.update(shared_from=str(src))
        write_json_atomic(dst / "_done.json", done)


def stage_seconds(work: Path) -> dict[str, float]:
    out = {}
    for done in sorted(work.glob("*/_done.json")):
        info = json.loads(done.read_text())
        if "shared_from" not in info:
            out[info["stage"]] = info.get("seconds")
    return out


def metric(path: Path) -> float | None:
    return json.loads(path.read_text()).get("miou") if path.exists() else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=1000, help="images in the synthetic benchmark (80 %% train)")
    ap.add_argument("--size", type=int, default=128, help="image side")
    ap.add_argument("--seed", type=int, default=0, help="dataset seed")
    ap.add_argument("--work", type=Path, default=ROOT / "work_dirs/bench_sbe_synth", help="run folders")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    ap.add_argument("--sal-sigma", type=float, default=1.5, help="blur of the oracle-ish saliency (pixels)")
    ap.add_argument("--sal-noise", type=float, default=0.03, help="noise std of the oracle-ish saliency")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override for all three runs (e.g. schedule.iters=500)")
    ap.add_argument("--methods", nargs="+", default=["bes", "sbe", "full"], choices=["bes", "sbe", "full"])
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks/results", help="output folder")
    args = ap.parse_args(argv)

    root = args.work / f"synth{args.num}-{args.size}"
    if not (root / "classes.txt").exists():
        generate_synth(root, num_images=args.num, size=args.size, seed=args.seed)
    oracle_saliency(root, args.sal_sigma, args.sal_noise, args.seed)
    common = [f"data.root={root}", f"engine.threads={args.threads}", "engine.device=cpu", "engine.tensorboard=false",
              *args.set]
    rows, seconds, configs = {}, {}, {}
    for method in ("bes", "sbe"):
        if method not in args.methods:
            continue
        work = args.work / method
        extra = ["data.saliency_dir=Sal"] if method == "sbe" else []
        cfg = load_config(PRESETS[method], [f"engine.work_dir={work}", *common, *extra])
        if method == "sbe" and "bes" in configs:
            share_cam_stages(configs["bes"], cfg)
        configs[method] = cfg
        run_pipeline(cfg)
        stages = stage_seconds(work)  # from the _done.json files, so a resumed benchmark reports the real times
        seconds[method] = {"total": round(sum(stages.values()), 1), **stages}
        rows[method] = {
            "cam": metric(work / "eval_cam/metrics.json"),
            "pseudo": metric(work / "eval_pseudo_masks/metrics.json"),
            "final": metric(work / "evaluate/metrics.json"),
        }
    if "full" in args.methods:
        # the BES preset with method.name = full: same network, recipe, iterations and batch on the GT masks
        data = read_preset(PRESETS["bes"])
        data["method"] = {"name": "full"}
        data["name"] = "full_deeplabv2_synth"
        shared = [o for o in common if not o.startswith("method.")]  # BES-only settings do not apply
        cfg = config_from_dict(data, [f"engine.work_dir={args.work / 'full'}", *shared], source="bench: full")
        timing = args.work / "full" / "bench_seconds.json"
        t0 = time.time()
        result = train(cfg, resume=True)
        if not timing.exists():  # the first invocation that trained it (a finished run is only re-evaluated)
            write_json_atomic(timing, {"total": round(time.time() - t0, 1)})
        seconds["full"] = json.loads(timing.read_text())
        rows["full"] = {"cam": None, "pseudo": None, "final": result["metrics"]["miou"]}

    n_train = len((root / "ImageSets/Segmentation/train.txt").read_text().split())
    n_val = len((root / "ImageSets/Segmentation/val.txt").read_text().split())
    info = {
        "dataset": {"num_images": args.num, "size": args.size, "seed": args.seed, "train": n_train, "val": n_val},
        "saliency": {"kind": "oracle-ish (GT foreground, blurred + noise)", "sigma": args.sal_sigma,
                     "noise": args.sal_noise},
        "overrides": args.set, "threads": args.threads, "miou": rows, "seconds": seconds,
        "total_minutes": round(sum(v["total"] for v in seconds.values()) / 60, 1),  # stage times, not waiting
        "platform": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                     "load_avg": os.getloadavg()},
        "command": "python benchmarks/bench_sbe_synth.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.results / "sbe_synth.json", info)
    fmt = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = [
        f"# BES / SBE on the synthetic benchmark ({args.num} images of {args.size}², {n_train} train / {n_val} val, "
        f"image-level tags only)",
        "",
        "| method | CAM (train) | pseudo-masks (train) | DeepLab-v2 on them (val) | minutes |",
        "|---|---|---|---|---|",
    ]
    names = {"bes": "BES", "sbe": "SBE (oracle-ish saliency)", "full": "full supervision (GT masks)"}
    for method, r in rows.items():
        lines.append(f"| {names[method]} | {fmt(r['cam'])} | {fmt(r['pseudo'])} | {fmt(r['final'])} | "
                     f"{seconds[method]['total'] / 60:.1f} |")
    lines += [
        "",
        f"mIoU in %, 8 classes incl. background. Command: `{info['command'].strip()}` "
        f"(torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs, load average at the end "
        f"{os.getloadavg()[0]:.1f}; {info['total_minutes']} min of stages in all).",
        "",
        "Settings: the CPU presets `configs/{bes,sbe}/*_mnv2-os16_b16-8e_synth-128.yaml` with the run's overrides; "
        "the full-supervision row is the BES preset with `method.name: full` (same DeepLab-v2, recipe, iterations). "
        "SBE reuses BES's train_cam / make_cam (identical settings), so its time excludes them. SBE's saliency is "
        "oracle-ish (ground-truth foreground blurred + noise), see docs/sbe.md.",
        "",
        "Stage times (s): " + "; ".join(
            f"{m}: " + ", ".join(f"{k} {v}" for k, v in s.items() if k != "total") for m, s in seconds.items()
            if m != "full"),
    ]
    write_text_atomic(args.results / "sbe_synth.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
