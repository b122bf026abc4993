import math

import numpy as np
import pytest
import torch

from weakseg.engine.schedule import lr_factor
from weakseg.utils.metrics import ConfusionMatrix


def test_confusion_matrix_hand_case():
    # gt:   [0 0 1 1 255]   pred: [0 1 1 1 0]
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 1, 1, 1, 0]), np.array([0, 0, 1, 1, 255]))
    m = cm.compute()
    # class 0: tp 1, gt 2, pred 1 → 1/2 ; class 1: tp 2, gt 2, pred 3 → 2/3 ; class 2 absent → 0 (BLPSeg policy)
    assert m["iou"][0] == pytest.approx(0.5)
    assert m["iou"][1] == pytest.approx(2 / 3)
    assert math.isnan(m["iou"][2])
    assert m["miou"] == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    assert cm.compute(absent="nan")["miou"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert m["acc"] == pytest.approx(3 / 4)


def test_confusion_matrix_abstain_and_errors():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 255, 1, 255]), torch.tensor([0, 0, 1, 1]))
    m = cm.compute()
    assert m["coverage"] == pytest.approx(0.5)
    assert m["precision"] == pytest.approx(1.0)
    assert m["iou"] == pytest.approx([0.5, 0.5])  # abstained pixels count as misses
    with pytest.raises(ValueError, match="outside"):
        cm.update(np.array([0]), np.array([5]))
    with pytest.raises(ValueError, match="pixels"):
        cm.update(np.array([0, 1]), np.array([0]))


def test_merge_equals_joint_update():
    rng = np.random.default_rng(0)
    p, t = rng.integers(0, 4, 100), rng.integers(0, 4, 100)
    a, b, c = ConfusionMatrix(4), ConfusionMatrix(4), ConfusionMatrix(4)
    a.update(p[:50], t[:50])
    b.update(p[50:], t[50:])
    c.update(p, t)
    a.merge(b)
    assert torch.equal(a.mat, c.mat)


def test_poly_and_cosine():
    assert lr_factor(0, name="poly", iters=100) == 1.0
    assert lr_factor(50, name="poly", iters=100, power=0.9) == pytest.approx((1 - 50 / 101) ** 0.9)
    assert lr_factor(100, name="poly", iters=100) > 0
    assert lr_factor(0, name="cosine", iters=100) == pytest.approx(1.0)
    assert lr_factor(100, name="cosine", iters=100, min_lr_ratio=0.1) == pytest.approx(0.1)
    # warm-up starts at warmup_ratio and is linear
    assert lr_factor(0, name="cosine", iters=100, warmup_iters=10, warmup_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(5, name="cosine", iters=100, warmup_iters=10, warmup_ratio=0.0) == pytest.approx(0.5)
    assert lr_factor(10, name="cosine", iters=100, warmup_iters=10) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        lr_factor(0, name="step", iters=10)
