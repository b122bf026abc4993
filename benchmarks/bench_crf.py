"""Dense CRF throughput: pydensecrf2 vs the pure-torch permutohedral backend (weakseg.modules.crf).

    python benchmarks/bench_crf.py                       # CPU, 1 torch thread, presets deeplabv2 and blpseg
    python benchmarks/bench_crf.py --threads 1 2         # also the torch backend on 2 threads
    python benchmarks/bench_crf.py --device cuda         # torch backend on the GPU

Input (environment.md §4 set-up): a 500×375 synthetic scene with 12 coloured ellipses and 21 classes; the unary is
the one-hot ground truth average-pooled by 16, upsampled bilinearly, plus Gaussian noise (σ = 0.25), then
renormalised. Each timed call is one whole ``dense_crf`` (lattice construction included); the reported time is the
median of ``--repeats`` calls after one warm-up call. pydensecrf is single-threaded; the torch backend uses
``--threads`` intra-op threads. On a CPU shared with other jobs OpenMP barriers wait for descheduled threads, so 1
thread is the default and the load average is recorded.

When the voc-mini images are present, the argmax agreement between the two backends is also measured on them at
full resolution with a degraded-GT unary (the input of tests/test_crf.py).

Results go to ``benchmarks/results/crf.{json,md}`` (written atomically, replacing the previous run).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from weakseg.modules.crf import CRF_PRESETS, dense_crf, pydensecrf_available
from weakseg.utils.io import write_json_atomic, write_text_atomic

RESULTS = Path(__file__).resolve().parent / "results"
VOC = Path("/work/shared/data/voc-mini/VOC2012")
VOC_IDS = ("2011_000003", "2011_000006", "2011_000025")


def make_scene(width: int, height: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """H×W×3 uint8 image of 12 ellipses, H×W int64 labels, C×H×W float32 degraded-GT probabilities."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[:height, :width]
    label = np.zeros((height, width), np.int64)
    palette = rng.integers(0, 256, (classes, 3))
    for k in range(12):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(20, height / 3), rng.uniform(20, width / 3)
        label[((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 < 1] = 1 + k % (classes - 1)
    image = np.clip(palette[label] + rng.normal(0, 8, (height, width, 3)), 0, 255).astype(np.uint8)
    onehot = F.one_hot(torch.from_numpy(label), classes).permute(2, 0, 1)[None].float()
    probs = F.interpolate(F.avg_pool2d(onehot, 16, ceil_mode=True), (height, width), mode="bilinear",
                          align_corners=False)[0].numpy()
    probs = np.clip(probs + rng.normal(0, 0.25, probs.shape), 1e-3, None).astype(np.float32)
    return image, label, probs / probs.sum(0, keepdims=True)


def time_calls(fn, repeats: int) -> tuple[list[float], float, np.ndarray]:
    """Warm up once, then time ``repeats`` calls; returns wall times, median process CPU time and the last output."""
    out = fn()
    walls, cpus = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return walls, statistics.median(cpus), out


def voc_agreement(presets: list[str]) -> list[dict]:
    """Argmax agreement of torch vs pydensecrf on the voc-mini images (degraded-GT unary, as in the tests)."""
    rows = []
    for image_id in VOC_IDS:
        image = np.asarray(Image.open(VOC / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
        gt = np.asarray(Image.open(VOC / "SegmentationClass" / f"{image_id}.png"))
        gt0 = np.where(gt == 255, 0, gt)
        onehot = F.one_hot(torch.from_numpy(gt0).long(), 21).permute(2, 0, 1)[None].float()
        probs = F.interpolate(F.avg_pool2d(onehot, 8, ceil_mode=True), gt.shape, mode="bilinear",
                              align_corners=False)[0].numpy()
        probs = probs + 0.3 * np.random.default_rng(0).random(probs.shape, dtype=np.float32)
        probs /= probs.sum(0, keepdims=True)
        for preset in presets:
            ref = dense_crf(image, probs, CRF_PRESETS[preset], "pydensecrf")
            q = dense_crf(image, probs, CRF_PRESETS[preset], "torch")
            valid = gt != 255
            rows.append({
                "image": image_id, "preset": preset, "size": f"{image.shape[1]}x{image.shape[0]}",
                "agreement": float((q.argmax(0) == ref.argmax(0)).mean()),
                "max_abs_diff": float(np.abs(q - ref).max()),
                "acc_unary": float((probs.argmax(0) == gt)[valid].mean()),
                "acc_pydensecrf": float((ref.argmax(0) == gt)[valid].mean()),
                "acc_torch": float((q.argmax(0) == gt)[valid].mean()),
            })
            print(f"  VOC {image_id} {preset:10s} agreement {rows[-1]['agreement']:.4%}  "
                  f"max |ΔQ| {rows[-1]['max_abs_diff']:.1e}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="+", default=["deeplabv2", "blpseg"], choices=sorted(CRF_PRESETS))
    ap.add_argument("--width", type=int, default=500)
    ap.add_argument("--height", type=int, default=375)
    ap.add_argument("--classes", type=int, default=21)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1], help="torch intra-op threads to measure")
    ap.add_argument("--device", default="cpu", help="device of the torch backend (cpu or cuda)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-voc", action="store_true", help="skip the VOC agreement measurement")
    args = ap.parse_args()

    image, label, probs = make_scene(args.width, args.height, args.classes, args.seed)
    load_start = os.getloadavg()[0]
    have_pd = pydensecrf_available()
    print(f"CRF {args.width}x{args.height}, {args.classes} classes; "
          f"unary pixel acc {(probs.argmax(0) == label).mean():.3f}; load {load_start:.1f} on {os.cpu_count()} cores")
    rows = []
    for preset in args.presets:
        params = CRF_PRESETS[preset]
        runs = [("pydensecrf", 1)] if have_pd else []
        runs += [("torch", t) for t in args.threads]
        ref = None
        for backend, threads in runs:
            old = torch.get_num_threads()
            torch.set_num_threads(threads)
            device = args.device if backend == "torch" else None
            try:
                walls, cpu, q = time_calls(lambda: dense_crf(image, probs, params, backend, device), args.repeats)
            finally:
                torch.set_num_threads(old)
            if backend == "pydensecrf":
                ref = q
            med = statistics.median(walls)
            row = {
                "preset": preset, "iterations": params.iterations, "backend": backend,
                "device": args.device if backend == "torch" else "cpu", "threads": threads,
                "time_s": med, "times_s": walls, "cpu_s": cpu, "images_per_s": 1.0 / med,
                "pixel_acc": float((q.argmax(0) == label).mean()),
                "agreement_vs_pydensecrf": None if ref is None else float((q.argmax(0) == ref.argmax(0)).mean()),
            }
            rows.append(row)
            print(f"  {preset:10s} {backend:10s} {row['device']:4s} threads={threads}  {med * 1e3:8.1f} ms  "
                  f"{row['images_per_s']:6.2f} img/s  acc {row['pixel_acc']:.3f}")
    voc_rows = [] if args.no_voc or not have_pd or not VOC.is_dir() else voc_agreement(args.presets)
    load_end = os.getloadavg()[0]

    result = {
        "benchmark": "crf", "size": f"{args.width}x{args.height}", "classes": args.classes,
        "repeats": args.repeats, "seed": args.seed, "torch": torch.__version__, "cpu": platform.machine(),
        "cpu_count": os.cpu_count(), "loadavg_1min_start_end": [load_start, load_end],
        "pydensecrf": have_pd, "rows": rows, "voc_agreement": voc_rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / "crf.json", result)

    lines = [
        f"# Dense CRF throughput ({args.width}×{args.height}, {args.classes} classes, torch {torch.__version__})",
        "",
        "| preset | iterations | backend | device | threads | median time (ms) | images/s | CPU s / image "
        "| pixel acc | argmax agreement vs pydensecrf |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        agree = "–" if r["agreement_vs_pydensecrf"] is None or r["backend"] == "pydensecrf" \
            else f"{r['agreement_vs_pydensecrf']:.2%}"
        lines.append(f"| {r['preset']} | {r['iterations']} | {r['backend']} | {r['device']} | {r['threads']} | "
                     f"{r['time_s'] * 1e3:.0f} | {r['images_per_s']:.2f} | {r['cpu_s']:.2f} | {r['pixel_acc']:.3f} | "
                     f"{agree} |")
    lines += ["", f"Unary alone: pixel acc {(probs.argmax(0) == label).mean():.3f}. Synthetic 12-ellipse scene "
              "(environment.md §4); time = median of "
              f"{args.repeats} whole `dense_crf` calls (lattice build included) after a warm-up. "
              f"CPU load average (1 min) at start / end: {load_start:.1f} / {load_end:.1f} on {os.cpu_count()} cores "
              "(a shared machine)."]
    if voc_rows:
        lines += ["", "Argmax agreement, torch vs pydensecrf, on voc-mini at full resolution (degraded-GT unary):", "",
                  "| image | preset | agreement | max abs diff of Q | acc unary / pydensecrf / torch |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['image']} ({r['size']}) | {r['preset']} | {r['agreement']:.2%} | {r['max_abs_diff']:.1e} | "
                  f"{r['acc_unary']:.3f} / {r['acc_pydensecrf']:.3f} / {r['acc_torch']:.3f} |" for r in voc_rows]
    write_text_atomic(RESULTS / "crf.md", "\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'crf.json'} and {RESULTS / 'crf.md'}")


if __name__ == "__main__":
    main()
