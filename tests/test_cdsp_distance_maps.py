import math

import numpy as np
import pytest

from weakseg.modules.distance_maps import (
    cdsp_distance_maps,
    foreground_contour,
    pseudo_boundary_distance_map,
    scribble_distance_map,
)


def test_scribble_map_hand_computed_on_a_single_seed():
    s = np.full((3, 4), 255, np.uint8)
    s[0, 0] = 7          # the only foreground seed
    s[2, 3] = 0          # a background stroke: not a seed
    d = scribble_distance_map(s, lam=4.0)  # √λ = 2 per pixel
    # distances to (0, 0): row 0: 0 1 2 3; row 1: 1 √2 √5 √10; row 2: 2 √5 √8 √13
    dist = np.array([[0, 1, 2, 3], [1, math.sqrt(2), math.sqrt(5), math.sqrt(10)],
                     [2, math.sqrt(5), math.sqrt(8), math.sqrt(13)]])
    expected = 255 - np.floor(2 * dist)
    assert d.dtype == np.uint8 and np.array_equal(d, expected.astype(np.uint8))
    assert d[0, 0] == 255 and d[1, 1] == 253 and d[2, 3] == 248


def test_scribble_map_truncates_at_zero_and_is_all_zero_without_foreground_stroke():
    s = np.full((1, 200), 255, np.uint8)
    s[0, 0] = 1
    d = scribble_distance_map(s)  # λ_s = e: √e·x ≥ 255 from x = 155 (√e·154 = 253.9)
    assert d[0, 154] == 255 - math.floor(math.sqrt(math.e) * 154) and d[0, 155] == 0 and (d[0, 155:] == 0).all()
    only_bg = np.full((5, 5), 255, np.uint8)
    only_bg[2, :] = 0
    assert (scribble_distance_map(only_bg) == 0).all()
    assert (scribble_distance_map(np.full((5, 5), 255, np.uint8)) == 0).all()


def test_contour_is_4_neighbour_border_with_outside_as_background():
    m = np.zeros((6, 7), bool)
    m[1:5, 1:6] = True       # 4×5 block: its outer ring is the contour, the 2×3 inside is not
    c = foreground_contour(m)
    ring = m.copy()
    ring[2:4, 2:5] = False
    assert np.array_equal(c, ring)
    # foreground touching the image edge: the edge pixels are contour pixels (OpenCV treats outside as 0)
    full = np.ones((4, 4), bool)
    assert np.array_equal(foreground_contour(full), ~np.pad(np.ones((2, 2), bool), 1, constant_values=False))
    # a hole: its 4-neighbours are contour pixels, its diagonal neighbours are not
    m = np.ones((5, 5), bool)
    m[2, 2] = False
    c = foreground_contour(m)
    assert c[1, 2] and c[3, 2] and c[2, 1] and c[2, 3] and not c[1, 1] and not c[3, 3]


def test_pseudo_map_hand_computed_values_and_spec_pattern():
    p = np.zeros((11, 11), np.uint8)
    p[3:8, 3:8] = 15
    d = pseudo_boundary_distance_map(p, lam=4.0)
    # contour = ring of the 5×5 square; the centre (5, 5) is 2 px from it; corner (0, 0) is √18 from (3, 3)
    assert d[3, 3] == 0 and d[4, 4] == 2 and d[5, 5] == 4
    assert d[0, 0] == math.floor(2 * math.sqrt(18)) and d[5, 0] == 6
    # default λ_c = e⁶: the §6b.5 value pattern ⌊e³·d⌋ for d = 0, 1, √2, 2, √5, √8, 3, √10, √13
    big = np.zeros((40, 40), np.uint8)
    big[10:30, 10:30] = 1
    values = sorted(set(pseudo_boundary_distance_map(big).ravel().tolist()))
    assert values[:9] == [0, 20, 28, 40, 44, 56, 60, 63, 72] and values[-1] == 255
    # 255 (ignore) binarises as background; no foreground → all 255
    only_ignore = np.full((6, 6), 255, np.uint8)
    only_ignore[:3] = 0
    assert (pseudo_boundary_distance_map(only_ignore) == 255).all()


def test_both_maps_and_argument_checks():
    s = np.full((8, 8), 255, np.uint8)
    s[4, 4] = 2
    p = np.zeros((8, 8), np.uint8)
    p[2:6, 2:6] = 2
    ds, dc = cdsp_distance_maps(s, p)
    assert ds[4, 4] == 255 and dc[2, 2] == 0 and ds.dtype == dc.dtype == np.uint8
    with pytest.raises(ValueError, match="differ in size"):
        cdsp_distance_maps(s, p[:4])
    with pytest.raises(ValueError, match="lambda_s"):
        scribble_distance_map(s, lam=0.0)
    with pytest.raises(ValueError, match="H×W"):
        pseudo_boundary_distance_map(np.zeros((2, 2, 3), np.uint8))
