import math

import numpy as np
import pytest

from weakseg.data import keys as K
from weakseg.data.transforms import RandomGaussianBlur, RandomRotate, build_cdsp_train_transforms


class FixedRng:
    """Stands in for numpy's Generator: always applies (random() = 0) and draws the top of every range."""

    def random(self):
        return 0.0

    def uniform(self, low, high):
        return high

    def integers(self, low, high):
        return low


def _blocks(h, w, size=8):
    ids = (np.arange(h)[:, None] // size) * 10 + (np.arange(w)[None, :] // size) + 1
    return ids.astype(np.uint8)


def test_rotate_moves_every_map_together_and_fills_the_corners():
    ids = _blocks(40, 48)
    image = np.stack([ids * 5, ids * 5, ids * 5], axis=-1).astype(np.uint8)
    sample = {K.IMAGE: image, K.PSEUDO: ids.copy(), K.DIST_PSEUDO: ids.copy(), K.SCRIBBLE: ids.copy()}
    out = RandomRotate(10.0, p=1.0, image_fill=(124, 116, 104))(sample, FixedRng())
    valid = out[K.VALID]
    assert valid.dtype == np.uint8 and valid[20, 24] == 1
    for y, x in ((0, 0), (0, 47), (39, 0), (39, 47)):   # a 10° rotation brings in outside pixels at every corner
        assert valid[y, x] == 0 and out[K.PSEUDO][y, x] == 255 and out[K.SCRIBBLE][y, x] == 255
        assert out[K.DIST_PSEUDO][y, x] == 0 and tuple(out[K.IMAGE][y, x]) == (124, 116, 104)
    inside = valid == 1
    assert np.array_equal(out[K.PSEUDO][inside], out[K.DIST_PSEUDO][inside])
    # the image agrees with the labels away from block edges (bilinear vs nearest differ only there)
    agree = out[K.IMAGE][..., 0].astype(int) == out[K.PSEUDO].astype(int) * 5
    assert agree[inside].mean() > 0.7
    assert not np.array_equal(out[K.PSEUDO], ids)                       # it did rotate
    assert np.array_equal(RandomRotate(10.0, p=0.0)(sample, FixedRng())[K.PSEUDO], ids)


def test_rotate_direction_is_counter_clockwise():
    m = np.zeros((21, 21), np.uint8)
    m[10, 15:] = 1                                                       # a ray pointing right from the centre
    out = RandomRotate(90.0, p=1.0)({K.LABEL: m}, FixedRng())[K.LABEL]
    assert (out[:6, 10] == 1).all() and out[10, 15:].max() == 0          # now it points up


def test_gaussian_blur_impulse_response_is_the_opencv_5x5_kernel():
    img = np.zeros((9, 9, 3), np.uint8)
    img[4, 4] = 255
    label = np.full((9, 9), 7, np.uint8)
    out = RandomGaussianBlur(5, p=1.0)({K.IMAGE: img, K.LABEL: label}, FixedRng())
    sigma = 0.3 * ((5 - 1) * 0.5 - 1) + 0.8                               # OpenCV's σ for ksize 5 = 1.1
    k = np.array([math.exp(-x * x / (2 * sigma * sigma)) for x in range(-2, 3)])
    k /= k.sum()
    expected = np.zeros((9, 9))
    expected[2:7, 2:7] = 255 * np.outer(k, k)
    assert np.abs(out[K.IMAGE][..., 1].astype(float) - expected).max() <= 0.5 + 1e-6
    assert np.array_equal(out[K.LABEL], label)
    flat = np.full((6, 7, 3), 90, np.uint8)
    assert np.array_equal(RandomGaussianBlur(5, p=1.0)({K.IMAGE: flat}, FixedRng())[K.IMAGE], flat)
    with pytest.raises(ValueError, match="odd"):
        RandomGaussianBlur(4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cdsp_pipeline_padding_never_supervises(seed):
    rng = np.random.default_rng(seed)
    h, w = 30, 40
    ids = rng.integers(1, 200, (h, w)).astype(np.uint8)
    scribble = np.full((h, w), 255, np.uint8)
    scribble[10:13, 5:35] = 3
    sample = {K.IMAGE: rng.integers(0, 256, (h, w, 3)).astype(np.uint8), K.SCRIBBLE: scribble,
              K.PSEUDO: ids.copy(), K.DIST_SCRIBBLE: ids.copy(), K.DIST_PSEUDO: ids.copy(), K.ID: "x"}
    t = build_cdsp_train_transforms(crop_size=48, scale_range=(0.5, 1.5), rotate_prob=1.0, blur_prob=1.0)
    out = t(sample, np.random.default_rng(seed))
    valid = out[K.VALID].numpy().astype(bool)
    assert out[K.IMAGE].shape == (3, 48, 48) and out[K.DIST_PSEUDO].shape == (48, 48)
    assert 0 < valid.sum() < 48 * 48
    pseudo, ds, dc = (out[k].numpy() for k in (K.PSEUDO, K.DIST_SCRIBBLE, K.DIST_PSEUDO))
    assert np.array_equal(pseudo[valid], dc[valid]) and np.array_equal(ds[valid], dc[valid])
    assert (pseudo[~valid] == 255).all() and (out[K.SCRIBBLE].numpy()[~valid] == 255).all()
    assert (ds[~valid] == 0).all() and (dc[~valid] == 0).all()
    # centred padding: the padded image is the mean colour (0 after normalisation) away from rotated edges
    assert np.abs(out[K.IMAGE].numpy()[:, 0, 0]).max() < 1e-6
