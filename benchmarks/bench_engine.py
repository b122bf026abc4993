"""Training iterations/s, inference images/s and peak memory of the demo networks, measured side by side in one run.

    python benchmarks/bench_engine.py [--device cpu|cuda] [--iters 10] [--size 128] [--batch 16]

Each configuration runs in its own subprocess so that its peak resident memory (ru_maxrss, CPU) or peak CUDA
allocation is its own. Results go to benchmarks/results/engine.json and engine.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = [  # (label, method, model overrides)
    ("DeepLab-v3+ MobileNetV2 OS16 (baselines)", "full",
     dict(backbone="mobilenet_v2", head="deeplabv3plus", output_stride=16, head_kwargs={"aspp_channels": 128})),
    ("BLPSeg MobileNetV2 OS32 UPerNet-128 + LAM", "blpseg",
     dict(backbone="mobilenet_v2", head="uper", output_stride=32, head_kwargs={})),
    ("DeepLab-v3+ ResNet-50 OS16", "full",
     dict(backbone="resnet50", head="deeplabv3plus", output_stride=16, head_kwargs={})),
]


def measure(method_name: str, model: dict, device: str, iters: int, size: int, batch: int, amp: str,
            channels_last: bool) -> dict:
    import torch

    from weakseg.engine.amp import autocast, autocast_dtype
    from weakseg.engine.config import ModelConfig
    from weakseg.methods import METHODS

    dev = torch.device(device)
    cls = METHODS[method_name]
    mcfg = cls.Config() if method_name != "blpseg" else cls.Config(decoder_channels=128, lam_sigma=3.0)
    method = cls(mcfg, ModelConfig(**model), 7).to(dev)
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    dtype = autocast_dtype(amp, dev)
    opt = torch.optim.AdamW(method.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size, device=dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    label = torch.randint(0, 7, (batch, size, size), device=dev)
    scribble = torch.where(torch.rand(batch, size, size, device=dev) < 0.05, label, torch.full_like(label, 255))
    batch_dict = {"image": x, "label": label, "scribble": scribble, "tags": torch.ones(batch, 7, device=dev),
                  "valid": torch.ones(batch, size, size, dtype=torch.long, device=dev)}

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    method.train()
    times = []
    for i in range(iters + 2):  # 2 warm-up iterations
        sync()
        t0 = time.perf_counter()
        with autocast(dev, dtype):
            out = method(batch_dict, 0)
        loss = sum(v.float() for k, v in out.items() if k.startswith("loss_"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    method.eval()
    infer = []
    with torch.no_grad():
        for i in range(iters + 2):
            sync()
            t0 = time.perf_counter()
            with autocast(dev, dtype):
                method.predict(x)
            sync()
            if i >= 2:
                infer.append(time.perf_counter() - t0)
    times.sort()
    infer.sort()
    peak = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"train_it_s": 1 / times[len(times) // 2], "train_img_s": batch / times[len(times) // 2],
            "infer_img_s": batch / infer[len(infer) // 2], "peak_mib": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:  # one measurement in this process
        spec = json.loads(args.child)
        print(json.dumps(measure(**spec)))
        return
    from weakseg.utils.io import write_json_atomic, write_text_atomic

    rows = []
    for label, method, model in CONFIGS:
        for amp, cl in (("none", True), ("bf16", True)):
            spec = dict(method_name=method, model=model, device=args.device, iters=args.iters, size=args.size,
                        batch=args.batch, amp=amp, channels_last=cl)
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                  text=True, cwd=ROOT)
            if proc.returncode:
                raise SystemExit(f"{label} ({amp}) failed:\n{proc.stderr[-2000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append({"config": label, "amp": amp, "channels_last": cl, **r})
            print(f"{label:45s} amp={amp:4s}  train {r['train_it_s']:.2f} it/s ({r['train_img_s']:.1f} img/s)  "
                  f"infer {r['infer_img_s']:.1f} img/s  peak {r['peak_mib']:.0f} MiB", flush=True)
    out = ROOT / "benchmarks" / "results" / f"engine_{args.device}"
    meta = {"device": args.device, "size": args.size, "batch": args.batch, "iters": args.iters}
    write_json_atomic(out.with_suffix(".json"), {"meta": meta, "rows": rows})
    lines = [f"Batch {args.batch} at {args.size}², {args.device}, median of {args.iters} iterations after 2 warm-up.",
             "", "| network | amp | train it/s | train img/s | inference img/s | peak MiB |",
             "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['config']} | {r['amp']} | {r['train_it_s']:.2f} | {r['train_img_s']:.1f} | "
              f"{r['infer_img_s']:.1f} | {r['peak_mib']:.0f} |" for r in rows]
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
