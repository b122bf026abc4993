"""``weakseg data …`` sub-commands, driven through their argparse definitions."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import scipy.io

from weakseg.cli.data import add_data_commands, run_data_command
from weakseg.utils.io import read_label, save_label_png


def run(argv, capsys):
    parser = argparse.ArgumentParser(prog="weakseg")
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", *argv])
    rc = run_data_command(args)
    out = capsys.readouterr()
    return rc, out.out.strip(), out.err


def test_synth_simulate_and_image_labels(tmp_path, capsys):
    root = tmp_path / "synth"
    rc, out, _ = run(["synth", "--out", str(root), "--num", "5", "--size", "64", "--seed", "1"], capsys)
    assert rc == 0 and out.startswith("synth: 4 train + 1 val images of 64x64") and str(root) in out
    assert len(out.splitlines()) == 1
    rc, out, _ = run(["simulate-scribbles", "--root", str(root), "--list", "ImageSets/Segmentation/train.txt",
                      "--out", "sim", "--shrink", "0.3", "--drop", "0.0", "--seed", "2", "--width", "1"], capsys)
    assert rc == 0 and out.startswith("simulate-scribbles: 4 written, 0 skipped")
    train = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    sim = read_label(root / "sim" / f"{train[0]}.png")
    lab = read_label(root / "SegmentationClass" / f"{train[0]}.png")
    assert (sim[sim != 255] == lab[sim != 255]).all() and (sim != 255).any()
    # --reach adds excursions to the same strokes: a superset of the pixels, still on their own class
    rc, out, _ = run(["simulate-scribbles", "--root", str(root), "--list", "ImageSets/Segmentation/train.txt",
                      "--out", "sim-reach", "--shrink", "0.3", "--seed", "2", "--width", "1", "--reach", "1"], capsys)
    assert rc == 0
    reach = read_label(root / "sim-reach" / f"{train[0]}.png")
    assert ((sim != 255) <= (reach != 255)).all() and (reach[reach != 255] == lab[reach != 255]).all()
    rc, out, _ = run(["image-labels", "--root", str(root), "--list", "ImageSets/Segmentation/val.txt",
                      "--source", "label", "--out", str(tmp_path / "tags.json")], capsys)
    assert rc == 0 and out.startswith("image-labels: 1 ids from label, 0 skipped")
    tags = json.loads((tmp_path / "tags.json").read_text())
    assert tags == {k: v for k, v in json.loads((root / "tags.json").read_text()).items() if k in tags}


def test_trainaug_and_errors(tmp_path, capsys):
    for sid in ("a", "b", "c"):
        save_label_png(tmp_path / "SegmentationClassAug" / f"{sid}.png", np.zeros((2, 2), np.uint8))
    (tmp_path / "ImageSets/Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets/Segmentation/val.txt").write_text("b\n")
    rc, out, _ = run(["trainaug", "--root", str(tmp_path)], capsys)
    assert rc == 0 and out == f"train_aug: 2 ids -> {tmp_path / 'ImageSets/Segmentation/train_aug.txt'}"
    rc, _, err = run(["trainaug", "--root", str(tmp_path / "nope")], capsys)
    assert rc == 2 and "SegmentationClassAug" in err


def test_scribbles_and_context(tmp_path, capsys):
    xml_dir = tmp_path / "xml"
    xml_dir.mkdir()
    (xml_dir / "x.xml").write_text("<annotation><size><width>8</width><height>6</height></size><polygon><tag>cat</tag>"
                                   "<point><X>0</X><Y>2</Y></point><point><X>7</X><Y>2</Y></point></polygon>"
                                   "</annotation>")
    (xml_dir / "y.xml").write_text("<annotation>")
    rc, out, err = run(["scribbles", "--xml", str(xml_dir), "--out", str(tmp_path / "png"), "--line-width", "3"],
                       capsys)
    assert rc == 0 and out.startswith("scribbles: 1 converted, 1 skipped (line width 3, voc)") and "y.xml" in err
    assert np.count_nonzero(read_label(tmp_path / "png" / "x.png") == 8) == 24
    (tmp_path / "labels.txt").write_text("1: accordion\n2: aeroplane\n3: bag\n")
    (tmp_path / "59.txt").write_text("1: aeroplane\n2: bag\n")
    mats = tmp_path / "mats"
    mats.mkdir()
    scipy.io.savemat(mats / "m.mat", {"LabelMap": np.array([[1, 2, 3]], dtype=np.uint16)})
    rc, out, _ = run(["context", "--mat-dir", str(mats), "--labels", str(tmp_path / "labels.txt"),
                      "--labels59", str(tmp_path / "59.txt"), "--out", str(tmp_path / "ctx")], capsys)
    assert rc == 0 and out.startswith("context: 1 converted, 0 skipped")
    assert read_label(tmp_path / "ctx" / "m.png").tolist() == [[0, 1, 2]]


def test_bad_arguments_are_rejected(capsys):
    with pytest.raises(SystemExit):
        run(["scribbles", "--xml", "a", "--out", "b", "--line-width", "2"], capsys)
