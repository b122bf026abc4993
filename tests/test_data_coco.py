"""COCO 2014 instances → semantic labels, lists and tags (weakseg.data.coco) on a small hand-made annotation file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pycocotools")

from weakseg.cli import main as cli_main  # noqa: E402
from weakseg.data.coco import (  # noqa: E402
    CATEGORY_TO_CLASS, COCO_CLASSES, _rle_string_counts, convert_coco, decode_segmentation, rasterize_instances,
)
from weakseg.data.dataset import meta_from_root, read_list_file  # noqa: E402
from weakseg.utils.io import DataError, read_label  # noqa: E402

H, W = 8, 10
PERSON, DOG = 1, 18  # COCO category ids → classes 1 and 17


def rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE (column-major run lengths starting with zeros) of a bool mask, computed by hand."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    runs, value, n = [], 0, 0
    for v in flat:
        if v != value:
            runs.append(n)
            value, n = v, 0
        n += 1
    runs.append(n)
    return runs


def box(y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def image_entry(iid, split="train", h=H, w=W):
    return {"id": iid, "file_name": f"COCO_{split}2014_{iid:012d}.jpg", "height": h, "width": w}


def write_split(root, split, images, annotations, make_images=True):
    cats = [{"id": cid, "name": COCO_CLASSES[cls]} for cid, cls in CATEGORY_TO_CLASS.items()]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}2014.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": cats}))
    folder = root / f"{split}2014"
    folder.mkdir(parents=True, exist_ok=True)
    if make_images:
        for entry in images:
            Image.new("RGB", (entry["width"], entry["height"]), (90, 120, 30)).save(folder / entry["file_name"])


@pytest.fixture()
def coco_root(tmp_path):
    from pycocotools import mask as mask_api

    crowd = box(0, H, 7, W)  # right three columns, partly over the person
    crowd_rle = mask_api.encode(np.asfortranarray(crowd.astype(np.uint8)))
    anns = [
        # person: polygon rectangle x 0..8, y 0..6 → pixels rows 0..5, cols 0..7 (pycocotools' half-open fill)
        {"id": 1, "image_id": 1, "category_id": PERSON, "iscrowd": 0, "segmentation": [[0, 0, 8, 0, 8, 6, 0, 6]]},
        # dog: uncompressed RLE, a smaller square on the person: painted last (smaller area), so it stays visible
        {"id": 2, "image_id": 1, "category_id": DOG, "iscrowd": 0,
         "segmentation": {"size": [H, W], "counts": rle_counts(box(2, 4, 2, 5))}},
        # crowd (compressed RLE string): 255 only where no instance lies
        {"id": 3, "image_id": 1, "category_id": PERSON, "iscrowd": 1,
         "segmentation": {"size": [H, W], "counts": crowd_rle["counts"].decode("ascii")}},
        {"id": 4, "image_id": 1, "category_id": 12, "iscrowd": 0, "segmentation": [[0, 0, 1, 0, 1, 1]]},  # no id 12
        {"id": 5, "image_id": 1, "category_id": DOG, "iscrowd": 0,  # run lengths sum to 79, not 80
         "segmentation": {"size": [H, W], "counts": [10, 69]}},
        {"id": 6, "image_id": 99, "category_id": DOG, "iscrowd": 0, "segmentation": [[0, 0, 2, 0, 2, 2]]},
        {"id": 7, "image_id": 3, "category_id": DOG, "iscrowd": 0, "segmentation": [[0, 0, 2, 0, 2, 2]]},
    ]
    images = [image_entry(1), image_entry(2), image_entry(3)]  # 2: no annotation; 3: file removed below
    write_split(tmp_path, "train", images, anns)
    (tmp_path / "train2014" / images[2]["file_name"]).unlink()
    # val: a larger instance drawn after a smaller one must not cover it (area order, not file order)
    val_anns = [
        {"id": 10, "image_id": 5, "category_id": DOG, "iscrowd": 0, "segmentation": [[1, 1, 3, 1, 3, 3, 1, 3]]},
        {"id": 11, "image_id": 5, "category_id": PERSON, "iscrowd": 0, "segmentation": [[0, 0, 6, 0, 6, 5, 0, 5]]},
    ]
    write_split(tmp_path, "val", [image_entry(5, "val")], val_anns)
    return tmp_path


def test_category_order_is_the_usual_wsss_order():
    assert len(COCO_CLASSES) == 81 and COCO_CLASSES[0] == "background"
    assert CATEGORY_TO_CLASS[1] == 1 and CATEGORY_TO_CLASS[18] == 17 and CATEGORY_TO_CLASS[90] == 80
    assert COCO_CLASSES[17] == "dog" and COCO_CLASSES[80] == "toothbrush"
    assert sorted(CATEGORY_TO_CLASS) == list(CATEGORY_TO_CLASS) and list(CATEGORY_TO_CLASS.values()) == list(
        range(1, 81))


def test_decoders_agree_with_hand_made_masks():
    square = box(2, 4, 2, 5)
    assert np.array_equal(decode_segmentation([[0, 0, 8, 0, 8, 6, 0, 6]], H, W), box(0, 6, 0, 8))
    assert np.array_equal(decode_segmentation({"size": [H, W], "counts": rle_counts(square)}, H, W), square)
    assert _rle_string_counts(b"i144000O") == [57, 4, 4, 4, 4, 4, 3]  # pycocotools' encoding of box(1, 5, 7, 10)
    assert np.array_equal(decode_segmentation({"size": [H, W], "counts": "i144000O"}, H, W), box(1, 5, 7, 10))
    # far-away polygon points are clamped to the image instead of rasterised point by point
    assert decode_segmentation([[0, 0, 1e12, 0, 1e12, 1e12]], H, W).any()


@pytest.mark.parametrize("segm, message", [
    ({"size": [H, W], "counts": [10, 69]}, "sum to 79"),
    ({"size": [H, W], "counts": [10, -1, 71]}, "non-negative"),
    ({"size": [W, H], "counts": [80]}, "differs from the image size"),
    ({"size": [H, W], "counts": "i1440"}, "sum to"),
    ({"size": [H, W], "counts": "i1\x7f"}, "invalid RLE character"),
    ([[0, 0, 1, 1]], "at least 3"),
    ([[0, 0, 1, 1, float("nan"), 2]], "non-finite"),
    ("polygon", "polygon list or an RLE"),
])
def test_malformed_segmentations_are_refused_before_decoding(segm, message):
    with pytest.raises(ValueError, match=message):
        decode_segmentation(segm, H, W)


def test_overlap_rule_smaller_on_top_and_crowd_under_instances():
    big, small, crowd = box(0, 6, 0, 8), box(2, 4, 2, 5), box(0, 8, 7, 10)
    out = rasterize_instances([(5, small, False), (1, big, False), (3, crowd, True)], H, W)
    assert (out[small] == 5).all() and (out[big & ~small] == 1).all()
    assert (out[crowd & ~big] == 255).all() and (out[~(big | crowd)] == 0).all()


def test_convert_coco_end_to_end(coco_root, capsys):
    rc = cli_main(["data", "coco", "--root", str(coco_root)])
    out, err = capsys.readouterr()
    assert rc == 0
    assert ("coco train2014: 1 ids, 1 label PNGs written, skipped: 1 bad segmentation, 1 missing image, "
            "1 no annotations, 1 unknown category, 1 unknown image id") in out
    assert "unknown category id 12" in err and "sum to 79" in err
    label = read_label(coco_root / "SegmentationClass/train2014/COCO_train2014_000000000001.png")
    expected = np.zeros((H, W), dtype=np.uint8)
    expected[0:6, 0:8] = 1            # person polygon
    expected[2:4, 2:5] = 17           # dog on top of the person
    expected[6:8, 7:10] = 255         # crowd where no instance lies
    expected[0:6, 7] = 1              # ... but the person keeps its pixels under the crowd
    expected[0:6, 8:10] = 255
    assert np.array_equal(label, expected)
    val = read_label(coco_root / "SegmentationClass/val2014/COCO_val2014_000000000005.png")
    assert (val[1:3, 1:3] == 17).all() and val[0, 0] == 1 and val[6, 9] == 0
    assert read_list_file(coco_root / "ImageSets/Segmentation/train.txt") == ["train2014/COCO_train2014_000000000001"]
    assert read_list_file(coco_root / "ImageSets/Segmentation/val.txt") == ["val2014/COCO_val2014_000000000005"]
    tags = json.loads((coco_root / "tags.json").read_text())
    # the malformed dog annotation (id 5) still says a dog is present; its outline is only left out of the mask
    assert tags == {"train2014/COCO_train2014_000000000001": [0, 1, 17], "val2014/COCO_val2014_000000000005": [0, 1, 17]}
    assert meta_from_root(coco_root).num_classes == 81
    # a second run resumes: nothing is redrawn, the same lists come out
    assert cli_main(["data", "coco", "--root", str(coco_root)]) == 0
    assert "1 ids, 0 label PNGs written" in capsys.readouterr().out


def test_bad_files_give_one_clear_error(tmp_path, capsys):
    write_split(tmp_path, "train", [image_entry(1)], [])
    (tmp_path / "annotations/instances_train2014.json").write_text("{not json")
    assert cli_main(["data", "coco", "--root", str(tmp_path), "--splits", "train"]) == 2
    err = capsys.readouterr().err
    assert "instances_train2014.json" in err and "invalid JSON" in err
    (tmp_path / "annotations/instances_train2014.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="'annotations'"):
        convert_coco(tmp_path, splits=("train",))
    bad_cats = {"images": [], "annotations": [], "categories": [{"id": 18, "name": "cat"}]}
    (tmp_path / "annotations/instances_train2014.json").write_text(json.dumps(bad_cats))
    with pytest.raises(DataError, match="category id 18 is 'cat'"):
        convert_coco(tmp_path, splits=("train",))
    write_split(tmp_path, "train", [image_entry(1)], [], make_images=False)
    with pytest.raises(DataError, match="no usable image"):
        convert_coco(tmp_path, splits=("train",))
    with pytest.raises(DataError, match="image folder not found"):
        convert_coco(tmp_path, splits=("val",))
