"""``weakseg predict`` throughput (images/s, end to end: decode, network, optional CRF, PNG writing) on the real
horse val images, for a randomly initialised DeepLab-v3+ MobileNetV2 (the speed does not depend on the weights).

    python benchmarks/bench_predict.py [--images 30] [--device cpu]

Rows: plain, flip, and with each CRF backend (2 worker processes). Results: benchmarks/results/predict.json/.md.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from weakseg.data.meta import DatasetMeta
from weakseg.engine.config import EvalConfig, ModelConfig
from weakseg.engine.predictor import predict_images
from weakseg.methods.full import FullSupervision, FullSupervisionConfig
from weakseg.utils.io import write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
HORSES = ROOT.parent / "shared" / "data" / "weizmann-horse"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ids = (HORSES / "ImageSets/Segmentation/val.txt").read_text().split()[: args.images]
    inputs = [str(HORSES / "JPEGImages" / f"{i}.jpg") for i in ids]
    torch.manual_seed(0)
    meta = DatasetMeta(("background", "horse"))
    method = FullSupervision(FullSupervisionConfig(), ModelConfig(backbone="mobilenet_v2", head="deeplabv3plus"), 2)
    device = torch.device(args.device)
    method.to(device)
    from weakseg.modules.crf import pydensecrf_available

    rows = []
    variants = [("single scale", EvalConfig(), {}), ("flip", EvalConfig(flip=True), {}),
                ("CRF deeplabv2 (2 workers)", EvalConfig(crf="deeplabv2"), {"crf_workers": 2})]
    for name, ev, kw in variants:
        if ev.crf and not pydensecrf_available():
            name += " [torch backend]"
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            predict_images(method, meta, inputs, Path(tmp), ev=ev, mean=(0.485, 0.456, 0.406),
                           std=(0.229, 0.224, 0.225), device=device, batch_size=1, **kw)
            dt = time.perf_counter() - t0
        rows.append({"variant": name, "images": len(inputs), "seconds": dt, "images_per_s": len(inputs) / dt})
        print(f"{name:40s} {len(inputs) / dt:6.2f} images/s", flush=True)
    out = ROOT / "benchmarks" / "results" / "predict"
    write_json_atomic(out.with_suffix(".json"), {"device": args.device, "rows": rows})
    lines = [f"`weakseg predict` on {len(inputs)} Weizmann-horse val images (≈180–330 px), DeepLab-v3+ MobileNetV2, "
             f"{args.device}.", "", "| variant | images/s |", "|---|---:|"]
    lines += [f"| {r['variant']} | {r['images_per_s']:.2f} |" for r in rows]
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
