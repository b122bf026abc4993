"""CVAT XML and Label Studio JSON scribble imports: coordinates → pixels by hand, line widths, ids, safety."""

from __future__ import annotations

import json

import numpy as np
import pytest

from weakseg.annotate.store import open_store
from weakseg.cli import main
from weakseg.data.scribble_import import parse_cvat_xml, parse_label_studio_json, rasterize_import, read_export
from weakseg.utils.io import DataError, read_label, save_image

H, W = 12, 16
TABLE = {"background": 0, "horse": 1}


def cvat(images: str) -> str:
    return f'<?xml version="1.0" encoding="utf-8"?><annotations><version>1.1</version><meta/>{images}</annotations>'


def cvat_image(name="a.jpg", w=W, h=H, shapes=""):
    return f'<image id="0" name="{name}" width="{w}" height="{h}">{shapes}</image>'


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "images"
    for name in ("a", "b"):
        save_image(images / f"{name}.png", np.zeros((H, W, 3), np.uint8))
    (tmp_path / "classes.txt").write_text("background\nhorse\n")
    return tmp_path


def test_cvat_polyline_and_points_by_hand(tmp_path):
    shapes = ('<polyline label="horse" source="manual" occluded="0" points="1.5,2.7;6.2,2.9" z_order="0"/>'
              '<points label="background" points="0.2,9.9;15.9,11.99"/>'
              '<box label="horse" xtl="1" ytl="1" xbr="4" ybr="4"/><polygon label="horse" points="0,0;3,0;3,3"/>')
    path = tmp_path / "annotations.xml"
    path.write_text(cvat(cvat_image("frames/sub/a.jpg", shapes=shapes)))
    (item,) = parse_cvat_xml(path)
    assert item.stem == "a" and item.size == (H, W) and item.ignored == 2 and len(item.strokes) == 3
    out = rasterize_import(item, H, W, TABLE, line_width=1)
    expected = np.full((H, W), 255, np.uint8)
    expected[2, 1:7] = 1           # (row ⌊2.7⌋, col ⌊1.5⌋) → (⌊2.9⌋, ⌊6.2⌋): row 2, cols 1..6
    expected[9, 0] = 0             # dots
    expected[11, 15] = 0
    assert np.array_equal(out, expected)
    wide = rasterize_import(item, H, W, TABLE, line_width=3)
    assert (wide[1:4, 0:8] == 1).all() and np.count_nonzero(wide == 1) == 3 * 8
    assert np.count_nonzero(wide == 0) == 3 * 2 + 2 * 2   # 3×3 squares clipped at the image border


def test_cvat_unsafe_or_malformed_files_are_refused(tmp_path):
    bomb = tmp_path / "bomb.xml"
    bomb.write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxx">]><annotations>&x;</annotations>')
    with pytest.raises(DataError, match="DOCTYPE"):
        parse_cvat_xml(bomb)
    bad = tmp_path / "bad.xml"
    for shapes, match in [('<polyline label="horse" points="1,2;nan,3"/>', "not finite"),
                          ('<polyline label="horse" points="1,2,3"/>', "malformed point")]:
        bad.write_text(cvat(cvat_image(shapes=shapes)))
        with pytest.raises(DataError, match=match):
            parse_cvat_xml(bad)
    bad.write_text(cvat(cvat_image(w=0)))
    with pytest.raises(DataError, match="declared size"):
        parse_cvat_xml(bad)
    bad.write_text("<annotation><size/></annotation>")
    with pytest.raises(DataError, match="not a CVAT export"):
        parse_cvat_xml(bad)


def ls_task(image, results, cancelled=False):
    return {"id": 1, "data": {"image": image}, "annotations": [{"was_cancelled": cancelled, "result": results}]}


def vector(points, label="horse", closed=False, size=(W, H)):
    return {"type": "vectorlabels", "original_width": size[0], "original_height": size[1],
            "value": {"vertices": [{"id": f"p{i}", "x": x, "y": y} for i, (x, y) in enumerate(points)],
                      "closed": closed, "vectorlabels": [label]}}


def keypoint(x, y, label="background"):
    return {"type": "keypointlabels", "value": {"x": x, "y": y, "width": 1, "keypointlabels": [label]}}


def test_label_studio_percent_coordinates_ids_and_ignored_shapes(tmp_path):
    tasks = [
        # x 12.5 % of 16 = col 2, 50 % → col 8; y 25 % of 12 = row 3 → a horizontal stroke, cols 2..8 of row 3
        ls_task("/data/upload/3/0a1b2c3d-a.png", [vector([(12.5, 25.0), (50.0, 25.0)]), keypoint(100.0, 100.0),
                                                  vector([(0, 0), (50, 50), (0, 50)], closed=True),
                                                  {"type": "rectanglelabels", "value": {"x": 1, "y": 1}}]),
        ls_task("/data/local-files/?d=photos%2Fb.png", [vector([(0, 0), (99, 99)])], cancelled=True),
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    a, b = parse_label_studio_json(path)
    assert a.stem == "0a1b2c3d-a" and a.size == (H, W) and a.ignored == 2 and len(a.strokes) == 2
    assert b.stem == "b" and b.strokes == []                       # the cancelled annotation is not read
    out = rasterize_import(a, H, W, TABLE)
    expected = np.full((H, W), 255, np.uint8)
    expected[3, 2:9] = 1
    expected[H - 1, W - 1] = 0                                     # 100 % → the last pixel (clamped)
    assert np.array_equal(out, expected)
    with pytest.raises(DataError, match="differs from the image"):
        rasterize_import(a, H + 1, W, TABLE)


@pytest.mark.parametrize("text, match", [
    ('[{"data": {"image": "a.png"}, "annotations": [{"result": [{"type": "keypointlabels", '
     '"value": {"x": NaN, "y": 1, "keypointlabels": ["horse"]}}]}]}]', "not a JSON number"),
    ("[" * 100000 + "]" * 100000, "cannot read JSON"),
    ('{"data": {}}', "no image URL"),
    ('[{"data": {"image": "a.png"}, "annotations": [{"result": [{"type": "keypointlabels", '
     '"value": {"x": "1e999", "y": 1, "keypointlabels": ["horse"]}}]}]}]', "not finite"),
    ('[{"data": {"image": "a.png"}, "annotations": [{"result": [{"type": "keypointlabels", '
     '"value": {"x": 1, "y": 1, "keypointlabels": ["horse", "background"]}}]}]}]', "exactly one label"),
    ('"just a string"', "list of tasks"),
])
def test_label_studio_untrusted_json_is_refused_with_the_reason(tmp_path, text, match):
    path = tmp_path / "export.json"
    path.write_text(text)
    with pytest.raises(DataError, match=match):
        read_export(path)


def test_import_command_writes_the_annotation_folder_and_merges(folder, capsys):
    out = folder / "labels"
    store, _ = open_store(folder / "images", out, folder / "classes.txt")
    existing = np.full((H, W), 255, np.uint8)
    existing[0, :] = 0
    existing[2, 5] = 0                                             # overwritten by the imported stroke
    store.save("b", existing, [])
    shapes = '<polyline label="horse" points="1,2;6,2"/>'
    xml = folder / "annotations.xml"
    xml.write_text(cvat(cvat_image("b.png", shapes=shapes) + cvat_image("zebra.png")
                        + cvat_image("a.png", shapes='<points label="cat" points="1,1"/>')))
    rc = main(["data", "import-scribbles", str(xml), "--images", str(folder / "images"), "--out", str(out)])
    err = capsys.readouterr()
    assert rc == 0
    assert "1 images imported, 0 without scribbles, 2 skipped" in err.out
    assert "unknown scribble tag 'cat'" in err.err and "no image 'zebra'" in err.err
    label = read_label(out / "Scribbles" / "b.png")
    assert (label[0] == 0).all() and (label[2, 1:7] == 1).all()
    assert np.count_nonzero(label != 255) == W + 6
    assert not (out / "Scribbles" / "a.png").exists()              # an image with a problem is left unchanged
    assert json.loads((out / "tags.json").read_text()) == {"b": [0, 1]}
    assert (out / "ImageSets/Segmentation/train.txt").read_text() == "b\n"
