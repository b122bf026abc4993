"""Compute per training image of the paper presets, and the GPU-time estimate of docs/reproduce.md built on it.

No GPU is available to this project, and CPU timings do not transfer to GPUs, so the estimate is:

    GPU hours ≈ images seen × training FLOPs per image / (effective FLOP/s of the GPU)

* FLOPs per image: counted here with ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass of the
  preset's own network at its crop size (batch 1, CPU, random weights; FLOPs do not depend on the weights), times 3
  for forward + backward (2× forward for the backward of a fully trained network; the boundary net trains only its
  side branches: forward × 1.1; the CAM net trains layer3, layer4 and the classifier: forward × 2).
* Effective FLOP/s: calibrated on NVIDIA's measured ResNet-50 v1.5 training throughput (DeepLearningExamples,
  PyTorch/Classification/ConvNets/resnet50v1.5/README.md, pytorch-21.03 container, mixed precision, 1 GPU):
  A100 80GB 2,470 img/s, V100 16GB 1,200 img/s, at 3 × (this script's count of a ResNet-50 224² forward).
* Segmentation trains less efficiently than ImageNet classification (larger maps, SyncBN, memory-bound bilinear /
  softmax / LAM work, CPU-side augmentation of large images), so the table gives the FLOP-scaled figure (a lower
  bound) and ×2.5 of it as the expected time.

Usage: ``python benchmarks/bench_preset_flops.py`` (about a minute on 2 CPU cores); prints the table and writes
``benchmarks/results/preset_flops.{json,md}``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from weakseg.engine.builders import build_method  # noqa: E402
from weakseg.engine.config import load_config  # noqa: E402
from weakseg.models.backbones import build_backbone  # noqa: E402

GPUS = {"A100 80GB": 2470.0, "V100 16GB": 1200.0}  # ResNet-50 v1.5 AMP training img/s, 1 GPU (NVIDIA, see above)
PRACTICAL = 2.5  # segmentation-vs-classification efficiency penalty (see the module docstring)

# (run, preset, classes, images per epoch of the train list, what is counted)
RUNS = [
    ("BLPSeg VOC", "configs/blpseg/blpseg_r101-os32_b10-40e_voc12aug-384.yaml", 21, 10582),
    ("BLPSeg Context", "configs/blpseg/blpseg_r101-os32_b8-85e_context-384.yaml", 60, 4998),
    ("full / partial CE VOC", "configs/full/full_r101-os8_b16-50e_voc12aug-465.yaml", 21, 10582),
    ("SBE/BES final DeepLab-v2 VOC", "configs/sbe/sbe_r50-os16_b16-5e_voc12aug-512.yaml", 21, 10582),
    ("SBE/BES final DeepLab-v2 COCO", "configs/sbe/sbe_r50-os16_b16-5e_coco14-512.yaml", 81, 82081),
]


def forward_flops(module: torch.nn.Module, size: int, fn=None) -> float:
    module.eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        (fn or module)(x)
    return float(counter.get_total_flops())


def images_seen(cfg, train_len: int) -> int:
    if cfg.schedule.epochs is not None:
        iters = math.ceil(cfg.schedule.epochs * train_len / cfg.engine.batch_size)
    else:
        iters = cfg.schedule.iters
    return iters * cfg.engine.batch_size


def main() -> int:
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    rn50 = forward_flops(build_backbone("resnet50", output_stride=32), 224)
    calib = {gpu: rate * 3 * rn50 for gpu, rate in GPUS.items()}  # effective FLOP/s
    rows = []
    for name, preset, classes, train_len in RUNS:
        cfg = load_config(ROOT / preset)
        cfg.model.pretrained = None
        method = build_method(cfg, classes)
        fwd = forward_flops(method, cfg.data.crop_size, method.predict)
        rows.append(dict(run=name, preset=preset, crop=cfg.data.crop_size, fwd_gflops=fwd / 1e9, train_factor=3.0,
                         images=images_seen(cfg, train_len)))
    # SBE/BES stages 1 and 3 (§4.2, §4.4): ResNet-50 OS16 without dilation at 512², batch 16
    cam = build_backbone("resnet50", output_stride=16, dilated=False)
    cam_fwd = forward_flops(cam, 512)
    rows.append(dict(run="SBE/BES CAM net VOC (5 epochs)", preset="method.cam", crop=512, fwd_gflops=cam_fwd / 1e9,
                     train_factor=2.0, images=math.ceil(5 * 10582 / 16) * 16))
    rows.append(dict(run="SBE/BES boundary net VOC (3 epochs)", preset="method.boundary", crop=512,
                     fwd_gflops=cam_fwd / 1e9, train_factor=1.1, images=math.ceil(3 * 10582 / 16) * 16))
    rows.append(dict(run="SBE/BES CAM net COCO (5 epochs)", preset="method.cam", crop=512, fwd_gflops=cam_fwd / 1e9,
                     train_factor=2.0, images=math.ceil(5 * 82081 / 16) * 16))
    rows.append(dict(run="SBE/BES boundary net COCO (3 epochs)", preset="method.boundary", crop=512,
                     fwd_gflops=cam_fwd / 1e9, train_factor=1.1, images=math.ceil(3 * 82081 / 16) * 16))
    for r in rows:
        total = r["fwd_gflops"] * 1e9 * r["train_factor"] * r["images"]
        for gpu, rate in calib.items():
            r[f"hours_lower_{gpu}"] = total / rate / 3600
            r[f"hours_expected_{gpu}"] = PRACTICAL * total / rate / 3600
    lines = [
        f"ResNet-50 224² forward: {rn50 / 1e9:.2f} GFLOPs (FlopCounterMode, 2 FLOPs per multiply-add); effective "
        + ", ".join(f"{g}: {c / 1e12:.1f} TFLOP/s" for g, c in calib.items())
        + f" (NVIDIA's measured ResNet-50 AMP training img/s × 3 × forward). Expected = {PRACTICAL} × lower bound.",
        "",
        "| run | crop | forward GFLOPs / image | train × | images seen | " + " | ".join(
            f"{g} h (lower / expected)" for g in GPUS) + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(GPUS),
    ]
    for r in rows:
        lines.append(f"| {r['run']} | {r['crop']} | {r['fwd_gflops']:.0f} | {r['train_factor']} | {r['images']:,} | "
                     + " | ".join(f"{r[f'hours_lower_{g}']:.1f} / {r[f'hours_expected_{g}']:.1f}" for g in GPUS)
                     + " |")
    text = "\n".join(lines)
    print(text)
    print(f"(counted in {time.perf_counter() - t0:.0f} s)")
    out = ROOT / "benchmarks" / "results"
    (out / "preset_flops.json").write_text(json.dumps({"resnet50_224_gflops": rn50 / 1e9, "gpus": GPUS,
                                                       "practical_factor": PRACTICAL, "rows": rows}, indent=2) + "\n")
    (out / "preset_flops.md").write_text("# Paper presets: training compute and GPU-time estimate\n\n"
                                         "`python benchmarks/bench_preset_flops.py` (see its docstring for the "
                                         "method).\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
