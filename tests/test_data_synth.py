"""Synthetic benchmark: layout, determinism, object counts, thin parts, colour not predictive, speed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from weakseg.data.synth import SYNTH_CLASSES, generate_synth
from weakseg.utils.io import read_label, read_rgb

N = 60


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    info = generate_synth(root, num_images=N, size=128, seed=0)
    ids = [f"synth_{i:05d}" for i in range(N)]
    images = [read_rgb(root / "JPEGImages" / f"{s}.png") for s in ids]
    labels = [read_label(root / "SegmentationClass" / f"{s}.png") for s in ids]
    scribbles = [read_label(root / "Scribbles" / f"{s}.png") for s in ids]
    return root, info, ids, images, labels, scribbles


def test_layout_lists_classes(synth):
    root, info, ids, images, labels, _ = synth
    assert (root / "classes.txt").read_text().split() == list(SYNTH_CLASSES) and len(SYNTH_CLASSES) - 1 >= 6
    train = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    val = (root / "ImageSets/Segmentation/val.txt").read_text().split()
    assert sorted(train + val) == ids and not set(train) & set(val) and len(val) == 12
    assert info == {"num_train": 48, "num_val": 12, "out_dir": str(root)}
    assert "stickman" in (root / "README.txt").read_text()
    assert images[0].shape == (128, 128, 3) and labels[0].dtype == np.uint8


def test_every_image_has_one_to_three_objects_and_matching_tags(synth):
    root, _, ids, _, labels, scribbles = synth
    tags = json.loads((root / "tags.json").read_text())
    counts = np.zeros(len(SYNTH_CLASSES), int)
    for sid, lab, scr in zip(ids, labels, scribbles):
        present = [int(c) for c in np.unique(lab)]
        assert tags[sid] == present and present[0] == 0
        assert 1 <= len(present) - 1 <= 3
        counts[present] += 1
        drawn = scr != 255
        assert (scr[drawn] == lab[drawn]).all() and 0 in scr and len(np.unique(scr[drawn])) >= 2
    assert (counts[1:] >= 3).all()             # every class occurs


def test_thin_parts_exist_in_their_shape_families(synth):
    _, _, _, _, labels, _ = synth
    yy, xx = np.mgrid[-2:3, -2:3]
    disk = yy**2 + xx**2 <= 4
    removed = np.zeros(len(SYNTH_CLASSES))
    total = np.zeros(len(SYNTH_CLASSES))
    for lab in labels:
        for c in np.unique(lab)[1:]:
            m = lab == c
            removed[c] += np.count_nonzero(m & ~ndimage.binary_opening(m, structure=disk))
            total[c] += np.count_nonzero(m)
    frac = dict(zip(SYNTH_CLASSES, removed / np.maximum(total, 1)))
    # an opening with a radius-2 disc deletes parts thinner than 5 px: limbs, bars and spikes
    assert frac["stickman"] > 0.2 and frac["cross"] > 0.05 and frac["star"] > 0.05
    assert frac["disc"] < 0.02


def test_pixel_colour_does_not_identify_the_class(synth):
    _, _, _, images, labels, _ = synth
    half = N // 2
    means = np.stack([np.concatenate([images[i][labels[i] == c] for i in range(half)]).astype(float).mean(0)
                      for c in range(len(SYNTH_CLASSES))])
    correct = total = 0
    for img, lab in zip(images[half:], labels[half:]):
        fg = lab > 0
        x = img[fg].astype(float)
        pred = np.argmin(((x[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
        correct += np.count_nonzero(pred == lab[fg])
        total += fg.sum()
    assert correct / total < 0.5


def test_same_seed_gives_identical_files(tmp_path, synth):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_synth(a, num_images=6, size=64, seed=5)
    generate_synth(b, num_images=6, size=64, seed=5)
    generate_synth(c, num_images=6, size=64, seed=6)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 6 * 3 + 5
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "JPEGImages/synth_00000.png").read_bytes() != (c / "JPEGImages/synth_00000.png").read_bytes()
    # image i depends only on (seed, i), not on how many images are generated
    root = synth[0]
    d = tmp_path / "d"
    generate_synth(d, num_images=3, size=128, seed=0)
    assert (d / "JPEGImages/synth_00002.png").read_bytes() == (root / "JPEGImages/synth_00002.png").read_bytes()
