"""PASCAL-Context 459 → 60 remap (spec §1.3, check §6b.2): one LUT lookup, never a chained in-place remap."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from weakseg.data.context import build_lut, context_meta, convert_context_folder, load_lut, read_label_names, remap
from weakseg.utils.io import DataError, read_label

# the 59 classes in 59_labels.txt order (= the Context scribble tag order, spec §1.2; "table"/"plant"/"monitor"
# spelled as in the official file)
NAMES59 = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "table", "dog", "horse",
    "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor", "bag", "bed", "bench", "book",
    "building", "cabinet", "ceiling", "cloth", "computer", "cup", "door", "fence", "floor", "flower", "food", "grass",
    "ground", "keyboard", "light", "mountain", "mouse", "curtain", "platform", "sign", "plate", "road", "rock",
    "shelves", "sidewalk", "sky", "snow", "bedclothes", "track", "tree", "truck", "wall", "water", "window", "wood",
)
# commonly used 459-class ids of these names (alphabetical 459 list: aeroplane 2, bag 9, bed 18, bedclothes 19, ...)
IDS459 = (2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113, 115, 144, 158,
          159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326, 347, 349, 354, 355, 360, 366,
          368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458)
ID_OF = dict(zip(sorted(NAMES59), IDS459))


@pytest.fixture()
def label_files(tmp_path):
    names459 = {i: f"thing{i}" for i in range(1, 460)}
    for name, idx in ID_OF.items():
        names459[idx] = name
    (tmp_path / "labels.txt").write_text("".join(f"{i}: {n}\n" for i, n in names459.items()))
    (tmp_path / "59_labels.txt").write_text("".join(f"{i}: {n}\n" for i, n in enumerate(NAMES59, 1)))
    return tmp_path / "labels.txt", tmp_path / "59_labels.txt"


def naive_chained_remap(label_map, lut):
    """BLPSeg's in-place sequential relabelling (the bug): for i = 0..459, pixels equal to i ← m[i]."""
    out = label_map.copy()
    for i in range(460):
        out[out == i] = lut[i]
    return out


def test_every_class_keeps_its_own_index_unlike_the_chained_remap(label_files):
    lut = load_lut(*label_files)
    assert lut.dtype == np.uint8 and lut.size >= 460
    assert ID_OF["aeroplane"] == 2 and ID_OF["bag"] == 9 and ID_OF["bed"] == 18 and ID_OF["bicycle"] == 23
    ids = np.array([ID_OF[n] for n in NAMES59] + [0, 1, 3, 459], dtype=np.int64).reshape(1, -1)
    out = remap(ids, lut)
    assert out[0, :59].tolist() == list(range(1, 60))     # every one of the 59 classes keeps its own index
    assert out[0, 59:].tolist() == [0, 0, 0, 0]           # everything else is background
    naive = naive_chained_remap(ids, lut)
    bag, bed, bedclothes, bench = (NAMES59.index(n) for n in ("bag", "bed", "bedclothes", "bench"))
    assert naive[0, bag] == 0 and naive[0, bedclothes] == 0          # bag → 21 → 0
    assert naive[0, bed] == 2 and naive[0, bench] == 2               # bed → 22 → 23 → 2 (bicycle)
    assert out[0, bag] == 21 and out[0, bed] == 22 and out[0, bedclothes] == 52 and out[0, bench] == 23


def test_parsing_errors_and_meta(label_files, tmp_path):
    names = read_label_names(label_files[1])
    assert names[1] == "aeroplane" and len(names) == 59
    meta = context_meta(label_files[1])
    assert meta.num_classes == 60 and meta.classes[0] == "background" and meta.classes[21] == "bag"
    (tmp_path / "bad.txt").write_text("1: a\noops\n")
    with pytest.raises(DataError, match=r"bad\.txt:2"):
        read_label_names(tmp_path / "bad.txt")
    with pytest.raises(DataError, match="unicorn"):
        build_lut({1: "a"}, {1: "unicorn"})
    with pytest.raises(ValueError, match="outside"):
        remap(np.array([[460]]), build_lut({1: "a"}, {1: "a"}))


def test_convert_mat_folder(label_files, tmp_path):
    mats, out = tmp_path / "mats", tmp_path / "out"
    mats.mkdir()
    lm = np.zeros((6, 7), dtype=np.uint16)
    lm[1, :] = ID_OF["bed"]
    lm[2, :] = ID_OF["wood"]
    lm[3, :] = 5                                          # a non-59 class
    scipy.io.savemat(mats / "2008_000001.mat", {"LabelMap": lm})
    scipy.io.savemat(mats / "nolabel.mat", {"Other": lm})
    (mats / "corrupt.mat").write_bytes(b"garbage")
    n_ok, n_skip, problems = convert_context_folder(mats, *label_files, out)
    assert (n_ok, n_skip) == (1, 2) and any("nolabel.mat" in p for p in problems)
    res = read_label(out / "2008_000001.png")
    assert res[1].tolist() == [22] * 7 and res[2].tolist() == [59] * 7 and res[3].tolist() == [0] * 7
    assert set(np.unique(res)) == {0, 22, 59}


# ---- Context class order shared by the scribble rasteriser and the 60-class lookup table (spec §1.2–1.3) ----

from weakseg.data.scribble_xml import (  # noqa: E402
    CONTEXT_SCRIBBLE_TAGS, context_tag_table, convert_scribble_folder, read_class_list,
)

BAG_XML = ("<annotation><size><width>6</width><height>4</height></size><polygon><tag>bag</tag>"
           "<point><X>0</X><Y>1</Y></point><point><X>5</X><Y>1</Y></point></polygon><polygon><tag>table</tag>"
           "<point><X>0</X><Y>3</Y></point><point><X>2</X><Y>3</Y></point></polygon></annotation>")


def test_tag_table_in_the_blpseg_order_equals_the_hard_coded_table(label_files):
    assert context_tag_table(label_files[1]) == CONTEXT_SCRIBBLE_TAGS
    assert read_class_list(label_files[1])[:3] == ("background", "aeroplane", "bicycle")


def test_scribbles_and_labels_share_one_order_when_59_labels_is_alphabetical(tmp_path):
    """mmsegmentation's 59-class order is alphabetical (aeroplane, bag, bed, …); BLPSeg's hard-coded tag order would
    then give every scribble another class than the ground truth. Both must come from the same list."""
    alpha = sorted(n if n != "table" else "diningtable" for n in NAMES59)
    names459 = {i: f"thing{i}" for i in range(1, 460)}
    names459.update({ID_OF[n if n != "diningtable" else "table"]: n for n in alpha})
    (tmp_path / "labels.txt").write_text("".join(f"{i}: {n}\n" for i, n in names459.items()))
    (tmp_path / "59_labels.txt").write_text("".join(f"{i}: {n}\n" for i, n in enumerate(alpha, 1)))
    root = tmp_path / "Context"
    mats, xmls = tmp_path / "mats", tmp_path / "xml"
    mats.mkdir()
    xmls.mkdir()
    lm = np.zeros((4, 6), dtype=np.uint16)
    lm[1, :] = ID_OF["bag"]
    lm[3, :3] = ID_OF["table"]
    scipy.io.savemat(mats / "2008_000002.mat", {"LabelMap": lm})
    (xmls / "2008_000002.xml").write_text(BAG_XML)
    from weakseg.cli import main as cli_main

    assert cli_main(["data", "context", "--mat-dir", str(mats), "--labels", str(tmp_path / "labels.txt"),
                     "--labels59", str(tmp_path / "59_labels.txt"), "--out", str(root / "SegmentationClassContext")]) == 0
    # no --classes: the classes.txt that `data context` wrote next to the labels is used
    assert cli_main(["data", "scribbles", "--xml", str(xmls), "--out", str(root / "pascal_context_scribble"),
                     "--dataset", "context"]) == 0
    gt = read_label(root / "SegmentationClassContext" / "2008_000002.png")
    scrib = read_label(root / "pascal_context_scribble" / "2008_000002.png")
    assert gt[1, 0] == alpha.index("bag") + 1 == 2 and gt[3, 0] == alpha.index("diningtable") + 1
    assert np.array_equal(scrib[1], gt[1]) and np.array_equal(scrib[3, :3], gt[3, :3])   # same ids, same order
    assert CONTEXT_SCRIBBLE_TAGS["bag"] == 21                                            # the hard-coded order differs


def test_class_list_mismatches_name_both_files(label_files, tmp_path):
    xmls = tmp_path / "xml"
    xmls.mkdir()
    (xmls / "a.xml").write_text(BAG_XML)
    short = tmp_path / "short.txt"
    short.write_text("".join(f"{n}\n" for n in ("background",) + NAMES59[:-1]))          # no "wood"
    with pytest.raises(DataError, match=r"short\.txt and the ScribbleSup Context tag list .*'wood' matches no class"):
        context_tag_table(short)
    with pytest.raises(DataError, match="pass --classes"):
        convert_scribble_folder(xmls, tmp_path / "root" / "scribbles", dataset="context")
    root = tmp_path / "root"
    root.mkdir()
    (root / "classes.txt").write_text("".join(f"{n}\n" for n in ("background",) + NAMES59))
    swapped = list(NAMES59)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    (tmp_path / "59_swapped.txt").write_text("".join(f"{i}: {n}\n" for i, n in enumerate(swapped, 1)))
    with pytest.raises(DataError, match=r"59_swapped\.txt and .*classes\.txt list the Context classes in different "
                                        r"orders \(first difference at index 1\)"):
        convert_scribble_folder(xmls, root / "scribbles", dataset="context", classes=tmp_path / "59_swapped.txt")
    n_ok, n_skip, _ = convert_scribble_folder(xmls, root / "scribbles", dataset="context", classes=label_files[1])
    assert (n_ok, n_skip) == (1, 0)
