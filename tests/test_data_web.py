"""Web image sets (weakseg.data.web): both layouts, skip counts, the list format, unsafe ids, web masks, CLI."""

from __future__ import annotations

import os

import numpy as np
import pytest

from weakseg.cli import main
from weakseg.data.meta import VOC_META, DatasetMeta
from weakseg.data.web import (LIST_HEADER, WebItem, check_web_masks, group_by_class, index_web_images,
                              read_web_list, read_web_mask)
from weakseg.utils.io import DataError, save_image, save_label_png

META = DatasetMeta(("background", "horse", "dog"))


def _img(seed: int, size=(40, 50)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)


def test_folder_layout_counts_skips_and_round_trips(tmp_path):
    root = tmp_path / "web"
    save_image(root / "horse" / "a.png", _img(0))
    save_image(root / "horse" / "b.png", _img(1))
    save_image(root / "horse" / "tiny.png", _img(2, (10, 50)))  # shorter side 10 < 32
    (root / "horse" / "broken.jpg").write_bytes(b"not an image")
    save_image(root / "dog" / "c.png", _img(3))
    save_image(root / "dog" / "copy_of_a.png", _img(0))  # same pixels as horse/a.png
    save_image(root / "cat" / "x.png", _img(4))  # not a class of META
    (root / "horse" / "notes.txt").write_text("ignored: not an image suffix")

    summary = index_web_images(root, META)
    assert summary.layout == "folders"
    assert summary.skipped == {"unreadable": 1, "tiny": 1, "duplicate": 1, "bad_name": 0, "unknown_class": 1,
                               "outside": 0}
    assert [(it.id, it.class_id) for it in summary.items] == [("horse/a", 1), ("horse/b", 1), ("dog/c", 2)]
    assert summary.per_class == {1: 2, 2: 1}
    text = (root / "web_train_list.txt").read_text().splitlines()
    assert text == [LIST_HEADER, "horse/a.png 1", "horse/b.png 1", "dog/c.png 2"]

    items = read_web_list(root / "web_train_list.txt", root, META.num_classes)
    assert items == summary.items
    assert items[0].path == (root / "horse" / "a.png").resolve()
    assert list(group_by_class(items)) == [1, 2] and len(group_by_class(items)[1]) == 2


def test_flat_layout_and_ready_made_masks(tmp_path):
    root = tmp_path / "web"
    for name in ("13_000001", "13_000002", "12_000007", "99_000001", "holiday"):
        save_image(root / "web_images" / f"{name}.jpg", _img(hash(name) % 1000))
    summary = index_web_images(root, VOC_META)
    assert summary.layout == "flat"
    assert summary.skipped["bad_name"] == 1 and summary.skipped["unknown_class"] == 1
    assert [(it.id, it.class_id) for it in summary.items] == [
        ("web_images/12_000007", 12), ("web_images/13_000001", 13), ("web_images/13_000002", 13)]

    labels = tmp_path / "web_labels"
    good = np.zeros((40, 50), np.uint8)
    good[5:20, 5:30], good[0, 0] = 13, 255
    save_label_png(labels / "13_000001.png", good)
    save_label_png(labels / "13_000002.png", np.zeros((41, 50), np.uint8))  # wrong size
    wrong = np.zeros((40, 50), np.uint8)
    wrong[3, 3] = 7  # another class
    save_label_png(labels / "12_000007.png", wrong)
    items = {it.id: it for it in summary.items}
    assert np.array_equal(read_web_mask(labels, items["web_images/13_000001"], flat=True), good)
    ok, problems = check_web_masks(labels, summary.items, flat=True)
    assert [it.id for it in ok] == ["web_images/13_000001"]
    assert len(problems) == 2
    assert any("differs from the image" in p for p in problems) and any("values [7]" in p for p in problems)
    with pytest.raises(DataError, match="not found"):
        read_web_mask(tmp_path / "nowhere", items["web_images/12_000007"], flat=True)


@pytest.mark.parametrize("line", ["../outside.png 1", "/etc/passwd 1", "horse/../../x.png 1", "a\\b.png 1"])
def test_unsafe_ids_refused(tmp_path, line):
    root = tmp_path / "web"
    save_image(root / "horse" / "a.png", _img(0))
    save_image(tmp_path / "outside.png", _img(1))
    (root / "list.txt").write_text(f"horse/a.png 1\n{line}\n")
    with pytest.raises(DataError, match="list.txt:2"):
        read_web_list(root / "list.txt", root)


def test_symlink_out_of_the_root_refused_and_skipped(tmp_path):
    root = tmp_path / "web"
    save_image(root / "horse" / "a.png", _img(0))
    save_image(tmp_path / "secret.png", _img(1))
    os.symlink(tmp_path / "secret.png", root / "horse" / "link.png")
    summary = index_web_images(root, META)
    assert summary.skipped["outside"] == 1 and [it.id for it in summary.items] == ["horse/a"]
    (root / "list.txt").write_text("horse/link.png 1\n")
    with pytest.raises(DataError, match="outside the web root"):
        read_web_list(root / "list.txt", root)
    with pytest.raises(DataError, match="'..' are not allowed"):
        read_web_mask(root, WebItem("horse/../../secret", root / "horse" / "a.png", 1))


def test_bad_lines_and_empty_sets(tmp_path):
    root = tmp_path / "web"
    save_image(root / "horse" / "a.png", _img(0))
    for text, match in [("horse/a.png\n", "expected"), ("horse/a.png 5\n", "outside 1..2"),
                        ("horse/b.png 1\n", "not found"), ("horse/a.png 1\nhorse/a.png 1\n", "duplicate"),
                        ("# nothing\n", "empty")]:
        (root / "l.txt").write_text(text)
        with pytest.raises(DataError, match=match):
            read_web_list(root / "l.txt", root, META.num_classes)
    (tmp_path / "empty" / "horse").mkdir(parents=True)
    with pytest.raises(DataError, match="no usable web image"):
        index_web_images(tmp_path / "empty", META)


def test_cli_synth_web_then_index(tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(["data", "synth", "--variant", "web", "--out", str(out), "--num", "14", "--size", "48"]) == 0
    assert len(list((out / "web").rglob("*.png"))) == 14 and len(list((out / "masks").rglob("*.png"))) == 14
    assert main(["data", "web", "--root", str(out / "web"), "--classes", str(out / "classes.txt")]) == 0
    assert "web: 14 images of 7 classes (folders layout), skipped: none" in capsys.readouterr().out
    items = read_web_list(out / "web" / "web_train_list.txt", out / "web", 8)
    assert {it.class_id for it in items} == set(range(1, 8))
    assert main(["data", "web", "--root", str(out / "web"), "--classes", str(tmp_path / "missing.txt")]) == 2
