"""BLPSeg supervision (spec §2.2, §2.5, check §6b.4): annotation CE, BLP loss, scribble targets, pseudo-labels.

Hand-made cases use logits = log(probabilities), so that softmax returns those probabilities exactly.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from weakseg.losses.blp import AnnotationCELoss, BLPLoss
from weakseg.modules.pseudo_label import class_vector_from_scribble, online_pseudo_label, scribble_targets


def _logits(probs_hw_k):
    """H×W×K nested list of probabilities → 1×K×H×W float64 logits."""
    return torch.tensor(probs_hw_k, dtype=torch.float64).log().permute(2, 0, 1).unsqueeze(0)


# ----------------------------------------------------------------------------------------------------------------
# AnnotationCELoss — §2.5(a)


def test_annotation_ce_hand_computed():
    # C = 2 real classes + "not annotated" (index 2); 2×2 image
    logits = _logits([[[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]],
                      [[0.3, 0.3, 0.4], [0.2, 0.6, 0.2]]])
    target = torch.tensor([[[0, 2], [255, 1]]])
    # (1·(−ln 0.5) + 0.02·(−ln 0.7) + 1·(−ln 0.6)) / (1 + 0.02 + 1) = 0.5995575758
    loss = AnnotationCELoss(num_classes=2)(logits, target)
    assert loss.item() == pytest.approx((-math.log(0.5) - 0.02 * math.log(0.7) - math.log(0.6)) / 2.02, abs=1e-12)
    assert loss.item() == pytest.approx(0.5995575758, abs=1e-9)
    ref = F.cross_entropy(logits, target, weight=torch.tensor([1.0, 1.0, 0.02], dtype=torch.float64),
                          ignore_index=255)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-12)


def test_annotation_ce_all_ignored_is_zero_and_checks_channels():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = AnnotationCELoss(num_classes=2)(logits, torch.full((1, 2, 2), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError):
        AnnotationCELoss(num_classes=3)(logits, torch.zeros(1, 2, 2, dtype=torch.long))


# ----------------------------------------------------------------------------------------------------------------
# BLPLoss — §2.5(b)


def _blp_case():
    """1×2×2×2 seg (C = 2), 1×3×2×2 annotation logits, targets [[0, 1], [C, 255]]."""
    seg = _logits([[[0.8, 0.2], [0.4, 0.6]],
                   [[0.5, 0.5], [0.9, 0.1]]])
    ann = _logits([[[0.5, 0.3, 0.2], [0.1, 0.5, 0.4]],
                   [[0.2, 0.2, 0.6], [0.9, 0.05, 0.05]]])
    target = torch.tensor([[[0, 1], [2, 255]]])
    return seg, ann, target


def test_blp_hand_computed_2x2():
    seg, ann, target = _blp_case()
    # pixel (0,0): y = 0, p = 0.8, q = 0.5 → w = (1 − 0.4)² = 0.36, −ln p = 0.2231435513
    # pixel (0,1): y = 1, p = 0.6, q = 0.5 → w = (1 − 0.3)² = 0.49, −ln p = 0.5108256238
    # pixels (1,0) (not annotated) and (1,1) (padding): unsupervised
    # ℓ = (0.36·0.2231435513 + 0.49·0.5108256238) / (0.85 + 1e-7) = 0.3889837591
    seg.requires_grad_()
    loss = BLPLoss(gamma=2.0)(seg, ann, target)
    assert loss.item() == pytest.approx(0.3889837591, abs=1e-9)
    loss.backward()
    # weights are constants: dℓ/dlogits at (0,0) = 0.36/0.85·(p − onehot(0)) = 0.36/0.85·(−0.2, 0.2)
    g = 0.36 / (0.85 + 1e-7) * 0.2
    assert seg.grad[0, :, 0, 0].tolist() == pytest.approx([-g, g], abs=1e-12)
    g = 0.49 / (0.85 + 1e-7) * 0.4
    assert seg.grad[0, :, 0, 1].tolist() == pytest.approx([g, -g], abs=1e-12)
    assert (seg.grad[0, :, 1] == 0).all()


def test_blp_gamma_zero_is_plain_per_image_ce():
    seg, ann, target = _blp_case()
    loss = BLPLoss(gamma=0.0)(seg, ann, target)
    assert loss.item() == pytest.approx((-math.log(0.8) - math.log(0.6)) / (2 + 1e-7), abs=1e-12)


def test_blp_q_zero_reduces_to_per_image_mean_ce():
    g = torch.Generator().manual_seed(0)
    seg = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64)
    ann = torch.zeros(3, 5, 5, 6, dtype=torch.float64)
    ann[:, 4] = 200.0  # "not annotated" takes all the mass: q_k = e^-200 ≈ 0 for k < C
    target = torch.randint(0, 6, (3, 5, 6), generator=g)  # 4 = not annotated, 5 = also unsupervised (≥ C)
    target[1, 0, 0] = 255
    loss = BLPLoss()(seg, ann, target)
    per_image = []
    for i in range(3):
        t = target[i : i + 1].clone()
        t[t >= 4] = 255
        per_image.append(F.cross_entropy(seg[i : i + 1], t, ignore_index=255))
    assert loss.item() == pytest.approx(torch.stack(per_image).mean().item(), abs=1e-6)


def test_blp_q_equals_p_equals_one_gives_zero_weight():
    # pixel (0,0): p_0 = q_0 = 1 − e^-60 → weight ≈ 1e-52; pixel (0,1): ordinary
    seg = torch.tensor([[[[60.0, math.log(0.6)]], [[0.0, math.log(0.4)]]]], dtype=torch.float64, requires_grad=True)
    ann = torch.tensor([[[[60.0, math.log(0.3)]], [[0.0, math.log(0.3)]], [[0.0, math.log(0.4)]]]],
                       dtype=torch.float64)
    target = torch.tensor([[[0, 0]]])
    loss = BLPLoss()(seg, ann, target)
    assert loss.item() == pytest.approx(-math.log(0.6), rel=1e-6)  # only pixel (0,1) counts
    loss.backward()
    assert seg.grad[0, :, 0, 0].abs().max() < 1e-40


def test_blp_empty_image_contributes_zero_to_the_mean():
    seg, ann, target = _blp_case()
    seg2, ann2 = torch.cat([seg, seg]).requires_grad_(), torch.cat([ann, ann])
    target2 = torch.cat([target, torch.tensor([[[2, 255], [2, 2]]])])  # second image: nothing supervised
    loss = BLPLoss()(seg2, ann2, target2)
    assert loss.item() == pytest.approx(0.3889837591 / 2, abs=1e-9)
    loss.backward()
    assert (seg2.grad[1] == 0).all() and torch.isfinite(seg2.grad).all()


def test_blp_no_gradient_into_annotation_logits_and_inputs_untouched():
    g = torch.Generator().manual_seed(1)
    seg = torch.randn(2, 3, 4, 4, generator=g, requires_grad=True)
    ann = torch.randn(2, 4, 4, 4, generator=g, requires_grad=True)
    target = torch.randint(0, 4, (2, 4, 4), generator=g)
    copies = seg.detach().clone(), ann.detach().clone(), target.clone()
    BLPLoss()(seg, ann, target).backward()
    assert ann.grad is None
    assert seg.grad is not None and seg.grad.abs().sum() > 0
    assert torch.equal(seg.detach(), copies[0]) and torch.equal(ann.detach(), copies[1])
    assert torch.equal(target, copies[2])


def test_blp_shape_checks():
    with pytest.raises(ValueError):
        BLPLoss()(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError):
        BLPLoss()(torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 3, dtype=torch.long))


# ----------------------------------------------------------------------------------------------------------------
# Scribble encoding, class vector — §2.2


def test_scribble_targets_encoding():
    png = torch.tensor([[0, 255, 2], [255, 255, 1]], dtype=torch.uint8)
    valid = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.uint8)
    out = scribble_targets(png, num_classes=3, valid=valid)
    assert out.dtype == torch.int64
    assert out.tolist() == [[0, 3, 2], [3, 255, 255]]
    assert scribble_targets(png, num_classes=3).tolist() == [[0, 3, 2], [3, 3, 1]]
    with pytest.raises(ValueError):
        scribble_targets(torch.tensor([[3, 255]], dtype=torch.uint8), num_classes=3)


def test_class_vector_from_scribble():
    s = torch.tensor([[2, 255], [255, 2]], dtype=torch.uint8)  # no background stroke: background still on
    assert class_vector_from_scribble(s, 4).tolist() == [1.0, 0.0, 1.0, 0.0]
    batch = torch.tensor([[[3, 4], [255, 255]], [[1, 1], [0, 4]]])  # 4 = "not annotated" code, not a class
    assert class_vector_from_scribble(batch, 4).tolist() == [[1, 0, 0, 1], [1, 1, 0, 0]]


# ----------------------------------------------------------------------------------------------------------------
# Online pseudo-label — §2.5(d)


def test_online_pseudo_label_hand_made():
    # C = 3, class 1 absent from the image
    seg = _logits([[[0.95, 0.03, 0.02], [0.60, 0.35, 0.05]],
                   [[0.02, 0.03, 0.95], [0.01, 0.01, 0.98]]])
    c = torch.tensor([[1.0, 0.0, 1.0]])
    scribble = torch.tensor([[[3, 3], [0, 255]]])
    out = online_pseudo_label(seg, c, scribble)
    # (0,0): P = (.95, 0, .02) → 0. (0,1): P = (.60, 0, .05), max .60 < .9 → 255 (renormalising would give .92 → 0)
    # (1,0): predicted 2 with .95, scribble 0 overrides → 0. (1,1): padding → 255 despite .98
    assert out.dtype == torch.int64
    assert out.tolist() == [[[0, 255], [0, 255]]]


def test_online_pseudo_label_class_mask_and_threshold():
    seg = _logits([[[0.04, 0.92, 0.04], [0.05, 0.03, 0.92]],
                   [[0.88, 0.10, 0.02], [0.30, 0.40, 0.30]]])
    c = torch.tensor([[1.0, 0.0, 1.0]])
    scribble = torch.tensor([[[3, 3], [3, 1]]])
    # (0,0): class 1 masked out → P max .04 → 255. (0,1): 2. (1,0): .88 < .9 → 255. (1,1): scribble 1 wins
    assert online_pseudo_label(seg, c, scribble).tolist() == [[[255, 2], [255, 1]]]
    assert online_pseudo_label(seg, c, scribble, threshold=0.85).tolist() == [[[255, 2], [0, 1]]]
    seg.requires_grad_()
    assert not online_pseudo_label(seg, c, scribble).requires_grad
