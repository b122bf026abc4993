"""Joint transforms: sparse resizing, crop/paste padding, flips, colour jitter, tensors and seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from weakseg.data import keys as K
from weakseg.data.transforms import (
    ColorJitter, Compose, Normalize, RandomCrop, RandomHFlip, RandomScale, ResizeLongSide, ToTensor,
    _hsv_to_rgb, _rgb_to_hsv, build_eval_transforms, build_train_transforms, resize_nearest, resize_sparse,
)


def make_sample(h=40, w=60, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    label = np.zeros((h, w), dtype=np.uint8)
    label[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 7
    label[0, :] = 255
    scribble = np.full((h, w), 255, dtype=np.uint8)
    scribble[h // 2, 5:w - 5] = 7
    scribble[2:h - 2, 2] = 0
    return {K.IMAGE: image, K.LABEL: label, K.SCRIBBLE: scribble, K.TAGS: np.array([1, 0, 1], np.float32),
            K.ID: "x", K.ORIG_SIZE: (h, w)}


def test_sparse_resize_keeps_every_stroke_cell_while_nearest_loses_pixels():
    scrib = np.full((97, 113), 255, dtype=np.uint8)
    rr = np.arange(97)
    scrib[rr, (rr * 113) // 97] = 3            # a 1-px diagonal
    scrib[10, 5] = 4                           # an isolated dot
    out = resize_sparse(scrib, (31, 29))
    src_r, src_c = np.nonzero(scrib != 255)
    cells = {(((2 * r + 1) * 31) // 194, ((2 * c + 1) * 29) // 226) for r, c in zip(src_r, src_c)}
    dst = set(zip(*np.nonzero(out != 255)))
    assert dst == cells                        # every labelled source pixel lands in its centre's cell, nothing else
    assert out[(21 * 31) // 194, (11 * 29) // 226] == 4
    near = resize_nearest(scrib, (31, 29))
    assert np.count_nonzero(near != 255) < len(cells)  # plain nearest drops stroke pixels
    # upscaling is plain nearest-neighbour
    assert np.array_equal(resize_sparse(scrib, (200, 250)), resize_nearest(scrib, (200, 250)))


def test_random_scale_sizes_modes_and_range():
    s = make_sample()
    rng = np.random.default_rng(3)
    sizes = set()
    for _ in range(20):
        out = RandomScale((0.5, 1.5))(s, rng)
        h, w = out[K.LABEL].shape
        assert out[K.IMAGE].shape == (h, w, 3) and out[K.SCRIBBLE].shape == (h, w)
        assert 20 <= h <= 60 and abs(w / h - 1.5) < 0.1
        assert set(np.unique(out[K.LABEL])) <= {0, 7, 255}          # nearest: no interpolated class ids
        assert set(np.unique(out[K.SCRIBBLE])) == {0, 7, 255}       # sparse: strokes survive downscaling
        assert out[K.TAGS] is s[K.TAGS] and out[K.ID] == "x"
        sizes.add(h)
    assert len(sizes) > 5
    assert s[K.LABEL].shape == (40, 60)  # input untouched


def test_resize_long_side_and_float_maps():
    s = make_sample()
    s[K.SALIENCY] = np.linspace(0, 1, 40 * 60, dtype=np.float32).reshape(40, 60)
    s[K.CAM] = np.ones((2, 40, 60), dtype=np.float32)
    out = ResizeLongSide(90)(s, np.random.default_rng(0))
    assert out[K.IMAGE].shape == (60, 90, 3) and out[K.SALIENCY].dtype == np.float32
    assert out[K.CAM].shape == (2, 60, 90) and np.allclose(out[K.CAM], 1.0, atol=1e-5)
    assert 0.0 <= out[K.SALIENCY].min() and out[K.SALIENCY].max() <= 1.0 + 1e-5
    lengths = {max(ResizeLongSide((30, 50))(s, np.random.default_rng(i))[K.LABEL].shape) for i in range(30)}
    assert lengths <= set(range(30, 51)) and len(lengths) > 5


def test_crop_larger_image_takes_a_window():
    s = make_sample(50, 70)
    out = RandomCrop(32)(s, np.random.default_rng(1))
    assert out[K.IMAGE].shape == (32, 32, 3) and out[K.VALID].all()
    img = s[K.IMAGE]
    hits = [(y, x) for y in range(50 - 31) for x in range(70 - 31)
            if np.array_equal(img[y:y + 32, x:x + 32], out[K.IMAGE])]
    assert len(hits) == 1
    y, x = hits[0]
    assert np.array_equal(out[K.LABEL], s[K.LABEL][y:y + 32, x:x + 32])


def test_crop_paste_pads_each_key_with_its_value_at_random_offsets():
    s = make_sample(20, 30)
    offsets = set()
    for i in range(15):
        out = RandomCrop((48, 40))(s, np.random.default_rng(i))
        valid = out[K.VALID]
        assert valid.dtype == np.uint8 and valid.sum() == 20 * 30
        ys, xs = np.nonzero(valid)
        y0, x0 = ys.min(), xs.min()
        offsets.add((y0, x0))
        assert np.array_equal(out[K.LABEL][y0:y0 + 20, x0:x0 + 30], s[K.LABEL])
        assert (out[K.LABEL][valid == 0] == 255).all() and (out[K.SCRIBBLE][valid == 0] == 255).all()
        assert (out[K.IMAGE][valid == 0] == 0).all()
    assert len(offsets) > 5
    corner = RandomCrop(48, policy="corner")(s, np.random.default_rng(0))
    assert corner[K.VALID][:20, :30].all() and corner[K.VALID].sum() == 600
    centre = RandomCrop(48, policy="center")(s, np.random.default_rng(0))
    assert centre[K.VALID][14:34, 9:39].all()
    with pytest.raises(ValueError, match="policy"):
        RandomCrop(8, policy="bottom")


def test_hflip_flips_every_map():
    s = make_sample()
    s[K.CAM] = np.arange(2 * 40 * 60, dtype=np.float32).reshape(2, 40, 60)
    out = RandomHFlip(1.0)(s, np.random.default_rng(0))
    assert np.array_equal(out[K.IMAGE], s[K.IMAGE][:, ::-1]) and np.array_equal(out[K.SCRIBBLE], s[K.SCRIBBLE][:, ::-1])
    assert np.array_equal(out[K.CAM], s[K.CAM][:, :, ::-1])
    same = RandomHFlip(0.0)(s, np.random.default_rng(0))
    assert np.array_equal(same[K.LABEL], s[K.LABEL])


def test_color_jitter_is_applied_to_the_image():
    s = make_sample()
    out = ColorJitter(0.5, 0.5, 0.5, 0.25)(s, np.random.default_rng(0))
    assert out[K.IMAGE].dtype == np.uint8 and out[K.IMAGE].shape == s[K.IMAGE].shape
    assert np.abs(out[K.IMAGE].astype(int) - s[K.IMAGE].astype(int)).mean() > 2.0
    assert np.array_equal(out[K.LABEL], s[K.LABEL])
    with pytest.raises(ValueError, match="before Normalize"):
        ColorJitter(0.5)(Normalize()(s), np.random.default_rng(0))


def test_hsv_round_trip_and_hue_leaves_grey_alone():
    rgb = np.random.default_rng(0).random((500, 3))
    assert np.allclose(_hsv_to_rgb(_rgb_to_hsv(rgb)), rgb, atol=1e-6)
    grey = np.full((8, 8, 3), 90, dtype=np.uint8)
    out = ColorJitter(hue=0.5)({K.IMAGE: grey}, np.random.default_rng(1))
    assert np.array_equal(out[K.IMAGE], grey)


def test_normalize_and_to_tensor_types():
    s = make_sample()
    s[K.IMAGE][0, 0] = (124, 116, 104)                     # ≈ ImageNet mean
    s[K.SALIENCY] = np.zeros((40, 60), np.float32)
    s[K.BOUNDARY] = np.zeros((40, 60), np.uint8)
    out = ToTensor()(RandomCrop(32)(Normalize()(s), np.random.default_rng(0)))
    assert out[K.IMAGE].dtype == torch.float32 and out[K.IMAGE].shape == (3, 32, 32)
    for key in (K.LABEL, K.SCRIBBLE, K.VALID, K.BOUNDARY):
        assert out[key].dtype == torch.int64 and out[key].shape == (32, 32)
    assert out[K.SALIENCY].dtype == torch.float32 and out[K.TAGS].dtype == torch.float32
    assert out[K.ID] == "x" and out[K.ORIG_SIZE] == (40, 60)
    norm = Normalize()(s)[K.IMAGE]
    assert norm.dtype == np.float32 and np.abs(norm[0, 0]).max() < 0.02


def test_unknown_key_is_rejected():
    s = make_sample()
    s["edges"] = np.zeros((40, 60), np.uint8)
    with pytest.raises(ValueError, match="edges"):
        RandomHFlip(1.0)(s, np.random.default_rng(0))


def test_compose_is_seeded_by_torch_and_differs_between_seeds():
    t = build_train_transforms(crop_size=24, scale_range=(0.5, 1.5), flip_prob=0.5, color_jitter=(0.4, 0.4, 0.4, 0.1),
                               mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    s = make_sample()

    def run(seed):
        torch.manual_seed(seed)
        return [t(s)[K.IMAGE] for _ in range(3)]

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))               # reproducible by seed
    assert not all(torch.equal(x, y) for x, y in zip(a, c))           # a new seed (worker) draws differently
    assert not torch.equal(a[0], a[1])                                 # successive samples differ
    out = t(s)
    assert out[K.IMAGE].shape == (3, 24, 24) and out[K.SCRIBBLE].dtype == torch.int64
    assert set(out[K.VALID].unique().tolist()) <= {0, 1}
    ev = build_eval_transforms()(s)
    assert ev[K.IMAGE].shape == (3, 40, 60) and torch.equal(ev[K.LABEL], torch.from_numpy(s[K.LABEL]).long())


def test_compose_explicit_rng_is_deterministic():
    t = Compose([RandomScale(), RandomHFlip(), RandomCrop(16)])
    s = make_sample()
    a = t(s, np.random.default_rng(7))
    b = t(s, np.random.default_rng(7))
    assert all(np.array_equal(a[k], b[k]) for k in (K.IMAGE, K.LABEL, K.SCRIBBLE, K.VALID))


class _SameSample(torch.utils.data.Dataset):
    def __init__(self):
        self.t = build_train_transforms(crop_size=16, scale_range=(0.5, 1.5), flip_prob=0.5, color_jitter=None)

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return self.t(make_sample())


def test_dataloader_workers_draw_different_augmentations_reproducibly():
    def images():
        torch.manual_seed(5)
        loader = torch.utils.data.DataLoader(_SameSample(), batch_size=1, num_workers=2)
        return [b[K.IMAGE][0] for b in loader]

    first, second = images(), images()
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    assert not torch.equal(first[0], first[1])  # items 0 and 1 come from different workers
