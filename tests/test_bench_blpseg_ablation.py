"""The distance-quarter metric of benchmarks/bench_blpseg_ablation.py on a hand-computed case."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_blpseg_ablation.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_blpseg_ablation", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _png(path: Path, values) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.array([values], dtype=np.uint8), mode="L").save(path)


def test_distance_quarters_hand_computed(tmp_path, bench):
    # a 1×9 image, one scribble pixel at column 0: distances 0..8; the last pixel is unlabelled (255), so the
    # quartiles of the labelled distances 0..7 are 1.75 / 3.5 / 5.25 → quarters {0,1} {2,3} {4,5} {6,7}
    _png(tmp_path / "SegmentationClass" / "a.png", [0, 1, 0, 1, 0, 1, 0, 1, 255])
    _png(tmp_path / "scribbles" / "a.png", [0] + [255] * 8)
    _png(tmp_path / "pred" / "a.png", [0, 1, 0, 0, 1, 0, 0, 1, 1])
    quarters = bench.distance_quartile_miou(tmp_path, tmp_path / "scribbles", tmp_path / "pred", ["a"], 2)
    # near: right → 1; second: class 0 IoU 1/2, class 1 IoU 0 → 0.25; third: both wrong → 0; far: right → 1
    assert quarters == pytest.approx([1.0, 0.25, 0.0, 1.0])


def test_markdown_table_quarters_and_seeds(bench):
    results = {
        "horse/BLPSeg": {"dataset": "horse", "run": "BLPSeg", "iters": 150, "miou": 0.8, "miou_far": 0.6,
                         "miou_quarters": [0.9, 0.8, 0.7, 0.6],
                         "seeds": [{"seed": 0, "miou": 0.79, "miou_far": 0.61},
                                   {"seed": 1, "miou": 0.81, "miou_far": 0.59}]},
        "horse/partial CE": {"dataset": "horse", "run": "partial CE", "iters": 150, "miou": 0.7, "miou_far": 0.5},
    }
    lines = bench.markdown_table(results).splitlines()
    assert lines[2] == ("| horse | BLPSeg | 150 | 2 | 80.00 (79.0 / 81.0) | 60.00 (61.0 / 59.0) | "
                        "90.0 / 80.0 / 70.0 / 60.0 |")
    assert lines[3] == "| horse | partial CE | 150 | 1 | 70.00 | 50.00 | – |"  # an old row without the breakdown
