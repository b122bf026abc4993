"""Scribble simulation: strokes stay in their class, prefer deep interiors, shrink/drop variants, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from weakseg.data.simulate import simulate_folder, simulate_scribbles
from weakseg.utils.io import read_label, save_label_png

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HORSE = DATA / "weizmann-horse"


def toy_label():
    """96×128: background 0, ellipse 1, rectangle 2, thin bar 3, small blob 4 (dot), tiny 5 (nothing), void ring."""
    lab = np.zeros((96, 128), np.uint8)
    yy, xx = np.mgrid[0:96, 0:128]
    lab[((yy - 30) / 20.0) ** 2 + ((xx - 35) / 28.0) ** 2 <= 1] = 1
    lab[55:90, 70:120] = 2
    lab[10:12, 75:125] = 3                     # 2-px wide bar: area 100, depth 1
    lab[70:76, 10:15] = 4                      # area 30
    lab[88:90, 5:7] = 5                        # area 4
    ring = (((yy - 30) / 22.0) ** 2 + ((xx - 35) / 30.0) ** 2 <= 1) & (lab != 1)
    lab[ring] = 255
    return lab


def test_strokes_stay_on_their_class_and_cover_every_large_region():
    lab = toy_label()
    out = simulate_scribbles(lab, seed=0, min_region_area=60, min_dot_area=9)
    drawn = out != 255
    assert (out[drawn] == lab[drawn]).all()                  # never crosses into another class or void
    assert set(np.unique(out[drawn])) == {0, 1, 2, 3, 4}     # dot for 4, nothing for the 4-pixel region 5
    assert (out[lab == 255] == 255).all()
    assert np.count_nonzero(out == 4) <= 9                   # a dot, not a stroke
    assert np.count_nonzero(out == 1) > 40 and np.count_nonzero(out == 2) > 40
    no_bg = simulate_scribbles(lab, seed=0, background=False)
    assert 0 not in no_bg and np.count_nonzero(no_bg == 1) > 0


def test_strokes_prefer_deep_interiors():
    lab = toy_label()
    out = simulate_scribbles(lab, seed=1)
    for cls in (0, 1, 2):
        region = np.pad(lab == cls, 1)
        depth = ndimage.distance_transform_edt(region)[1:-1, 1:-1]
        stroke = out == cls
        assert depth[stroke].mean() > 1.5 * depth[lab == cls].mean(), cls


def test_reach_adds_rare_excursions_into_thin_parts_and_keeps_the_main_strokes():
    """A body (disc) with a long thin leg: core strokes never reach the leg's tip, an excursion does."""
    lab = np.zeros((100, 140), np.uint8)
    yy, xx = np.mgrid[0:100, 0:140]
    lab[((yy - 35) / 25.0) ** 2 + ((xx - 45) / 30.0) ** 2 <= 1] = 1
    lab[40:46, 70:135] = 1                                   # the leg: 6 px wide, tip at column 134
    tip = np.zeros_like(lab, dtype=bool)
    tip[40:46, 90:135] = True                                # the leg, well outside the body
    base = simulate_scribbles(lab, seed=4)
    assert not (base[tip] == 1).any()                        # label preference: the tip is never scribbled
    assert np.array_equal(simulate_scribbles(lab, seed=4, reach=0.0), base)
    reached = simulate_scribbles(lab, seed=4, reach=1.0)
    assert ((base != 255) <= (reached != 255)).all()         # same main strokes, excursions added
    assert (reached[base != 255] == base[base != 255]).all()
    assert (reached[tip] == 1).any()                         # the excursion follows the leg
    drawn = reached != 255
    assert (reached[drawn] == lab[drawn]).all()              # and stays in its class
    # reach is a probability per stroke: over many seeds about that fraction of horse strokes get an excursion
    hits = [(simulate_scribbles(lab, seed=s, reach=0.3, background=False)[tip] == 1).any() for s in range(40)]
    assert 4 <= sum(hits) <= 20
    with pytest.raises(ValueError, match="reach"):
        simulate_scribbles(lab, reach=1.5)


def test_shrink_drop_and_more_strokes():
    lab = toy_label()
    full = simulate_scribbles(lab, seed=2)
    shrunk = simulate_scribbles(lab, seed=2, shrink=0.5)
    n_full, n_shrunk = np.count_nonzero(full != 255), np.count_nonzero(shrunk != 255)
    assert n_shrunk < 0.75 * n_full
    assert (full[shrunk != 255] == shrunk[shrunk != 255]).all()          # a shrunk stroke is part of the full one
    assert (simulate_scribbles(lab, seed=2, drop=1.0) == 255).all()
    half = simulate_scribbles(lab, seed=2, drop=0.5)
    assert (full[half != 255] == half[half != 255]).all()
    many = simulate_scribbles(lab, seed=2, strokes_per_region=3)
    assert np.count_nonzero(many != 255) > n_full
    thin = simulate_scribbles(lab, seed=2, width=1)
    assert np.count_nonzero(thin != 255) < 0.6 * n_full


def test_same_seed_same_output():
    lab = toy_label()
    a = simulate_scribbles(lab, seed=3)
    assert np.array_equal(a, simulate_scribbles(lab, rng=np.random.default_rng(3)))
    assert not np.array_equal(a, simulate_scribbles(lab, seed=4))
    with pytest.raises(ValueError, match="shrink"):
        simulate_scribbles(lab, shrink=1.0)


def test_horse_strokes_avoid_legs_and_tails():
    if not HORSE.is_dir():
        pytest.skip("shared data not available")
    ids = (HORSE / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[:6]
    yy, xx = np.mgrid[-5:6, -5:6]
    disk = yy**2 + xx**2 <= 25
    on_thin = on_horse = thin_area = horse_area = 0
    for sid in ids:
        lab = read_label(HORSE / "SegmentationClass" / f"{sid}.png")
        horse = lab == 1
        thin = horse & ~ndimage.binary_opening(horse, structure=disk)     # legs, tail, ears: < 11 px wide
        out = simulate_scribbles(lab, seed=0)
        stroke = out == 1
        assert stroke.any() and (out == 0).any()
        on_thin += np.count_nonzero(stroke & thin)
        on_horse += np.count_nonzero(stroke)
        thin_area += np.count_nonzero(thin)
        horse_area += np.count_nonzero(horse)
    assert thin_area / horse_area > 0.03                     # thin parts are there ...
    assert on_thin / on_horse < 0.01                         # ... but strokes (almost) never touch them


def test_simulate_folder_is_order_independent(tmp_path):
    lab = toy_label()
    for sid in ("a", "b"):
        save_label_png(tmp_path / "SegmentationClass" / f"{sid}.png", np.roll(lab, 7 if sid == "b" else 0, axis=1))
    (tmp_path / "ab.txt").write_text("a\nb\n")
    (tmp_path / "ba.txt").write_text("b\na\nmissing\n")
    n_ok, n_skip, _ = simulate_folder(tmp_path, "ab.txt", "SegmentationClass", "s1", seed=9)
    assert (n_ok, n_skip) == (2, 0)
    n_ok, n_skip, problems = simulate_folder(tmp_path, "ba.txt", "SegmentationClass", tmp_path / "s2", seed=9)
    assert (n_ok, n_skip) == (2, 1) and "missing.png" in problems[0]
    for sid in ("a", "b"):
        assert np.array_equal(read_label(tmp_path / "s1" / f"{sid}.png"), read_label(tmp_path / "s2" / f"{sid}.png"))
    assert not np.array_equal(read_label(tmp_path / "s1" / "a.png"), read_label(tmp_path / "s1" / "b.png"))
