"""Built-in co-segmentation (weakseg.modules.coseg): shared object found, saliency errors voted out, determinism."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from weakseg.modules.coseg import CosegConfig, CosegModels, _final_mask, config_from_dict, cosegment_class, refine_mask

SIZE = 96


def _scene(rng: np.random.Generator):
    """A cluttered background with the shared object (a striped orange disc) somewhere: (image, object mask)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    base = rng.uniform(40, 200, size=3)
    image = base + 40 * np.sin(xx / rng.uniform(3, 9))[..., None] * rng.uniform(-1, 1, size=3)
    for _ in range(3):  # clutter: random rectangles
        y0, x0 = rng.integers(0, SIZE - 20, size=2)
        image[y0:y0 + rng.integers(8, 20), x0:x0 + rng.integers(8, 20)] = rng.uniform(0, 255, size=3)
    cy, cx = rng.uniform(30, 66, size=2)
    obj = np.hypot(yy - cy, xx - cx) <= rng.uniform(16, 24)
    stripes = (np.sin((xx + yy) / 2.0) > 0)[..., None]
    image[obj] = np.where(stripes, [240, 140, 20], [120, 40, 10])[obj]
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), obj


class FakeSaliency:
    """Saliency that finds the object (0.95) but also a false salient blob (0.7) in a random place per image."""

    def __init__(self, images, masks, rng):
        self.maps = {}
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        for image, mask in zip(images, masks):
            cy, cx = rng.uniform(12, 84, size=2)
            sal = np.where(mask, 0.95, 0.03).astype(np.float32)
            blob = (np.hypot(yy - cy, xx - cx) <= 12) & ~mask
            sal[blob] = 0.7
            self.maps[hashlib.sha1(image.tobytes()).hexdigest()] = sal

    def predict(self, image):
        return self.maps[hashlib.sha1(image.tobytes()).hexdigest()].copy()


def _jaccard(pred, gt):
    return (pred & gt).sum() / max((pred | gt).sum(), 1)


@pytest.fixture(scope="module")
def scenes(one_thread):
    rng = np.random.default_rng(3)
    pairs = [_scene(rng) for _ in range(8)]
    images, masks = [p[0] for p in pairs], [p[1] for p in pairs]
    cfg = CosegConfig(feature_size=160, kmeans_samples=2000, crf_iterations=3, crf_bilateral_sxy=20.0)
    models = CosegModels(cfg, saliency=FakeSaliency(images, masks, rng))
    return images, masks, cfg, models


def test_shared_object_found_and_false_saliency_voted_out(scenes):
    images, masks, cfg, models = scenes
    result = cosegment_class(images, 7, cfg, models=models, seed=0)
    coseg_j = np.mean([_jaccard(f, m) for f, m in zip(result.foreground, masks)])
    sal_j = np.mean([_jaccard(models.saliency.predict(im) >= 0.5, m) for im, m in zip(images, masks)])
    assert coseg_j >= 0.8, coseg_j
    assert coseg_j >= sal_j + 0.1, (coseg_j, sal_j)  # the false blobs are not shared: the set votes them out
    for mask, fg, image in zip(result.masks, result.foreground, images):
        assert mask.shape == image.shape[:2] and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 7, 255}
        assert (mask[fg & (mask != 255)] == 7).all() and (mask[~fg & (mask != 255)] == 0).all()
    assert set(result.timings) >= {"features", "saliency", "cluster", "refine"}
    assert result.seconds_per_image()["total"] > 0


def test_deterministic_for_a_seed(scenes):
    images, _, cfg, models = scenes
    a = cosegment_class(images, 3, cfg, models=models, seed=5)
    b = cosegment_class(images, 3, cfg, models=models, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks))
    assert a.num_clusters == b.num_clusters and a.foreground_clusters == b.foreground_clusters


def test_without_voting_each_image_decides_alone(scenes):
    images, masks, cfg, models = scenes
    result = cosegment_class(images, 1, dataclasses.replace(cfg, voting=False), models=models, seed=0)
    assert len(result.masks) == len(images)
    assert np.mean([_jaccard(f, m) for f, m in zip(result.foreground, masks)]) > 0.3


def test_refine_removes_small_components_and_final_mask_band():
    score = np.zeros((40, 40), np.float32)
    score[5:25, 5:25] = 0.9  # 400 px object
    score[32:34, 32:34] = 0.9  # 4 px speck: below 1 % of 1600 px
    cfg = CosegConfig(crf_iterations=0, min_component=0.01)
    fg = refine_mask(np.zeros((40, 40, 3), np.uint8), score, cfg)
    assert fg[5:25, 5:25].all() and fg.sum() == 400
    mask = _final_mask(fg, 4, band=1)
    assert mask[15, 15] == 4 and mask[0, 0] == 0
    assert mask[5, 15] == 255 and mask[4, 15] == 255 and mask[6, 15] == 4  # one pixel each side of the boundary
    assert set(np.unique(mask)) == {0, 4, 255}


def test_config_checks_and_unknown_keys():
    with pytest.raises(ValueError, match="k_min"):
        CosegConfig(k_min=5, k_max=3)
    with pytest.raises(ValueError, match="outlier_label"):
        CosegConfig(outlier_label="drop")
    with pytest.raises(ValueError, match="kmeans_sample"):
        config_from_dict({"kmeans_sample": 10})
    assert config_from_dict({"k_max": 6}).k_max == 6


def test_bad_inputs_are_refused(scenes):
    images, _, cfg, models = scenes
    with pytest.raises(ValueError, match="class_id"):
        cosegment_class(images, 0, cfg, models=models)
    with pytest.raises(ValueError, match="at least one image"):
        cosegment_class([], 1, cfg, models=models)
    with pytest.raises(ValueError, match="uint8"):
        cosegment_class([np.zeros((8, 8), np.float32)], 1, cfg, models=models)


def test_cli_coseg_writes_masks_and_resumes(tmp_path, capsys, one_thread):
    pytest.importorskip("onnxruntime")
    from weakseg.cli import main
    from weakseg.data.saliency import find_u2netp
    from weakseg.utils.io import read_label, save_image

    try:
        find_u2netp()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    rng = np.random.default_rng(0)
    root = tmp_path / "web"
    for i in range(4):
        save_image(root / "horse" / f"{i}.png", _scene(rng)[0])
    (tmp_path / "classes.txt").write_text("background\ndog\nhorse\n")
    assert main(["data", "web", "--root", str(root), "--classes", str(tmp_path / "classes.txt")]) == 0
    args = ["data", "coseg", "--root", str(root), "--classes", str(tmp_path / "classes.txt"), "--out",
            str(tmp_path / "masks"), "--set", "feature_size=128", "--set", "crf_iterations=1"]
    assert main(args) == 0
    masks = sorted((tmp_path / "masks" / "horse").glob("*.png"))
    assert [p.stem for p in masks] == ["0", "1", "2", "3"]
    for p in masks:
        mask = read_label(p)
        assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) <= {0, 2, 255}
    assert "4 masks written" in capsys.readouterr().out
    assert main(args) == 0  # resume: the class is complete, nothing is recomputed
    assert "0 masks written" in capsys.readouterr().out
    assert main(args[:-2] + ["--set", "no_such_key=1"]) == 2
