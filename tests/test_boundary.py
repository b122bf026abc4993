"""Boundary head, BES/SBE boundary losses and boundary-label synthesis (methods.md §4.3–§4.5)."""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from toys import TinyBackbone
from weakseg.losses.boundary import BESBoundaryLoss, SBEBoundaryLoss
from weakseg.models.heads.boundary import BoundaryHead
from weakseg.modules.boundary_labels import (
    BG,
    CERTAIN_FG_BG,
    FG,
    FG_BG,
    FG_FG,
    IGNORE,
    make_boundary_labels,
    sobel_magnitude,
)


# ---------------------------------------------------------------- head


@pytest.mark.parametrize("size, out", [((64, 64), (16, 16)), ((50, 37), (13, 10))])
def test_boundary_head_shapes_and_gradients(size, out):
    torch.manual_seed(0)
    backbone = TinyBackbone()
    head = BoundaryHead(backbone.feature_info, branch_channels=8, gn_groups=2)
    assert [b[0].out_channels for b in head.branches] == [8, 8, 8, 8]
    assert all(b[0].bias is None and b[1].num_groups == 2 for b in head.branches)
    assert head.fuse.in_channels == 32 and head.fuse.out_channels == 1 and head.fuse.bias is not None
    assert head.scales == [1, 2, 4, 4]
    logits = head(backbone(torch.randn(2, 3, *size)))
    assert logits.shape == (2, 1, *out)
    logits.square().mean().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_boundary_head_short_coarse_map_is_padded():
    info = [SimpleNamespace(channels=4, reduction=4), SimpleNamespace(channels=4, reduction=8)]
    head = BoundaryHead(info, branch_channels=4, gn_groups=1)
    logits = head([torch.randn(1, 4, 13, 11), torch.randn(1, 4, 6, 5)])  # 6·2 = 12 < 13 rows
    assert logits.shape == (1, 1, 13, 11) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="expected 2 feature maps"):
        head([torch.randn(1, 4, 13, 11)])


# ---------------------------------------------------------------- losses


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_bes_loss_by_hand():
    # codes [[150, 0], [50, 200]] and [[255, 100], [0, 0]]; the logit 20 gives p ≈ 1, clamped to 1 − 1e-4
    p = [[0.9, None], [0.5, 0.3], [0.7, 0.6], [0.2, 0.1]]
    flat = [_logit(v) if v is not None else 20.0 for row in p for v in row]
    logits = torch.tensor(flat, dtype=torch.float64).view(2, 1, 2, 2).requires_grad_(True)
    codes = torch.tensor([[[150, 0], [50, 200]], [[255, 100], [0, 0]]])
    l_bg = (-math.log(1e-4) - math.log(0.8) - math.log(0.9)) / (3 + 1)
    l_fg = -math.log(0.5) / (1 + 1)
    l_bd = (-math.log(0.9) * math.sqrt(0.9) - math.log(0.6) * math.sqrt(0.6)) / (2 + 1)
    loss = BESBoundaryLoss()(logits, codes)
    assert loss.item() == pytest.approx(0.5 * (l_fg + l_bg) + l_bd, rel=1e-5)
    loss.backward()
    g = logits.grad.flatten()
    # boundary pixel with p̄ detached: d/dl[−log p·√p̄]/3 = −(1 − p)·√p/3
    assert g[0].item() == pytest.approx(-(1 - 0.9) * math.sqrt(0.9) / 3, rel=1e-4)
    assert g[3].item() == 0.0 and g[4].item() == 0.0  # codes 200 and 255 ignored
    assert g[1].item() == 0.0  # clamped: no gradient
    assert g[2].item() == pytest.approx(0.5 * 0.5 / 2, rel=1e-4)  # FG: ½·d/dl[−log(1 − p)]/2 = ½·p/2


def test_sbe_loss_by_hand_and_saliency_resize():
    ps = [0.4, 0.8, 0.3, 0.1]
    logits = torch.tensor([_logit(v) for v in ps]).view(1, 1, 2, 2)
    codes = torch.tensor([[[250, 150], [0, 50]]])
    sal = torch.tensor([[[0.0, 0.7], [0.0, 0.3]]])  # R = [[0, 1], [0, 1]]
    l_bg = -math.log(1 - 0.3) / 2
    l_fg = -math.log(1 - 0.1) / 2
    l_sal = -math.log(0.8) * math.sqrt(0.8) / 2  # code 150 on a salient pixel
    l_nonsal = -math.log(0.4) * math.sqrt(0.4) / 2  # code 250 on a non-salient pixel
    expected = l_fg + l_bg + l_sal + l_nonsal  # no ½ on the ground terms
    loss_fn = SBEBoundaryLoss()
    assert loss_fn(logits, codes, sal).item() == pytest.approx(expected, rel=1e-5)
    # full-size saliency: resized bilinearly (2×2 block means here) to the label size first
    big = sal[:, :, None, :, None].expand(1, 2, 2, 2, 2).reshape(1, 4, 4)
    assert loss_fn(logits, codes, big).item() == pytest.approx(expected, rel=1e-5)
    # BES on the same input ignores code 250 and halves the ground terms
    bes = 0.5 * (l_fg + l_bg) + (-math.log(0.8) * math.sqrt(0.8)) / 2
    assert BESBoundaryLoss()(logits, codes).item() == pytest.approx(bes, rel=1e-5)


def test_losses_reject_bad_shapes():
    with pytest.raises(ValueError, match="N×h×w"):
        BESBoundaryLoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="saliency"):
        SBEBoundaryLoss()(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.int64), torch.zeros(2, 2))


# ---------------------------------------------------------------- boundary labels


IMAGE = np.zeros((40, 40, 3), dtype=np.uint8)


def test_two_region_cam_gives_fg_bg_and_boundary_band():
    cams = torch.zeros(1, 40, 40)
    cams[0, 10:30, 10:30] = 1.0
    conf, codes = make_boundary_labels(cams, torch.tensor([3]), IMAGE)
    assert conf.dtype == np.uint8 and codes.dtype == np.uint8 and codes.shape == (40, 40)
    assert set(np.unique(conf)) == {0, 4}
    # row 20 crosses the square (columns 10..29): in a 13-wide window, columns 9 and 10 see 6/13 vs 7/13
    # (|P1 − P_bg| < 0.1, both > 0.3) → FG_BG; column 8 sees P_bg = 8/13 → BG; column 11 sees P1 = 8/13 → FG.
    row = [BG] * 9 + [FG_BG] * 2 + [FG] * 18 + [FG_BG] * 2 + [BG] * 9
    assert codes[20].tolist() == row
    assert codes[0, 0] == BG and codes[20, 20] == FG


def test_window_fractions_do_not_count_padding():
    cams = torch.zeros(1, 40, 40)
    cams[0, :, :20] = 1.0
    _, codes = make_boundary_labels(cams, torch.tensor([0]), IMAGE)
    # at the left border the window holds 7 real columns, all foreground: FG (counting padding: 7/13 < 0.6)
    assert codes[20, 0] == FG and codes[0, 0] == FG and codes[39, 39] == BG


def test_touching_classes_give_fg_fg():
    cams = torch.zeros(2, 40, 40)
    cams[0, :, :20] = 1.0
    cams[1, :, 20:] = 1.0
    conf, codes = make_boundary_labels(cams, torch.tensor([0, 5]), IMAGE)
    assert set(np.unique(conf)) == {1, 6}
    assert codes[20].tolist() == [FG] * 19 + [FG_FG] * 2 + [FG] * 19


def test_uncertain_cam_is_ignored_and_crf_is_used():
    cams = torch.full((1, 40, 40), 0.15)  # between the 0.07 and 0.30 thresholds
    conf, codes = make_boundary_labels(cams, torch.tensor([2]), IMAGE)
    assert (conf == 255).all() and (codes == IGNORE).all()

    calls = []

    def crf(image, labels, n_labels):
        calls.append((image.shape, labels.shape, n_labels, int(labels.max())))
        return np.zeros_like(labels)  # the "CRF" turns everything into background

    conf, codes = make_boundary_labels(cams, torch.tensor([2]), IMAGE, crf=crf)
    assert calls == [((40, 40, 3), (40, 40), 2, 0), ((40, 40, 3), (40, 40), 2, 1)]
    assert (conf == 0).all() and (codes == BG).all()


def test_saliency_cues():
    cams = torch.full((1, 40, 40), 0.15)  # no CAM evidence at all: everything is decided by saliency
    sal = np.zeros((40, 40), dtype=np.float32)
    sal[:, 20:] = 200.0  # any scale: normalised by the max
    _, codes = make_boundary_labels(cams, torch.tensor([2]), IMAGE, saliency=sal)
    expected = [BG] * 19 + [CERTAIN_FG_BG] * 2 + [IGNORE] * 19
    assert all(codes[r].tolist() == expected for r in (0, 20, 39))
    # soft background (3% of the max): the reference's exact-zero test gives no prior; a threshold does
    soft = np.where(sal > 0, 1.0, 0.03).astype(np.float32)
    _, codes = make_boundary_labels(cams, torch.tensor([2]), IMAGE, saliency=soft)
    assert codes[20, 5] == IGNORE and codes[20, 19] == CERTAIN_FG_BG
    _, codes = make_boundary_labels(cams, torch.tensor([2]), IMAGE, saliency=soft, sal_bg_thres=0.05)
    assert codes[20].tolist() == expected
    # a weak edge stays below the Sobel threshold (0.1 step → magnitude 0.4 < 0.5)
    weak = np.where(sal > 0, 1.0, 0.9).astype(np.float32)
    _, codes = make_boundary_labels(cams, torch.tensor([2]), IMAGE, saliency=weak)
    assert (codes == IGNORE).all()
    assert sobel_magnitude(torch.from_numpy(weak)).max().item() == pytest.approx(0.4, abs=1e-6)


def test_sobel_edge_is_centred_on_the_step():
    x = torch.zeros(9, 12)
    x[:, 7:] = 1.0  # step between columns 6 and 7
    mag = sobel_magnitude(x)
    assert mag.shape == (9, 12)
    assert (mag > 0.5).nonzero()[:, 1].unique().tolist() == [6, 7]
    assert torch.allclose(mag[:, 6], torch.full((9,), 4.0)) and torch.allclose(mag[:, 7], torch.full((9,), 4.0))
    # a horizontal step responds on the two rows around it (the transposed kernel)
    assert (sobel_magnitude(x.t().contiguous()) > 0.5).nonzero()[:, 0].unique().tolist() == [6, 7]
    # the reference's valid convolution + bilinear resize moves the edge off the step (§4.9.7)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    valid = F.conv2d(x[None, None], kx).abs()
    ref = F.interpolate(valid, size=(9, 12), mode="bilinear", align_corners=False)[0, 0]
    assert (ref > 0.5).nonzero()[:, 1].unique().tolist() != [6, 7]


def test_dense_crf_snaps_confident_regions_to_the_image():
    crf_mod = pytest.importorskip("weakseg.modules.crf")
    crf = functools.partial(crf_mod.crf_label, params=crf_mod.CRF_PRESETS["bes_label"])
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    image[10:30, 10:30] = 200
    cams = torch.zeros(1, 40, 40)
    cams[0, 8:32, 8:32] = 0.5  # the CAM overshoots the object by 2 px on every side
    conf, _ = make_boundary_labels(cams, torch.tensor([3]), image)
    assert (conf == 4).sum() == 24 * 24
    conf, _ = make_boundary_labels(cams, torch.tensor([3]), image, crf=crf)
    assert (conf == 4).sum() == 20 * 20 and (conf[10:30, 10:30] == 4).all()
