"""SegDataset: supervision-specific loading, tags sources, id validation, data checks, lenient scanning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from weakseg.data import keys as K
from weakseg.data.dataset import SegDataset, meta_from_root
from weakseg.data.meta import VOC_META, DatasetMeta, voc_palette
from weakseg.data.transforms import build_train_transforms
from weakseg.utils.io import DataError, save_image, save_label_png

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
META4 = DatasetMeta(("background", "a", "b", "c"))


def _xml(objects):
    objs = "".join(f"<object><name>{n}</name><part><name>head</name></part></object>" for n in objects)
    return f"<annotation><filename>x.jpg</filename>{objs}</annotation>"


@pytest.fixture()
def root(tmp_path):
    """Three 12×16 images: labels with classes {0,1}, {0,2,3}, {0,3}; scribbles; XMLs; pseudo masks; maps."""
    rng = np.random.default_rng(0)
    for i, classes in enumerate([(1,), (2, 3), (3,)]):
        sid = f"im{i}"
        save_image(tmp_path / "JPEGImages" / f"{sid}.jpg", rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        label = np.zeros((12, 16), np.uint8)
        for k, c in enumerate(classes):
            label[2 + 4 * k: 5 + 4 * k, 3:12] = c
        label[0, 0] = 255
        save_label_png(tmp_path / "SegmentationClass" / f"{sid}.png", label, voc_palette())
        scrib = np.full((12, 16), 255, np.uint8)
        scrib[3, 4:10] = classes[0]
        scrib[11, :5] = 0
        save_label_png(tmp_path / "Scribbles" / f"{sid}.png", scrib, voc_palette())
        save_label_png(tmp_path / "Pseudo" / f"{sid}.png", label)
        (tmp_path / "Annotations").mkdir(exist_ok=True)
        (tmp_path / "Annotations" / f"{sid}.xml").write_text(_xml([META4.classes[c] for c in classes]))
        dist = np.full((12, 16, 3), 40 + i, np.uint8)
        save_image(tmp_path / "dist" / f"{sid}.png", dist)
        save_label_png(tmp_path / "sal" / f"{sid}.png", np.full((12, 16), 255, np.uint8))
    seg = tmp_path / "ImageSets" / "Segmentation"
    seg.mkdir(parents=True)
    (seg / "train.txt").write_text("im0\nim1\n\nim2\n")
    (tmp_path / "tags.json").write_text(json.dumps({"im0": [1], "im1": [0, 2], "im2": [3]}))
    return tmp_path


LIST = "ImageSets/Segmentation/train.txt"


def test_full_supervision_loads_label(root):
    ds = SegDataset(root, LIST, meta=META4, supervision="full")
    assert len(ds) == 3 and ds.ids == ["im0", "im1", "im2"]
    s = ds[1]
    assert s[K.IMAGE].shape == (12, 16, 3) and s[K.IMAGE].dtype == np.uint8
    assert s[K.ID] == "im1" and s[K.ORIG_SIZE] == (12, 16)
    assert set(np.unique(s[K.LABEL])) == {0, 2, 3, 255}
    assert K.SCRIBBLE not in s and K.TAGS not in s


def test_scribble_and_tags_samples_never_carry_dense_labels(root):
    scr = SegDataset(root, LIST, meta=META4, supervision="scribble")[1]
    assert K.LABEL not in scr and K.SCRIBBLE in scr
    assert scr[K.TAGS].tolist() == [1, 0, 1, 0]            # scribbled classes {0, 2}; class 3 was not scribbled
    assert scr[K.TAGS].dtype == np.float32
    tags = SegDataset(root, LIST, meta=META4, supervision="tags", tags_source="xml")[1]
    assert K.LABEL not in tags and K.SCRIBBLE not in tags
    assert tags[K.TAGS].tolist() == [1, 0, 1, 1]            # XML objects b, c (parts ignored), background always 1
    evald = SegDataset(root, LIST, meta=META4, supervision="scribble", with_label=True)[1]
    assert K.LABEL in evald                                 # only when evaluation asks for it


def test_tags_sources_label_and_file(root):
    by_label = SegDataset(root, LIST, meta=META4, supervision="tags")[0]
    assert by_label[K.TAGS].tolist() == [1, 1, 0, 0] and K.LABEL not in by_label
    by_file = SegDataset(root, LIST, meta=META4, supervision="tags", tags_source="file", tags_file="tags.json")
    assert by_file[0][K.TAGS].tolist() == [1, 1, 0, 0]      # background set even when the file omits it
    assert by_file[2][K.TAGS].tolist() == [1, 0, 0, 1]
    (root / "bad.json").write_text(json.dumps({"im0": [9]}))
    with pytest.raises(DataError, match="bad.json"):
        SegDataset(root, LIST, meta=META4, supervision="tags", tags_source="file", tags_file="bad.json")


def test_pseudo_saliency_and_extra_maps(root):
    ds = SegDataset(root, LIST, meta=META4, supervision="pseudo", pseudo_dir="Pseudo", saliency_dir="sal",
                    extra_maps={K.DISTANCE: str(root / "dist")})
    s = ds[2]
    assert set(np.unique(s[K.PSEUDO])) == {0, 3, 255} and K.LABEL not in s
    assert s[K.SALIENCY].dtype == np.float32 and np.allclose(s[K.SALIENCY], 1.0)
    assert s[K.DISTANCE].shape == (12, 16) and (s[K.DISTANCE] == 42).all()   # 3 identical channels → one
    with pytest.raises(ValueError, match="extra_maps"):
        SegDataset(root, LIST, meta=META4, extra_maps={"edges": "dist"})


def test_transforms_and_collate(root):
    t = build_train_transforms(crop_size=20, scale_range=(0.8, 1.2), flip_prob=0.5, color_jitter=(0.3, 0.3, 0.3, 0.1))
    ds = SegDataset(root, LIST, meta=META4, supervision="scribble", transform=t)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch[K.IMAGE].shape == (3, 3, 20, 20) and batch[K.SCRIBBLE].dtype == torch.int64
    assert batch[K.TAGS].shape == (3, 4) and batch[K.ID] == ["im0", "im1", "im2"]
    assert K.LABEL not in batch and (batch[K.VALID].sum((1, 2)) > 0).all()


@pytest.mark.parametrize("line, msg", [("../etc/passwd", "invalid id"), ("/abs/x", "invalid id"),
                                       ("a/../../b", "invalid id")])
def test_ids_are_validated(root, line, msg):
    (root / "evil.txt").write_text(f"im0\n{line}\n")
    with pytest.raises(DataError, match=rf"evil.txt:2: {msg}"):
        SegDataset(root, "evil.txt", meta=META4)


def test_empty_and_two_column_lists(root):
    (root / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match="empty.txt.*empty"):
        SegDataset(root, "empty.txt", meta=META4)
    (root / "two.txt").write_text("/JPEGImages/im2.jpg /SegmentationClass/im2.png\n")
    ds = SegDataset(root, str(root / "two.txt"), meta=META4)
    assert ds.ids == ["im2"] and ds[0][K.ID] == "im2"


def test_errors_name_the_file_and_are_lazy(root):
    save_label_png(root / "SegmentationClass" / "im1.png", np.zeros((10, 16), np.uint8))      # wrong size
    bad = np.zeros((12, 16), np.uint8)
    bad[5, 5] = 7
    save_label_png(root / "SegmentationClass" / "im2.png", bad)                                 # class 7 ≥ 4
    (root / "JPEGImages" / "im0.jpg").unlink()
    ds = SegDataset(root, LIST, meta=META4)            # construction reads no image
    with pytest.raises(DataError, match=r"im0\.jpg.*not found"):
        ds[0]
    with pytest.raises(DataError, match=r"im1\.png.*size 10x16 differs"):
        ds[1]
    with pytest.raises(DataError, match=r"im2\.png.*\[7\]"):
        ds[2]
    with pytest.raises(DataError, match="3 bad sample"):
        ds.scan()


def test_lenient_drops_bad_samples_with_a_log_line(root):
    import logging

    (root / "JPEGImages" / "im1.jpg").write_bytes(b"not a jpeg")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("weakseg").addHandler(handler)
    try:
        ds = SegDataset(root, LIST, meta=META4, lenient=True)
    finally:
        logging.getLogger("weakseg").removeHandler(handler)
    (line,) = [r.getMessage() for r in records if "dropped" in r.getMessage()]  # one line: count and first files
    assert "dropped 1 bad sample(s) of 3" in line and "im1.jpg" in line
    assert ds.ids == ["im0", "im2"] and ds.num_dropped == 1
    assert len(ds.problems) == 1 and "im1.jpg" in ds.problems[0]


def test_unsafe_xml_is_refused(root):
    (root / "Annotations" / "im0.xml").write_text(
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "y">]><annotation><object><name>&x;</name></object>'
        "</annotation>")
    ds = SegDataset(root, LIST, meta=META4, supervision="tags", tags_source="xml")
    with pytest.raises(DataError, match="DOCTYPE"):
        ds[0]


def test_meta_from_root(tmp_path):
    assert meta_from_root(tmp_path) is VOC_META
    (tmp_path / "classes.txt").write_text("background\nhorse\n")
    meta = meta_from_root(tmp_path)
    assert meta.classes == ("background", "horse") and meta.num_classes == 2
    (tmp_path / "classes.txt").write_text("background\nhorse\nhorse\n")
    with pytest.raises(DataError, match="duplicate"):
        meta_from_root(tmp_path)


def test_real_voc_mini_and_horse():
    voc = DATA / "voc-mini" / "VOC2012"
    horse = DATA / "weizmann-horse"
    if not voc.is_dir() or not horse.is_dir():
        pytest.skip("shared data not available")
    ds = SegDataset(voc, "ImageSets/Segmentation/val.txt", meta=VOC_META, supervision="full")
    s = ds[0]
    assert s[K.ID] == "2011_000003" and s[K.LABEL].shape == s[K.IMAGE].shape[:2]
    assert set(np.unique(s[K.LABEL])) == {0, 5, 15, 255}
    hds = SegDataset(horse, "ImageSets/Segmentation/val.txt", meta=meta_from_root(horse), supervision="tags")
    assert hds.meta.classes == ("background", "horse")
    h = hds[0]
    assert h[K.TAGS].tolist() == [1.0, 1.0] and K.LABEL not in h
    with Image.open(horse / "JPEGImages" / f"{h[K.ID]}.jpg") as im:
        assert h[K.ORIG_SIZE] == (im.size[1], im.size[0])
