"""Windowed vs dense LAM (methods.md §2.4): forward + backward time and peak memory per grid size.

    python benchmarks/bench_lam.py                     # CPU, grids 96², 128², 160², C = 21, D = 256, σ = 6, radius 24
    python benchmarks/bench_lam.py --device cuda       # CUDA allocator peaks instead of RSS

Implementations, all on the same inputs (fixed seed; smooth random S and F with ‖F‖ = 3, a fixed random upstream
gradient), fp32, batch 1:
    * ``windowed``: :class:`weakseg.modules.lam.LAM` (eager mode: each pair of tiles within the window once, for
      both directions; its weights, 21 M / 41 M / 67 M values at 96² / 128² / 160², fit the default
      ``save_elements`` = 2^26, so the backward reuses them);
    * ``dense``: :func:`weakseg.modules.lam.lam_dense`, the spec's four steps with n×n matrices (A_feat, G, K, W),
      truncated to the same window, differentiated by autograd — what the reference code does;
    * ``dense-softmax``: the leanest dense form, W = softmax_a(FᵀF − ‖Δp‖²/(2σ²)) with the window as a mask (one
      n×n matrix kept for backward) — the best case for any dense implementation.

Every measurement runs in a fresh subprocess. CPU memory is the growth of the process's peak RSS over its RSS just
before the call (inputs allocated, a tiny warm-up call done so lazy initialisation is not counted); CUDA memory is
``max_memory_allocated`` minus the allocation before the call. The reported time is the first (measured) call for
the dense forms and the median of ``--repeats`` calls for the windowed one.

A dense form is not run when its peak predicted from the previous grid (× the square of the position ratio; dense
memory is dominated by n×n matrices) exceeds ``--dense-max-gib``: on a shared 23 GiB machine the spec-literal dense
LAM at 160² (≈ 8 n×n fp32 matrices ≈ 20 GiB) cannot run safely. Its memory and time are then extrapolated from the
largest measured grid (both ∝ n²) and marked so in the table.

Threads: ``--threads`` (default 1) for every implementation. On a CPU shared with other jobs, OpenMP barriers wait
for descheduled threads (measured for the windowed LAM at 128² under a load of 6 on 2 cores: 5.6 s on 1 thread vs
18.7 s on 2).

Results go to ``benchmarks/results/lam.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from weakseg.modules.lam import LAM, lam_dense
from weakseg.utils.io import write_json_atomic, write_text_atomic

RESULTS = Path(__file__).resolve().parent / "results"
IMPLS = ("windowed", "dense", "dense-softmax")


def make_inputs(size: int, classes: int, dim: int, seed: int, device: str) -> tuple[torch.Tensor, ...]:
    """Smooth random S (1×C×n×n), F (1×D×n×n, ‖F‖ = 3 per position) and an upstream gradient (1×C×n×n)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, classes + dim, max(2, size // 8), max(2, size // 8), generator=g)
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    seg = smooth[:, :classes].contiguous()
    feat = smooth[:, classes:]
    feat = (3.0 * feat / feat.norm(dim=1, keepdim=True)).contiguous()
    upstream = torch.randn(1, classes, size, size, generator=g)
    return seg.to(device), feat.to(device), upstream.to(device)


def lam_dense_softmax(seg: torch.Tensor, feat: torch.Tensor, sigma: float, radius: int) -> torch.Tensor:
    """Lean dense LAM: one n×n logit matrix, masked column softmax, one n×n weight matrix kept for backward."""
    n, c, h, w = seg.shape
    f = feat.flatten(2)
    rows, cols = torch.meshgrid(torch.arange(h, device=seg.device), torch.arange(w, device=seg.device), indexing="ij")
    pos = torch.stack([rows.flatten(), cols.flatten()], dim=1).to(f.dtype)
    logits = torch.bmm(f.transpose(1, 2), f)
    with torch.no_grad():
        bias = torch.cdist(pos, pos).square_().mul_(-1.0 / (2.0 * sigma * sigma))
        bias.masked_fill_(torch.cdist(pos, pos, p=float("inf")) > radius, float("-inf"))
    logits = logits + bias
    del bias
    return torch.bmm(seg.flatten(2), logits.softmax(dim=1)).view(n, c, h, w)


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
    seg, feat, upstream = make_inputs(args.size, args.classes, args.dim, args.seed, device)
    radius = args.radius
    if args.impl == "windowed":
        lam = LAM(args.sigma, radius)
        fn = lam
    elif args.impl == "dense":
        def fn(s, f):
            return lam_dense(s, f, args.sigma, radius)
    else:
        def fn(s, f):
            return lam_dense_softmax(s, f, args.sigma, radius)

    def call(s, f, up):
        s, f = s.detach().requires_grad_(), f.detach().requires_grad_()
        out = fn(s, f)
        (out * up).sum().backward()
        return out.detach(), s.grad, f.grad

    call(seg[..., :8, :8].clone(), feat[..., :8, :8].clone(), upstream[..., :8, :8].clone())  # warm-up
    _sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        mem0 = torch.cuda.memory_allocated()
    rss0, maxrss0 = _rss_kib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0, c0 = time.perf_counter(), time.process_time()
    out, grad_seg, grad_feat = call(seg, feat, upstream)
    _sync(device)
    times, cpu_times = [time.perf_counter() - t0], [time.process_time() - c0]
    if device == "cuda":
        peak_mib, exact = (torch.cuda.max_memory_allocated() - mem0) / 2**20, True
    else:
        maxrss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        exact = maxrss1 > maxrss0  # the growth is exact only if the call set a new high-water mark
        peak_mib = ((maxrss1 if exact else maxrss0) - rss0) / 1024
    for _ in range(args.repeats - 1):
        t0, c0 = time.perf_counter(), time.process_time()
        call(seg, feat, upstream)
        _sync(device)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    if args.save:
        torch.save({"out": out.cpu(), "grad_seg": grad_seg.cpu(), "grad_feat": grad_feat.cpu()}, args.save)
    print(json.dumps({"time_s": statistics.median(times), "times_s": times, "cpu_s": statistics.median(cpu_times),
                      "peak_mib": peak_mib, "peak_exact": exact}))


def measure(impl: str, size: int, args: argparse.Namespace, save: str | None) -> dict:
    cmd = [sys.executable, __file__, "--_worker", impl, "--size", str(size), "--classes", str(args.classes),
           "--dim", str(args.dim), "--sigma", str(args.sigma), "--radius", str(args.radius), "--seed", str(args.seed),
           "--threads", str(args.threads), "--device", args.device,
           "--repeats", str(args.repeats if impl == "windowed" else 1)]
    if save:
        cmd += ["--save", save]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{impl} {size}² failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _max_diff(a: dict, b: dict) -> dict:
    return {k: (a[k] - b[k]).abs().max().item() for k in ("out", "grad_seg", "grad_feat")}


def run(args: argparse.Namespace) -> dict:
    load_start = os.getloadavg()
    rows = []
    last: dict[str, tuple[int, dict]] = {}  # impl → (positions, measurement) of the largest measured grid
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            n = size * size
            row: dict = {"grid": f"{size}x{size}", "positions": n}
            files = {impl: f"{tmp}/{impl}{size}.pt" for impl in IMPLS}
            for impl in IMPLS:
                prev = last.get(impl)
                predicted = None if prev is None else prev[1]["peak_mib"] * (n / prev[0]) ** 2 / 1024
                if impl != "windowed" and predicted is not None and predicted > args.dense_max_gib:
                    m = {"time_s": prev[1]["time_s"] * (n / prev[0]) ** 2,
                         "peak_mib": prev[1]["peak_mib"] * (n / prev[0]) ** 2, "extrapolated": True}
                else:
                    m = measure(impl, size, args, files[impl]) | {"extrapolated": False}
                    last[impl] = (n, m)
                row[impl] = m
                print(f"{size}²  {impl:13s} {m['time_s']:8.2f} s  {m['peak_mib']:9.1f} MiB"
                      f"{'  (extrapolated)' if m['extrapolated'] else ''}", flush=True)
            win = torch.load(files["windowed"])
            for impl in IMPLS[1:]:
                row[f"{impl}_max_abs_diff"] = (None if row[impl]["extrapolated"]
                                               else _max_diff(win, torch.load(files[impl])))
                row[f"{impl}_speedup"] = row[impl]["time_s"] / row["windowed"]["time_s"]
                row[f"{impl}_memory_ratio"] = row[impl]["peak_mib"] / max(row["windowed"]["peak_mib"], 1e-3)
            for impl in IMPLS:
                with_file = Path(files[impl])
                if with_file.exists():
                    with_file.unlink()
            rows.append(row)
    return {
        "benchmark": "lam", "device": args.device, "threads": args.threads, "classes": args.classes,
        "feat_dim": args.dim, "sigma": args.sigma, "radius": args.radius, "batch": 1, "dtype": "float32",
        "windowed_repeats": args.repeats, "dense_max_gib": args.dense_max_gib, "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "loadavg_1min_start_end": [load_start[0], os.getloadavg()[0]], "rows": rows,
    }


def to_markdown(res: dict) -> str:
    lines = [
        f"# LAM: windowed vs dense, forward + backward ({res['device']}, {res['threads']} thread(s), batch 1, "
        f"C = {res['classes']}, D = {res['feat_dim']}, σ = {res['sigma']}, radius = {res['radius']}, float32, "
        f"torch {res['torch']})",
        "",
        "| grid | windowed time (s) | windowed peak (MiB) | dense time (s) | dense peak (MiB) | speed-up "
        "| memory ratio "
        "| dense-softmax time (s) | dense-softmax peak (MiB) | speed-up | memory ratio "
        "| max abs diff vs dense (out / dS / dF) | max abs diff vs dense-softmax |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(m: dict, key: str, fmt: str) -> str:
        return format(m[key], fmt) + (" (extrap.)" if m["extrapolated"] else "")

    for r in res["rows"]:
        w = r["windowed"]
        wmem = f"{w['peak_mib']:.0f}" + ("" if w["peak_exact"] else " (upper bound)")
        parts = [r["grid"], f"{w['time_s']:.2f}", wmem]
        for impl in IMPLS[1:]:
            m = r[impl]
            parts += [cell(m, "time_s", ".1f"), cell(m, "peak_mib", ".0f"), f"{r[f'{impl}_speedup']:.1f}×",
                      f"{r[f'{impl}_memory_ratio']:.1f}×"]
        for impl in IMPLS[1:]:
            diff = r[f"{impl}_max_abs_diff"]
            parts.append("n/a" if diff is None
                         else " / ".join(f"{diff[k]:.1e}" for k in ("out", "grad_seg", "grad_feat")))
        lines.append("| " + " | ".join(parts) + " |")
    lines += [
        "",
        f"CPU load average (1 min) at start / end: {res['loadavg_1min_start_end'][0]:.1f} / "
        f"{res['loadavg_1min_start_end'][1]:.1f} on {res['cpu_count']} cores (a shared machine).",
        "",
        "dense = spec §2.4 steps with n×n A_feat, G, K, W (autograd); "
        "dense-softmax = one masked n×n column softmax. "
        "All three use the same window (|Δrow|, |Δcol| ≤ radius). Memory: growth of peak RSS (CPU) or of the CUDA "
        "allocator's peak over the level just before the call, one fresh process per measurement. "
        "(extrap.) = not run because the peak predicted from the previous grid exceeds "
        f"{res['dense_max_gib']} GiB; time and memory scaled ∝ n² from the largest measured grid. "
        "max abs diff = windowed vs the dense form (output, dL/dS, dL/dF). "
        "Speed-up and memory ratio = dense / windowed; "
        "windowed time = median of its calls (process CPU seconds are in the JSON).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 128, 160])
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--dim", type=int, default=256, help="feature channels D")
    parser.add_argument("--sigma", type=float, default=6.0)
    parser.add_argument("--radius", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of the windowed LAM (median reported)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dense-max-gib", type=float, default=10.0,
                        help="skip (and extrapolate) a dense run whose predicted peak exceeds this")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--_worker", choices=IMPLS, dest="impl", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.impl:
        worker(args)
        return
    res = run(args)
    write_json_atomic(args.out / "lam.json", res)
    md = to_markdown(res)
    write_text_atomic(args.out / "lam.md", md)
    print(md)


if __name__ == "__main__":
    main()
