"""ScribbleSup XML → PNG (spec §1.2, check §6b.1): DDA lines, widths, clamping, overwrite order, safety."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from weakseg.data.scribble_xml import (
    CONTEXT_SCRIBBLE_TAGS, VOC_SCRIBBLE_TAGS, convert_scribble_folder, line_pixels, parse_scribble_xml,
    rasterize_strokes,
)
from weakseg.utils.io import DataError, read_label, save_image


def xml(strokes, h=20, w=30):
    polys = "".join(
        "<polygon><tag>{}</tag>{}</polygon>".format(
            tag, "".join(f"<point><X>{c}</X><Y>{r}</Y></point>" for r, c in pts))
        for tag, pts in strokes)
    return (f"<annotation><filename>a.jpg</filename><size><width>{w}</width><height>{h}</height></size>"
            f"<segmented>1</segmented>{polys}</annotation>")


def test_tag_tables_match_the_spec():
    assert len(VOC_SCRIBBLE_TAGS) == 21 and len(CONTEXT_SCRIBBLE_TAGS) == 60
    assert VOC_SCRIBBLE_TAGS["background"] == 0 and VOC_SCRIBBLE_TAGS["plane"] == 1
    assert VOC_SCRIBBLE_TAGS["table"] == 11 and VOC_SCRIBBLE_TAGS["monitor"] == 20
    assert CONTEXT_SCRIBBLE_TAGS["bag"] == 21 and CONTEXT_SCRIBBLE_TAGS["curtain"] == 42
    assert CONTEXT_SCRIBBLE_TAGS["bedclothes"] == 52 and CONTEXT_SCRIBBLE_TAGS["wood"] == 59
    assert all(CONTEXT_SCRIBBLE_TAGS[t] == i for t, i in VOC_SCRIBBLE_TAGS.items())


@pytest.mark.parametrize("p1, p2", [((0, 0), (5, 3)), ((2, 17), (13, 4)), ((10, 1), (3, 25)), ((4, 4), (4, 4)),
                                    ((7, 7), (8, 8))])
def test_diagonal_stroke_marks_max_delta_plus_one_pixels(p1, p2):
    out = rasterize_strokes([("bird", np.array([p1, p2]))], 20, 30, VOC_SCRIBBLE_TAGS)
    m = max(abs(p2[0] - p1[0]), abs(p2[1] - p1[1]))
    assert np.count_nonzero(out == 3) == m + 1
    assert np.count_nonzero(out == 255) == 20 * 30 - (m + 1)
    assert out[p1] == 3 and out[p2] == 3


def test_dda_truncates_toward_zero():
    # (0,0) → (5,3): m = 5, rows i, cols trunc(3i/5) = 0,0,1,1,2, plus the endpoint (5,3)
    pix = {tuple(p) for p in line_pixels(0, 0, 5, 3)}
    assert pix == {(0, 0), (1, 0), (2, 1), (3, 1), (4, 2), (5, 3)}


def test_background_overwrite_order_and_clamping():
    strokes = [("cat", np.array([[5, 0], [5, 29]])), ("background", np.array([[0, 10], [19, 10]])),
               ("dog", np.array([[-4, 20], [40, 20]]))]      # rows outside the image are clamped
    out = rasterize_strokes(strokes, 20, 30, VOC_SCRIBBLE_TAGS)
    assert out[5, 10] == 0                                   # the later background stroke overwrites the cat
    assert out[5, 5] == 8 and out[5, 20] == 12
    assert (out[:, 20] == 12).all() and (out[:, 10] == 0).all()
    assert np.count_nonzero(out != 255) == 30 + 20 + 20 - 2


def test_line_width_three_is_the_dilated_line():
    strokes = [("bird", np.array([[10, 5], [10, 25]]))]
    thin = rasterize_strokes(strokes, 20, 30, VOC_SCRIBBLE_TAGS, line_width=1)
    wide = rasterize_strokes(strokes, 20, 30, VOC_SCRIBBLE_TAGS, line_width=3)
    assert np.count_nonzero(thin == 3) == 21 and np.count_nonzero(wide == 3) == 3 * 23
    assert (wide[9:12, 4:27] == 3).all()
    corner = rasterize_strokes([("bird", np.array([[0, 0]]))], 20, 30, VOC_SCRIBBLE_TAGS, line_width=3)
    assert np.count_nonzero(corner == 3) == 4                # clipped at the image corner


def test_unknown_tag_names_file_and_tag(tmp_path):
    p = tmp_path / "a.xml"
    p.write_text(xml([("unicorn", [(1, 1), (2, 2)])]))
    h, w, strokes = parse_scribble_xml(p)
    with pytest.raises(DataError, match=r"a\.xml.*'unicorn'"):
        rasterize_strokes(strokes, h, w, VOC_SCRIBBLE_TAGS, source=str(p))


def test_parse_and_size_checks(tmp_path):
    p = tmp_path / "a.xml"
    p.write_text(xml([("plane", [(1, 2), (3, 4), (5, 6)]), ("sky", [(0, 0)])]))
    h, w, strokes = parse_scribble_xml(p)
    assert (h, w) == (20, 30) and [t for t, _ in strokes] == ["plane", "sky"]
    assert strokes[0][1].tolist() == [[1, 2], [3, 4], [5, 6]]
    save_image(tmp_path / "a.jpg", np.zeros((20, 31, 3), np.uint8))
    with pytest.raises(DataError, match=r"differs from image"):
        parse_scribble_xml(p, image_path=tmp_path / "a.jpg")
    p.write_text(xml([], h=0, w=30))
    with pytest.raises(DataError, match="outside"):
        parse_scribble_xml(p)
    p.write_text(xml([], h=10**6, w=30))
    with pytest.raises(DataError, match="outside"):
        parse_scribble_xml(p)


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<annotation><size><width>3</width><height>3</height></size><polygon><tag>&lol3;</tag></polygon></annotation>"""

EXTERNAL = """<?xml version="1.0"?><!DOCTYPE a [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<annotation><size><width>3</width><height>3</height></size><polygon><tag>&xxe;</tag></polygon></annotation>"""


@pytest.mark.parametrize("text", [BILLION_LAUGHS, EXTERNAL])
def test_entity_attacks_are_refused(tmp_path, text):
    p = tmp_path / "evil.xml"
    p.write_text(text)
    with pytest.raises(DataError, match=r"evil\.xml.*DOCTYPE"):
        parse_scribble_xml(p)
    p.write_bytes(text.encode("utf-16"))                     # a re-encoded file must not slip past the check
    with pytest.raises(DataError, match="UTF-8"):
        parse_scribble_xml(p)


def test_convert_folder_skips_bad_files_and_counts(tmp_path):
    src, out = tmp_path / "xml", tmp_path / "png"
    src.mkdir()
    (src / "ok1.xml").write_text(xml([("person", [(2, 2), (2, 12)]), ("background", [(15, 0), (15, 29)])]))
    (src / "ok2.xml").write_text(xml([("monitor", [(0, 0), (19, 29)])]))
    (src / "broken.xml").write_text("<annotation><size><width>3</width>")
    (src / "evil.xml").write_text(BILLION_LAUGHS)
    (src / "badtag.xml").write_text(xml([("spaceship", [(1, 1)])]))
    n_ok, n_skip, problems = convert_scribble_folder(src, out, dataset="voc", line_width=3)
    assert (n_ok, n_skip) == (2, 3)
    assert sorted(p.split(":")[0].rsplit("/", 1)[-1] for p in problems) == ["badtag.xml", "broken.xml", "evil.xml"]
    lab = read_label(out / "ok1.png")
    assert lab.shape == (20, 30) and set(np.unique(lab)) == {0, 15, 255}
    assert (lab[1:4, 1:14] == 15).all() and (lab[14:17, :] == 0).all()
    assert sorted(p.name for p in out.iterdir()) == ["ok1.png", "ok2.png"]   # no temporaries left
    with Image.open(out / "ok2.png") as im:
        assert im.mode == "P"
