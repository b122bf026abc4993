"""Sparse vs dense boundary-guided random walk (methods.md §4.6): time and peak memory per grid size.

    python benchmarks/bench_random_walk.py                      # CPU, grids 64², 96², 128², K = 3 classes
    python benchmarks/bench_random_walk.py --device cuda        # CUDA allocator peaks instead of RSS

The sparse walk runs single-threaded by default (``--sparse-threads 1``): each of its steps is a few dozen small
elementwise kernels, and with OpenMP threads on a CPU shared with other jobs a kernel waits for a descheduled
thread at every barrier (measured: 3×128² walk 35 s on 2 threads vs 2 s on 1 thread under a load of 6 on 2 cores).
The dense reference keeps ``--threads`` (2) for its large matrix products, so the reported speed-up is
conservative.

Every measurement runs in a fresh subprocess. CPU memory is the growth of the process's peak RSS over its RSS
just before the call (inputs already allocated, one tiny warm-up walk done so lazy initialisation is not counted);
CUDA memory is ``max_memory_allocated`` minus the allocation before the call.

The dense reference squares a (hw)² matrix ``exp_times`` times: O((hw)³) per squaring (8.8 TFLOP at 128²). When the
squaring time predicted from the previous grid (× the cube of the pixel ratio) would push a dense run past
``--dense-budget-s``, the dense walk is run with ``exp_times = 1`` and its total is extrapolated as
build + exp_times · (measured time of one squaring) + final product; the table marks such rows. Peak memory needs no
extrapolation: it is reached at the first squaring (T and T·T coexist) and does not grow with more squarings.

Results go to ``benchmarks/results/random_walk.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from weakseg.modules.random_walk import SparseTransition, random_walk, transition_matrix_dense
from weakseg.utils.io import write_json_atomic, write_text_atomic

RESULTS = Path(__file__).resolve().parent / "results"


def make_inputs(size: int, classes: int, seed: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic smooth CAMs (K×n×n in [0, 1]) and a boundary map (n×n in [0, 1]) with sharp ridges."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(classes + 1, 1, size // 8, size // 8, generator=g)
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[:, 0].clamp(0, 1)
    cams = smooth[:classes] / smooth[:classes].amax((1, 2), keepdim=True)
    boundary = smooth[classes] ** 4
    boundary[:, size // 3] = 0.95
    boundary[size // 2, :] = 0.9
    return cams.to(device), boundary.to(device)


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def worker(args: argparse.Namespace) -> None:
    """One measurement (run in a subprocess); prints a JSON line."""
    torch.set_num_threads(args.threads)
    device = args.device
    cams, boundary = make_inputs(args.size, args.classes, args.seed, device)
    # warm-up on a tiny grid: kernels, allocator and thread pools initialised outside the measurement
    random_walk(cams[:, :8, :8].clone(), boundary[:8, :8].clone(), exp_times=1)
    _sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        mem0 = torch.cuda.memory_allocated()
    rss0, maxrss0 = _rss_kib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    t0 = time.perf_counter()
    times: dict[str, float] = {}
    if args.impl == "sparse":
        trans = SparseTransition(boundary, beta=args.beta)
        v = cams * (1 - boundary)
        _sync(device)
        times["build_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        out = trans.propagate(v, 2**args.exp_times)
        _sync(device)
        times["walk_s"] = time.perf_counter() - t1
    else:
        trans = transition_matrix_dense(boundary, beta=args.beta)
        _sync(device)
        times["build_s"] = time.perf_counter() - t0
        squares = []
        for _ in range(args.exp_times):
            t1 = time.perf_counter()
            trans = trans @ trans
            _sync(device)
            squares.append(time.perf_counter() - t1)
        times["square_s"] = squares
        t1 = time.perf_counter()
        k = cams.shape[0]
        out = ((cams * (1 - boundary)).reshape(k, -1) @ trans).reshape(cams.shape)
        _sync(device)
        times["product_s"] = time.perf_counter() - t1
    times["total_s"] = time.perf_counter() - t0

    if device == "cuda":
        peak_mib = (torch.cuda.max_memory_allocated() - mem0) / 2**20
        exact = True
    else:
        maxrss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # the growth of the high-water mark over the pre-call RSS is exact only if the call set a new high-water
        exact = maxrss1 > maxrss0
        peak_mib = ((maxrss1 if exact else maxrss0) - rss0) / 1024
    if args.save:
        torch.save(out.cpu(), args.save)
    print(json.dumps({"times": times, "peak_mib": peak_mib, "peak_exact": exact, "rss_before_mib": rss0 / 1024}))


def measure(impl: str, size: int, exp_times: int, args: argparse.Namespace, save: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--_worker", impl, "--size", str(size), "--exp-times", str(exp_times),
           "--classes", str(args.classes), "--beta", str(args.beta), "--seed", str(args.seed),
           "--threads", str(args.sparse_threads if impl == "sparse" else args.threads), "--device", args.device]
    if save:
        cmd += ["--save", save]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{impl} {size}² failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> dict:
    load_start = os.getloadavg()
    rows = []
    prev = None  # (pixels, seconds per squaring) of the last dense run
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            n = size * size
            sparse_file, dense_file = f"{tmp}/s{size}.pt", f"{tmp}/d{size}.pt"
            sparse = measure("sparse", size, args.exp_times, args, save=sparse_file)
            print(f"{size}²  sparse {sparse['times']['total_s']:.2f} s  {sparse['peak_mib']:.1f} MiB", flush=True)
            dense_exp = args.exp_times
            if prev is not None:
                predicted = prev[1] * (n / prev[0]) ** 3 * args.exp_times
                if predicted > args.dense_budget_s:
                    dense_exp = 1
            dense = measure("dense", size, dense_exp, args, save=dense_file if dense_exp == args.exp_times else None)
            t = dense["times"]
            square = max(t["square_s"]) if t["square_s"] else 0.0
            prev = (n, square)
            if dense_exp == args.exp_times:
                dense_total, extrapolated = t["total_s"], False
                diff = (torch.load(sparse_file) - torch.load(dense_file)).abs().max().item()
            else:
                dense_total = t["build_s"] + args.exp_times * square + t["product_s"]
                extrapolated, diff = True, None
            print(f"{size}²  dense {dense_total:.1f} s{' (extrapolated)' if extrapolated else ''}  "
                  f"{dense['peak_mib']:.0f} MiB", flush=True)
            rows.append({
                "grid": f"{size}x{size}", "pixels": n,
                "sparse_s": sparse["times"]["total_s"], "sparse_peak_mib": sparse["peak_mib"],
                "sparse_peak_exact": sparse["peak_exact"], "sparse_times": sparse["times"],
                "dense_s": dense_total, "dense_extrapolated": extrapolated, "dense_exp_times_run": dense_exp,
                "dense_peak_mib": dense["peak_mib"], "dense_peak_exact": dense["peak_exact"],
                "dense_times": t,
                "speedup": dense_total / sparse["times"]["total_s"],
                "memory_ratio": dense["peak_mib"] / max(sparse["peak_mib"], 1e-3),
                "max_abs_diff": diff,
            })
    return {
        "benchmark": "random_walk", "device": args.device, "dense_threads": args.threads,
        "sparse_threads": args.sparse_threads, "classes": args.classes,
        "beta": args.beta, "exp_times": args.exp_times, "dtype": "float32", "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "dense_budget_s": args.dense_budget_s, "loadavg_1min_start_end": [load_start[0], os.getloadavg()[0]],
        "rows": rows,
    }


def to_markdown(res: dict) -> str:
    lines = [
        f"# Random walk: sparse vs dense ({res['device']}, threads sparse {res['sparse_threads']} / dense "
        f"{res['dense_threads']}, K = {res['classes']}, "
        f"β = {res['beta']}, 2^{res['exp_times']} steps, float32, torch {res['torch']})",
        "",
        "| grid | sparse time (s) | sparse peak (MiB) | dense time (s) | dense peak (MiB) | speed-up | memory ratio "
        "| max abs diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        dense_s = f"{r['dense_s']:.1f}" + (f" (extrapolated from exp_times={r['dense_exp_times_run']})"
                                          if r["dense_extrapolated"] else "")
        sparse_mem = f"{r['sparse_peak_mib']:.1f}" + ("" if r["sparse_peak_exact"] else " (upper bound)")
        diff = "n/a" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
        lines.append(f"| {r['grid']} | {r['sparse_s']:.2f} | {sparse_mem} | {dense_s} | {r['dense_peak_mib']:.0f} "
                     f"| {r['speedup']:.0f}× | {r['memory_ratio']:.0f}× | {diff} |")
    lines += [
        "",
        f"CPU load average (1 min) at start / end: {res['loadavg_1min_start_end'][0]:.1f} / "
        f"{res['loadavg_1min_start_end'][1]:.1f} on {res['cpu_count']} cores (a shared machine).",
        "",
        "Memory: growth of peak RSS (CPU) or of the CUDA allocator's peak over the level just before the call, one "
        "fresh process per measurement. Dense time marked extrapolated = build + exp_times × one measured squaring "
        "+ final product (the peak memory is already reached at the first squaring).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128])
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--beta", type=float, default=5.0)
    parser.add_argument("--exp-times", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="dense reference threads")
    parser.add_argument("--sparse-threads", type=int, default=1, help="sparse walk threads")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dense-budget-s", type=float, default=180.0,
                        help="run a dense size with exp_times=1 and extrapolate when the full run is predicted longer")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--_worker", choices=["sparse", "dense"], dest="impl", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.impl:
        worker(args)
        return
    res = run(args)
    write_json_atomic(args.out / "random_walk.json", res)
    md = to_markdown(res)
    write_text_atomic(args.out / "random_walk.md", md)
    print(md)


if __name__ == "__main__":
    main()
