"""Boundary-guided random walk (methods.md §4.6, §6b.7): offsets, paths, affinities, sparse vs dense."""

from __future__ import annotations

import pytest
import torch

from weakseg.modules.random_walk import (
    boundary_affinity,
    offset_path,
    propagate_to_label,
    random_walk,
    random_walk_dense,
    search_offsets,
    transition_matrix_dense,
)


def test_search_offsets_half_disk():
    offsets = search_offsets(5)
    assert len(offsets) == 34
    assert offsets[:4] == [(0, 1), (0, 2), (0, 3), (0, 4)]
    as_set = set(offsets)
    assert len(as_set) == 34 and (0, 0) not in as_set
    for dy, dx in offsets:
        assert dy * dy + dx * dx < 25 and (dy > 0 or dx > 0)
        assert (-dy, -dx) not in as_set  # a half neighbourhood: each pair appears once


def test_offset_paths_by_hand():
    assert offset_path((0, 3)) == [(0, 0), (0, 1), (0, 2), (0, 3)]
    assert sorted(offset_path((1, 1))) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # (3, 3): cells with |px − py| ≤ 1 (distance |px − py|/√2 < 1); the corners of the box are excluded
    expected = sorted((py, px) for py in range(4) for px in range(4) if abs(px - py) <= 1)
    assert sorted(offset_path((3, 3))) == expected and len(expected) == 10
    # (1, −2): distance² = (px + 2·py)²/5 < 1
    assert sorted(offset_path((1, -2))) == [(0, -2), (0, -1), (0, 0), (1, -2), (1, -1), (1, 0)]


def test_affinity_wall():
    h, w = 6, 9
    boundary = torch.zeros(h, w, dtype=torch.float64)
    boundary[:, 5] = 0.8
    offsets, aff = boundary_affinity(boundary)
    assert aff.shape == (34, h, w)
    o = offsets.index((0, 1))
    assert aff[o, 2, 3].item() == 1.0  # path (2,3)→(2,4): no boundary
    assert aff[o, 2, 4].item() == pytest.approx(0.2)  # lands on the wall
    assert aff[o, 2, 5].item() == pytest.approx(0.2)  # starts on the wall
    assert aff[o, 2, w - 1].item() == 0.0  # leaves the image
    o = offsets.index((1, -1))
    assert aff[o, 2, 6].item() == pytest.approx(0.2)  # (2,6)→(3,5) crosses the wall
    assert aff[o, 2, 8].item() == 1.0
    assert aff[o, h - 1, 2].item() == 0.0 and aff[o, 2, 0].item() == 0.0  # bottom / left edge
    o = offsets.index((0, 4))
    assert aff[o, 0, 1].item() == pytest.approx(0.2) and aff[o, 0, 0].item() == 1.0  # (0,0)→(0,4) stops short


@pytest.mark.parametrize("h, w", [(12, 10), (3, 2)])
def test_sparse_equals_dense_matrix_power(h, w):
    g = torch.Generator().manual_seed(0)
    # low boundary values so that the walk mixes over many pixels rather than staying put, plus one ridge
    boundary = 0.6 * torch.rand(h, w, generator=g, dtype=torch.float64) ** 2
    boundary[:, w // 2] = 0.9
    cams = torch.rand(3, h, w, generator=g, dtype=torch.float64)
    sparse = random_walk(cams, boundary, beta=5, exp_times=8)
    dense = random_walk_dense(cams, boundary, beta=5, exp_times=8)
    assert sparse.shape == (3, h, w)
    assert (sparse - dense).abs().max().item() < 1e-4
    # the walk really moved mass: the result is far from the starting point
    assert (sparse - cams * (1 - boundary)).abs().max().item() > 0.05


def test_transition_columns_normalised_and_propagation_is_vT_T():
    g = torch.Generator().manual_seed(1)
    boundary = torch.rand(7, 8, generator=g, dtype=torch.float64) * 0.7
    trans = transition_matrix_dense(boundary, beta=5)
    assert torch.allclose(trans.sum(0), torch.ones(56, dtype=torch.float64))
    assert (trans.sum(1) - 1).abs().max().item() > 1e-3  # rows are not normalised
    cams = torch.rand(2, 7, 8, generator=g, dtype=torch.float64)
    v = (cams * (1 - boundary)).reshape(2, -1)
    one_step = random_walk(cams, boundary, beta=5, exp_times=0).reshape(2, -1)
    assert torch.allclose(one_step, v @ trans, atol=1e-12)
    assert (one_step - (trans @ v.t()).t()).abs().max().item() > 1e-3


def test_wall_blocks_propagation():
    boundary = torch.zeros(8, 10)
    boundary[:, 4] = 1.0
    cams = torch.zeros(1, 8, 10)
    cams[0, :, :4] = torch.rand(8, 4) + 0.1
    out = random_walk(cams, boundary)
    assert out[0, :, 4:].abs().max().item() == 0.0
    assert out[0, :, :4].min().item() > 0.0


@pytest.mark.parametrize("normalize, right_label", [("global", 0), ("per_class", 12)])
def test_propagate_to_label_normalisation(normalize, right_label):
    # Class 4 (label 5) left of a wall with CAM 1.0, class 11 (label 12) right of it with CAM 0.2. Inside a
    # closed region a constant CAM is a fixed point of the walk, so the global max (1.0) leaves the weak class
    # at 0.2 < 0.21 (background, §4.9.5) while per-class normalisation lifts it to 1.
    h, w = 6, 8
    boundary = torch.zeros(h, w)
    boundary[:, 4] = 1.0
    cams = torch.zeros(2, h, w)
    cams[0, :, :4] = 1.0
    cams[1, :, 5:] = 0.2
    keys = torch.tensor([4, 11])
    label = propagate_to_label(cams, boundary, keys, (22, 30), bg_threshold=0.21, normalize=normalize)
    assert label.shape == (22, 30) and label.dtype == torch.int64
    assert (label[:, :12] == 5).all()
    assert (label[:, 22:] == right_label).all()


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same size"):
        random_walk(torch.zeros(2, 4, 5), torch.zeros(4, 4))
