"""VOC helpers: the train_aug list and image-level label files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from weakseg.data.meta import VOC_META
from weakseg.data.voc_tools import (
    build_image_labels, build_trainaug_list, labels_from_map, labels_from_xml, load_tags_file, tags_vector,
)
from weakseg.utils.io import DataError, save_label_png

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_trainaug_is_aug_minus_val_sorted_and_written(tmp_path):
    for sid in ("2008_000003", "2007_000032", "2007_000039", "2011_000006"):
        save_label_png(tmp_path / "SegmentationClassAug" / f"{sid}.png", np.zeros((2, 2), np.uint8))
    seg = tmp_path / "ImageSets" / "Segmentation"
    seg.mkdir(parents=True)
    (seg / "val.txt").write_text("2007_000039\n2011_000006\n")
    ids = build_trainaug_list(tmp_path)
    assert ids == ["2007_000032", "2008_000003"]
    assert (seg / "train_aug.txt").read_text() == "2007_000032\n2008_000003\n"
    (seg / "val.txt").write_text("2008_000003\n2007_000032\n2007_000039\n2011_000006\n")
    with pytest.raises(DataError, match="no label PNGs"):
        build_trainaug_list(tmp_path)


def test_labels_from_xml_ignores_parts_and_rejects_unknown(tmp_path):
    p = tmp_path / "a.xml"
    p.write_text("<annotation><object><name>person</name><part><name>hand</name></part></object>"
                 "<object><name>dog</name></object><object><name>person</name></object></annotation>")
    assert labels_from_xml(p) == [12, 15]
    p.write_text("<annotation><object><name>dragon</name></object></annotation>")
    with pytest.raises(DataError, match=r"a\.xml.*dragon"):
        labels_from_xml(p)


def test_labels_from_map_and_vector():
    lab = np.array([[0, 3, 255], [3, 7, 0]], np.uint8)
    assert labels_from_map(lab, 21) == [0, 3, 7]
    with pytest.raises(DataError, match=r"\[7\]"):
        labels_from_map(lab, 5, "m.png")
    assert tags_vector([3], 5).tolist() == [1, 0, 0, 1, 0]


def test_build_image_labels_from_masks_and_scribbles(tmp_path):
    lab = np.zeros((4, 4), np.uint8)
    lab[1, 1] = 8
    lab[2, 2] = 255
    save_label_png(tmp_path / "SegmentationClass" / "a.png", lab)
    scr = np.full((4, 4), 255, np.uint8)
    scr[0, 0] = 8
    save_label_png(tmp_path / "Scribbles" / "a.png", scr)
    out = tmp_path / "tags.json"
    labels, problems = build_image_labels(tmp_path, ["a", "missing"], "label", out=out)
    assert labels == {"a": [0, 8]} and len(problems) == 1 and "missing.png" in problems[0]
    assert json.loads(out.read_text()) == {"a": [0, 8]}
    assert load_tags_file(out, num_classes=21) == {"a": [0, 8]}
    labels, _ = build_image_labels(tmp_path, ["a"], "scribble")
    assert labels == {"a": [0, 8]}
    (tmp_path / "bad.json").write_text('{"a": "cat"}')
    with pytest.raises(DataError, match="bad.json"):
        load_tags_file(tmp_path / "bad.json")


def test_image_labels_on_real_voc_masks():
    voc = DATA / "voc-mini" / "VOC2012"
    if not voc.is_dir():
        pytest.skip("shared data not available")
    labels, problems = build_image_labels(voc, ["2011_000003", "2011_000006", "2011_000025"], "label", meta=VOC_META)
    assert not problems and labels["2011_000003"] == [0, 5, 15]
    assert all(ids[0] == 0 and all(0 <= c < 21 for c in ids) for ids in labels.values())
