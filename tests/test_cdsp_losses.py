import math

import pytest
import torch

from weakseg.losses.distance_entropy import DistanceEntropyLoss
from weakseg.losses.lorm import LoRMLoss
from weakseg.losses.partial_ce import PartialCrossEntropy
from weakseg.modules.lorm import LoRM, foreground_positions

LN3 = math.log(3.0)


def _plogp(*p):
    return sum(v * math.log(v) for v in p)


def test_distance_entropy_hand_computed_with_count_of_non_zero_normaliser():
    # pixel 0: P = (½, ½); pixel 1: P = (¼, ¾); pixel 2: P = (½, ½)
    logits = torch.tensor([[[[0.0, 0.0, 0.0]], [[0.0, LN3, 0.0]]]], requires_grad=True)
    d = torch.tensor([[[255, 51, 0]]], dtype=torch.uint8)          # weights 1, 0.2, 0
    loss = DistanceEntropyLoss()(logits, d)
    e = [_plogp(0.5, 0.5), 0.2 * _plogp(0.25, 0.75), 0.0]
    expected = -sum(e) / 2                                          # two non-zero terms, not Σ weights = 1.2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert expected != pytest.approx(-sum(e) / 1.2)
    loss.backward()
    assert logits.grad is not None and logits.grad[0, :, 0, 2].abs().sum() == 0  # weight 0: no gradient


def test_distance_entropy_ignores_padding_and_returns_zero_without_terms():
    logits = torch.tensor([[[[0.0, 0.0, 0.0]], [[0.0, LN3, 0.0]]]], requires_grad=True)
    d = torch.tensor([[[255, 255, 255]]])
    valid = torch.tensor([[[1, 0, 0]]])
    assert DistanceEntropyLoss()(logits, d, valid).item() == pytest.approx(math.log(2.0), rel=1e-6)
    # float maps in [0, 1] with scale 1
    df = torch.tensor([[[1.0, 0.5, 0.0]]])
    expected = -(_plogp(0.5, 0.5) + 0.5 * _plogp(0.25, 0.75)) / 2
    assert DistanceEntropyLoss(scale=1.0)(logits, df).item() == pytest.approx(expected, rel=1e-6)
    zero = DistanceEntropyLoss()(logits, torch.zeros(1, 1, 3, dtype=torch.long))
    assert zero.item() == 0.0 and zero.requires_grad
    with pytest.raises(ValueError, match="distance"):
        DistanceEntropyLoss()(logits, d[:, :, :2])


def test_smoothed_and_plain_cross_entropy_hand_computed():
    logits = torch.tensor([[[[0.0, 5.0]], [[LN3, -1.0]]]])          # pixel 0: P = (¼, ¾); pixel 1 ignored
    target = torch.tensor([[[0, 255]]])
    # smoothed targets (1 − ε)·onehot + ε/C = (0.95, 0.05) for ε = 0.1, C = 2
    expected = -(0.95 * math.log(0.25) + 0.05 * math.log(0.75))
    assert PartialCrossEntropy(255, 0.1)(logits, target).item() == pytest.approx(expected, rel=1e-6)
    assert PartialCrossEntropy(255)(logits, target).item() == pytest.approx(-math.log(0.25), rel=1e-6)


def _identity_lorm(channels=2, gamma=1.0):
    lorm = LoRM(channels, gamma)
    with torch.no_grad():
        for conv in (lorm.query, lorm.key):
            conv.weight.copy_(torch.eye(channels)[:, :, None, None])
            conv.bias.zero_()
    return lorm


def test_lorm_reconstruction_and_loss_hand_computed():
    # two positions: x1 = (1, 0) (foreground), x2 = (0, 2) (background); Q = K = X
    x = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]], requires_grad=True)  # 1×2×1×2
    pseudo = torch.tensor([[[3, 0]]])
    before = pseudo.clone()
    lorm = _identity_lorm()
    recon = lorm(x, pseudo)
    a, b = math.e / (math.e + 1), 1 / (math.e + 1)                  # row softmax of cosines (1, 0)
    assert torch.allclose(recon, torch.tensor([[[[a, 0.0]], [[2 * b, 0.0]]]]), atol=1e-6)
    loss = LoRMLoss()(x, recon)
    # squared differences: (1 − a)², (2b)², 0 (x2's first channel, excluded from the count), 2²
    assert loss.item() == pytest.approx(((1 - a) ** 2 + (2 * b) ** 2 + 4.0) / 3, rel=1e-6)
    loss.backward()
    assert torch.equal(pseudo, before)                              # not modified in place (§3.10(6))
    assert lorm.gamma.grad is not None and lorm.gamma.grad != 0
    assert lorm.query.weight.grad.abs().sum() > 0 and lorm.key.weight.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0


def test_lorm_gamma_scales_and_ignore_counts_as_background():
    x = torch.randn(2, 3, 2, 2)
    pseudo = torch.full((2, 2, 2), 255)
    pseudo[0, 0, 0] = 1
    r1 = _identity_lorm(3, 1.0)(x, pseudo)
    r2 = _identity_lorm(3, 0.5)(x, pseudo)
    assert torch.allclose(r2, 0.5 * r1, atol=1e-6)
    assert (r1[1] == 0).all()                                       # only ignore: no foreground query
    assert (r1[0].flatten(1)[:, 1:] == 0).all() and r1[0, :, 0, 0].abs().sum() > 0


def test_foreground_positions_bilinear_align_corners():
    pseudo = torch.zeros(1, 4, 4, dtype=torch.long)
    pseudo[0, 0, 3] = 2            # a corner: sampled exactly by the align_corners grid
    pseudo[0, 1, 1] = 2            # between grid points of the 2×2 map: carries no weight there
    assert foreground_positions(pseudo, (2, 2)).tolist() == [[0.0, 1.0, 0.0, 0.0]]
    pseudo = torch.zeros(1, 5, 5, dtype=torch.long)
    pseudo[0, 2, 2] = 1            # 5 → 3 with align_corners: the centre is a grid point
    assert foreground_positions(pseudo, (3, 3)).view(3, 3)[1, 1] == 1
    assert foreground_positions(pseudo, (3, 3)).sum() == 1
    pseudo = torch.zeros(1, 4, 4, dtype=torch.long)
    pseudo[0, 1, 1] = 1            # 4 → 3: position (1, 1) samples (1.5, 1.5), a ¼ share of (1, 1) is enough
    assert foreground_positions(pseudo, (3, 3)).view(3, 3).tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_lorm_shapes_dtype_and_errors():
    lorm = LoRM(8)
    x = torch.randn(2, 8, 3, 4)
    pseudo = torch.randint(0, 3, (2, 24, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        recon = lorm(x.bfloat16(), pseudo)
    assert recon.shape == x.shape and recon.dtype == torch.float32
    with pytest.raises(ValueError, match="N×D×h×w"):
        lorm(x, pseudo[:1])
    with pytest.raises(ValueError, match="differ"):
        LoRMLoss()(x, x[:, :4])
    std = LoRM(64).query.weight.std().item()
    assert std == pytest.approx(math.sqrt(2 / 64), rel=0.1)        # N(0, 2/n), n = 1·1·out_channels
