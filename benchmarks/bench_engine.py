"""Training and inference speed, and efficiency, of the project's networks, per network and precision.

    python benchmarks/bench_engine.py [--device cpu|cuda] [--networks KEY ...] [--iters 6] [--ratio-iters 6]
                                      [--peak-tflops 989] [--out PATH]

Per network (a preset plus overrides: its own batch and crop size) and precision variant (fp32 / bf16 autocast,
channels_last, torch.compile on CUDA), one subprocess (so that peak memory is its own) measures:

* the median training-step time (forward, backward, AdamW step) over ``--iters`` steps after 2 warm-up steps, and
  images/s; the inference images/s of ``predict``;
* the FLOPs of one training step, counted by PyTorch's ``FlopCounterMode`` (matmuls and convolutions, forward and
  backward; LAM's windowed matmuls included), and the achieved GFLOP/s = FLOPs / step time;
* the matrix-multiply rate of the same device and precision, measured in the same process just before and after
  the steps (median of both): **efficiency** = achieved GFLOP/s ÷ matmul GFLOP/s. A regression in efficiency (an
  op that stopped using the fast kernels, a precision that is emulated, a needless copy) shows as a lower number
  whatever the machine's speed. On CUDA the fraction of the GPU's peak dense bf16 rate (``--peak-tflops``, default
  989 TFLOP/s: H100 / H200 SXM) is reported as well.

The BLPSeg overhead is measured in its own subprocess: BLPSeg and the plain network with the same backbone and
decoder (partial CE), trained alternately (A B A B …) for ``--ratio-iters`` rounds so that both see the same load;
the ratio of the medians is reported, with the same ratio of process CPU times (user + system; less sensitive to
other jobs on a shared CPU) and the load average before and after.

Networks (``NETWORKS``; add an entry to extend the list): on CPU the demo and horse networks; on CUDA the BLPSeg
paper network (ResNet-101 + UPerNet, batch 10, 384²), DeepLab-v2 ResNet-101 (batch 10, 321²) and a CDSP-like
DeepLab-v3+ ResNet-101 OS8 (batch 16, 465²). Results: benchmarks/results/engine_<device>.json and .md, with the CPU
model, thread count, the load average before and after, and ``engine.amp: auto``'s decision on this machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclasses.dataclass(frozen=True)
class Net:
    label: str
    preset: str  # under configs/
    batch: int
    size: int  # square crop
    num_classes: int
    overrides: tuple[str, ...] = ()


NETWORKS: dict[str, Net] = {
    # CPU: the demo table's network (MobileNetV2 + 64-channel UPerNet, 16 × 64²) and the horse ablation's
    # (MobileNetV2 + 128-channel UPerNet, 8 × 192²), plain and BLPSeg
    "demo-pce": Net("demo: partial CE, MobileNetV2 + UPerNet-64", "demo/partial_ce.yaml", 16, 64, 6),
    "demo-blpseg": Net("demo: BLPSeg, MobileNetV2 + UPerNet-64 + LAM", "demo/blpseg.yaml", 16, 64, 6),
    "horse-pce": Net("horse: partial CE, MobileNetV2 + UPerNet-128",
                     "partial_ce/partial-ce_mnv2-os32-uper_b8-800i_horse-192.yaml", 8, 192, 2),
    "horse-blpseg": Net("horse: BLPSeg, MobileNetV2 + UPerNet-128 + LAM",
                        "blpseg/blpseg_mnv2-os32_b8-800i_horse-192.yaml", 8, 192, 2),
    # CUDA: paper networks
    "blpseg-r101": Net("BLPSeg paper: ResNet-101s OS32 + UPerNet-256 + LAM",
                       "blpseg/blpseg_r101-os32_b10-40e_voc12aug-384.yaml", 10, 384, 21),
    "deeplabv2-r101": Net("DeepLab-v2 ResNet-101 OS8", "full/full_r101-os8_b16-50e_voc12aug-465.yaml", 10, 321, 21,
                          ("model.head=deeplabv2", "model.head_kwargs={}")),
    "cdsp-r101": Net("CDSP-like: DeepLab-v3+ ResNet-101 OS8", "full/full_r101-os8_b16-50e_voc12aug-465.yaml", 16, 465,
                     21),
}
DEFAULT_NETWORKS = {"cpu": ["demo-pce", "demo-blpseg", "horse-pce", "horse-blpseg"],
                    "cuda": ["blpseg-r101", "deeplabv2-r101", "cdsp-r101"]}
# (name, amp, channels_last, torch.compile)
VARIANTS = {"cpu": [("fp32", "none", True, False), ("bf16", "bf16", True, False)],
            "cuda": [("fp32", "none", False, False), ("bf16", "bf16", False, False),
                     ("bf16 + channels_last", "bf16", True, False),
                     ("bf16 + channels_last + compile", "bf16", True, True)]}
RATIO_PAIRS = {"cpu": [("horse-blpseg", "horse-pce"), ("demo-blpseg", "demo-pce")], "cuda": []}
PEAK_BF16_TFLOPS = 989.0  # H100 / H200 SXM, dense bf16 tensor cores (NVIDIA data sheet)


def build(key: str, device, channels_last: bool):
    import torch

    from weakseg.engine.builders import build_method
    from weakseg.engine.config import load_config

    net = NETWORKS[key]
    cfg = load_config(ROOT / "configs" / net.preset, [*net.overrides, "model.pretrained=null"])
    torch.manual_seed(0)
    method = build_method(cfg, net.num_classes).to(device)
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(method.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(0)
    b, s, c = net.batch, net.size, net.num_classes
    x = torch.randn(b, 3, s, s, generator=g)
    label = torch.randint(0, c, (b, s, s), generator=g)
    scribble = torch.where(torch.rand(b, s, s, generator=g) < 0.05, label, torch.full_like(label, 255))
    batch = {"image": x, "label": label, "scribble": scribble, "tags": torch.ones(b, c),
             "valid": torch.ones(b, s, s, dtype=torch.long)}
    batch = {k: v.to(device) for k, v in batch.items()}
    if channels_last:
        batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
    return method, opt, batch


def train_step(method, opt, batch, device, dtype) -> None:
    from weakseg.engine.amp import autocast

    with autocast(device, dtype):
        out = method(batch, 0)
    loss = sum(v.float() for k, v in out.items() if k.startswith("loss_"))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(device, dtype, repeats: int = 5) -> float:
    """Best of ``repeats`` square matmuls (1024² on CPU, 8192² on CUDA) in ``dtype``, GFLOP/s."""
    import torch

    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def count_flops(method, opt, batch, device) -> int:
    """FLOPs of one fp32 training step (forward + backward) by PyTorch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        train_step(method, opt, batch, device, None)
    return int(counter.get_total_flops())


def measure(key: str, device: str, iters: int, amp: str, channels_last: bool, compile: bool) -> dict:
    import torch

    from weakseg.engine.amp import autocast, autocast_dtype

    dev = torch.device(device)
    method, opt, batch = build(key, dev, channels_last)
    flops = count_flops(method, opt, batch, dev)
    if compile:
        method.model = torch.compile(method.model)
    dtype = autocast_dtype(amp, dev)
    mm_dtype = dtype or torch.float32
    rates = [matmul_gflops(dev, mm_dtype)]
    method.train()
    times = []
    for i in range(iters + 2):  # 2 warm-up steps (and compilation)
        sync(dev)
        t0 = time.perf_counter()
        train_step(method, opt, batch, dev, dtype)
        sync(dev)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    rates.append(matmul_gflops(dev, mm_dtype))
    method.eval()
    infer = []
    with torch.no_grad():
        for i in range(iters + 2):
            sync(dev)
            t0 = time.perf_counter()
            with autocast(dev, dtype):
                method.predict(batch["image"])
            sync(dev)
            if i >= 2:
                infer.append(time.perf_counter() - t0)
    step = statistics.median(times)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    mm = statistics.median(rates)
    return {"step_s": step, "steps_s": times, "img_s": NETWORKS[key].batch / step,
            "infer_img_s": NETWORKS[key].batch / statistics.median(infer), "gflop_step": flops / 1e9,
            "gflop_s": flops / 1e9 / step, "matmul_gflop_s": mm, "efficiency": flops / 1e9 / step / mm,
            "peak_mib": peak, "threads": torch.get_num_threads()}


def ratio(a: str, b: str, device: str, iters: int) -> dict:
    """Alternate training steps of networks a and b (same load for both); medians and their ratio."""
    import torch

    dev = torch.device(device)
    nets = {k: build(k, dev, channels_last=True) for k in (a, b)}
    times: dict[str, list[float]] = {a: [], b: []}
    # process CPU time (user + system) as well: on a CPU shared with other jobs the wall time of a step depends on
    # how often this process is descheduled, its CPU time much less so
    cpu: dict[str, list[float]] = {a: [], b: []}
    loads = [os.getloadavg()[0]]
    for i in range(iters + 1):  # one warm-up round
        for k, (method, opt, batch) in nets.items():
            sync(dev)
            t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
            train_step(method, opt, batch, dev, None)
            sync(dev)
            c1 = resource.getrusage(resource.RUSAGE_SELF)
            if i:
                times[k].append(time.perf_counter() - t0)
                cpu[k].append(c1.ru_utime - c0.ru_utime + c1.ru_stime - c0.ru_stime)
    loads.append(os.getloadavg()[0])
    ma, mb = statistics.median(times[a]), statistics.median(times[b])
    ca, cb = statistics.median(cpu[a]), statistics.median(cpu[b])
    return {"a": a, "b": b, "a_s": ma, "b_s": mb, "ratio": ma / mb, "a_steps": times[a], "b_steps": times[b],
            "pairwise_ratio_median": statistics.median(x / y for x, y in zip(times[a], times[b])),
            "a_cpu_s": ca, "b_cpu_s": cb, "cpu_ratio": ca / cb, "a_cpu_steps": cpu[a], "b_cpu_steps": cpu[b],
            "load_before_after": loads}


def machine() -> dict:
    import torch

    from weakseg.engine.amp import cpu_auto_dtype

    from weakseg.utils.machine import cpu_name

    dtype, reason = cpu_auto_dtype()
    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpu_amp_auto": reason}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def child(mode: str, spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, f"--{mode}", json.dumps(spec)], capture_output=True, text=True,
                          cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"{mode} {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(meta: dict, rows: list[dict], ratios: list[dict]) -> str:
    cuda = meta["device"] == "cuda"
    load = " → ".join(f"{a:.1f}" for a in (meta["load_before"][0], meta["load_after"][0]))
    lines = [f"Device {meta['device']}" + (f" ({meta['gpu']})" if cuda and "gpu" in meta else "") +
             f"; CPU {meta['cpu']}, {meta['cores']} cores, {meta['threads']} threads; torch {meta['torch']}; "
             f"1-minute load average {load} (before → after). Median of {meta['iters']} steps after 2 warm-up. "
             f"FLOPs: PyTorch's FlopCounterMode, one fp32 training step (forward + backward). Efficiency: "
             f"achieved GFLOP/s ÷ the same precision's matmul GFLOP/s measured in the same process.",
             "", f"`engine.amp: auto` on this CPU: {meta['cpu_amp_auto']}.", ""]
    head = ("| network | precision | batch × size² | step s | img/s | GFLOP/step | GFLOP/s | matmul GFLOP/s | "
            "efficiency |" + (" % of peak bf16 |" if cuda else "") + " inference img/s | peak MiB |")
    lines += [head, "|---|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if cuda else "") + "---:|---:|"]
    for r in rows:
        net = NETWORKS[r["network"]]
        peak = f" {100 * r['gflop_s'] / (1e3 * meta['peak_tflops']):.1f} |" if cuda else ""
        lines.append(f"| {net.label} | {r['precision']} | {net.batch} × {net.size}² | {r['step_s']:.3f} | "
                     f"{r['img_s']:.1f} | {r['gflop_step']:.1f} | {r['gflop_s']:.1f} | {r['matmul_gflop_s']:.1f} | "
                     f"{r['efficiency']:.2f} |{peak} {r['infer_img_s']:.1f} | {r['peak_mib']:.0f} |")
    if ratios:
        lines += ["", "BLPSeg training step ÷ the plain step (partial CE) with the same backbone and decoder, fp32, "
                  f"alternating steps ({meta['ratio_iters']} rounds after one warm-up):", "",
                  "| BLPSeg network | plain network | BLPSeg step s | plain step s | ratio of medians | "
                  "median of pairwise ratios | BLPSeg CPU s | plain CPU s | CPU-time ratio | load before → after |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        lines += [f"| {NETWORKS[r['a']].label} | {NETWORKS[r['b']].label} | {r['a_s']:.3f} | {r['b_s']:.3f} | "
                  f"{r['ratio']:.2f} | {r['pairwise_ratio_median']:.2f} | {r['a_cpu_s']:.3f} | {r['b_cpu_s']:.3f} | "
                  f"{r['cpu_ratio']:.2f} | {' → '.join(f'{x:.1f}' for x in r['load_before_after'])} |"
                  for r in ratios]
        lines += ["", "Step s: wall clock; CPU s: the process's user + system time for the same steps (less "
                  "sensitive to other jobs on a shared CPU). The target of issue 13 is a ratio ≤ 1.25."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--networks", nargs="+", choices=sorted(NETWORKS), help="default: the device's list")
    ap.add_argument("--variants", nargs="+", help="precision variants by name (default: all of the device's)")
    ap.add_argument("--iters", type=int, default=6, help="timed training steps per network and precision")
    ap.add_argument("--ratio-iters", type=int, default=6, help="alternating rounds of the BLPSeg-overhead pairs "
                                                               "(0: skip)")
    ap.add_argument("--peak-tflops", type=float, default=PEAK_BF16_TFLOPS,
                    help="the GPU's peak dense bf16 TFLOP/s (default: H100/H200 SXM)")
    ap.add_argument("--out", help="results path without suffix (default benchmarks/results/engine_<device>)")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--ratio", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(**json.loads(args.measure))))
        return
    if args.ratio:
        print(json.dumps(ratio(**json.loads(args.ratio))))
        return
    from weakseg.utils.io import write_json_atomic, write_text_atomic

    dev = args.device
    meta = {"device": dev, **machine(), "iters": args.iters, "ratio_iters": args.ratio_iters,
            "peak_tflops": args.peak_tflops, "load_before": os.getloadavg()}
    print(json.dumps(meta), flush=True)
    ratios = []
    pairs = [p for p in RATIO_PAIRS[dev] if args.networks is None or set(p) <= set(args.networks)]
    for a, b in pairs if args.ratio_iters else []:
        r = child("ratio", dict(a=a, b=b, device=dev, iters=args.ratio_iters))
        ratios.append(r)
        print(f"{a} / {b}: {r['a_s']:.3f} s / {r['b_s']:.3f} s = {r['ratio']:.2f} "
              f"(pairwise median {r['pairwise_ratio_median']:.2f}; CPU time {r['cpu_ratio']:.2f}; load "
              f"{r['load_before_after'][0]:.1f} → {r['load_before_after'][1]:.1f})", flush=True)
    rows = []
    for key in args.networks or DEFAULT_NETWORKS[dev]:
        for name, amp, cl, comp in VARIANTS[dev]:
            if args.variants and name not in args.variants:
                continue
            r = child("measure", dict(key=key, device=dev, iters=args.iters, amp=amp, channels_last=cl,
                                      compile=comp))
            rows.append({"network": key, "precision": name, **r})
            print(f"{key:15s} {name:30s} step {r['step_s']:.3f} s  {r['img_s']:.1f} img/s  "
                  f"{r['gflop_s']:.1f} GFLOP/s of {r['gflop_step']:.1f} GFLOP  matmul {r['matmul_gflop_s']:.1f}  "
                  f"efficiency {r['efficiency']:.2f}", flush=True)
    meta["load_after"] = os.getloadavg()
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"engine_{dev}"
    write_json_atomic(out.with_suffix(".json"), {"meta": meta, "rows": rows, "blpseg_ratio": ratios})
    table = markdown(meta, rows, ratios)
    write_text_atomic(out.with_suffix(".md"), table)
    print(table)


if __name__ == "__main__":
    main()
