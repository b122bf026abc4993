"""`weakseg demo`: the demo data generator, the report helpers, the single progress bar and one end-to-end run."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest

from weakseg.cli import main
from weakseg.data.synth_demo import (DEMO_CLASSES, generate_synth_demo, generate_synth_demo_web, render_demo_image,
                                     render_demo_web_image)
from weakseg.engine import demo
from weakseg.engine.report import markdown_table_html, svg_bar_chart, tag_picture
from weakseg.utils.io import read_label


def test_demo_images_are_large_objects_of_known_classes():
    sizes, counts = [], []
    for i in range(40):
        rng = np.random.default_rng(i)
        image, label = render_demo_image(64, rng)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and label.shape == (64, 64)
        present = set(np.unique(label).tolist()) - {0}
        assert present and present <= set(range(1, len(DEMO_CLASSES)))
        counts.append(len(present))
        sizes.append((label > 0).mean())
    # "fewer, larger objects": 1-2 classes per image, objects covering a tenth of the image or more on average
    assert max(counts) <= 2 and np.mean(sizes) > 0.1


def test_demo_generator_writes_the_benchmark_layout_deterministically(tmp_path):
    a = generate_synth_demo(tmp_path / "a", num_images=6, size=48, seed=3)
    generate_synth_demo(tmp_path / "b", num_images=6, size=48, seed=3)
    assert (a["num_train"], a["num_val"]) == (5, 1)
    ids = (tmp_path / "a" / "ImageSets/Segmentation/train.txt").read_text().split()
    tags = json.loads((tmp_path / "a" / "tags.json").read_text())
    for sid in ids:
        for sub in ("JPEGImages", "SegmentationClass", "Scribbles"):
            a_file, b_file = tmp_path / "a" / sub / f"{sid}.png", tmp_path / "b" / sub / f"{sid}.png"
            assert a_file.read_bytes() == b_file.read_bytes()
        label = read_label(tmp_path / "a" / "SegmentationClass" / f"{sid}.png")
        scrib = read_label(tmp_path / "a" / "Scribbles" / f"{sid}.png")
        assert tags[sid] == sorted(set(np.unique(label).tolist()) | {0})
        marked = scrib != 255
        assert marked.any() and np.array_equal(scrib[marked], label[marked])  # strokes never leave their class
    assert (tmp_path / "a" / "classes.txt").read_text().split() == list(DEMO_CLASSES)


def test_demo_web_images_show_only_their_class():
    rng = np.random.default_rng(5)
    for cls in range(1, len(DEMO_CLASSES)):
        image, mask = render_demo_web_image(cls, 64, rng)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert set(np.unique(mask).tolist()) == {0, cls} and (mask == cls).mean() > 0.03
        _, empty = render_demo_web_image(cls, 64, rng, off_topic=True)
        assert not empty.any()


def test_demo_web_set_is_indexed_as_a_folders_web_set(tmp_path):
    from weakseg.data.meta import DatasetMeta
    from weakseg.data.web import index_web_images

    a = generate_synth_demo_web(tmp_path / "a", num_images=10, size=48, seed=1, noise_fraction=0.5)
    generate_synth_demo_web(tmp_path / "b", num_images=10, size=48, seed=1, noise_fraction=0.5)
    assert a["num_train"] == 10 and 0 < a["off_topic"] < 10
    for f in sorted((tmp_path / "a" / "web").rglob("*.png")):
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes()
    meta = DatasetMeta(tuple((tmp_path / "a" / "classes.txt").read_text().split()))
    summary = index_web_images(tmp_path / "a" / "web", meta, layout="folders", out=None)
    assert summary.per_class == {c: 2 for c in range(1, len(DEMO_CLASSES))}
    with pytest.raises(ValueError, match="size >= 32"):  # checked before anything is written
        generate_synth_demo_web(tmp_path / "c", num_images=10, size=16)
    assert not (tmp_path / "c").exists()


def test_every_demo_preset_loads_with_the_demo_overrides(tmp_path):
    """Each entry's preset validates with the overrides `weakseg demo` gives it; WebCoseg gets the web set's root."""
    for entry in demo.DEMO_ENTRIES:
        web = tmp_path / "data_web" if entry.web else None
        overrides = demo.entry_overrides(entry, tmp_path, tmp_path / "data", tmp_path / "data", False, web)
        cfg = demo.load_config(demo.configs_dir() / entry.preset, overrides)
        assert cfg.method.name == entry.key and cfg.schedule.iters == 200
        if entry.web:
            assert cfg.method.web.root == str((tmp_path / "data_web" / "web").resolve())
    assert [e.key for e in demo.DEMO_ENTRIES][0] == "full"
    assert set(demo.DEMO_DATA) >= {e.data for e in demo.DEMO_ENTRIES} | {e.web for e in demo.DEMO_ENTRIES if e.web}


def test_data_synth_cli_variant_demo(tmp_path, capsys):
    assert main(["data", "synth", "--variant", "demo", "--out", str(tmp_path / "d"), "--num", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("synth: 4 train + 1 val images of 64x64 (variant demo")
    assert (tmp_path / "d" / "classes.txt").read_text().split() == list(DEMO_CLASSES)


def test_svg_bar_chart_bar_lengths_are_proportional():
    svg = svg_bar_chart([("full", 0.8), ("weak <a>", 0.4)], reference=0.68, width=460, label_width=160)
    # plot width = 460 - 160 (labels) - 60 (value text) = 240 px for 100 %
    widths = [float(w) for w in re.findall(r'<rect [^>]*width="([0-9.]+)"', svg)]
    assert widths == [192.0, 96.0]
    assert "weak &lt;a&gt;" in svg and "<a>" not in svg  # labels are escaped
    assert 'x1="323.2"' in svg  # the dashed reference line at 160 + 0.68 × 240


def test_markdown_table_html_keeps_cells_alignment_and_bold():
    html = markdown_table_html("| run | mIoU |\n|---|---:|\n| a<b | **81.5** |\n")
    assert '<th style="text-align:right">mIoU</th>' in html
    assert '<td style="text-align:left">a&lt;b</td><td style="text-align:right"><b>81.5</b></td>' in html


def test_tag_picture_shows_one_chip_per_foreground_tag():
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[2], palette[4] = (10, 200, 30), (200, 10, 30)
    pic = tag_picture([0, 2, 4], DEMO_CLASSES, palette, 64, 80)
    assert pic.shape == (64, 80, 3)
    assert (pic == (10, 200, 30)).all(-1).sum() > 20 and (pic == (200, 10, 30)).all(-1).sum() > 20


def _record(key, label, saw, miou, seconds=60.0):
    return {"key": key, "label": label, "saw": saw, "metrics": {"miou": miou, "iou": [miou] * len(DEMO_CLASSES)},
            "seconds": seconds, "stage_seconds": {}, "predictions": "/nonexistent", "kind": "train",
            "iterations": 200}


def test_results_table_ratio_to_full_supervision():
    table = demo.results_markdown([_record("full", "full supervision", "masks", 0.80),
                                   _record("partial_ce", "partial CE", "scribbles", 0.72, 90.0)])
    assert "| full supervision | masks | **80.0** | 1.00 (bound) | 1.0 |" in table
    assert "| partial CE | scribbles | **72.0** | 0.90 | 1.5 |" in table


def test_results_table_marks_the_baseline_and_the_chart_colours_rows_by_role():
    baseline = dict(_record("partial_ce", "partial CE", "scribbles", 0.68), role="baseline")
    method = dict(_record("blpseg", "BLPSeg", "scribbles", 0.76), role="method")
    table = demo.results_markdown([dict(_record("full", "full supervision", "masks", 0.80), role="bound"),
                                   baseline, method])
    assert "| partial CE | scribbles | **68.0** | 0.85 (baseline) | 1.0 |" in table
    assert "| BLPSeg | scribbles | **76.0** | 0.95 | 1.0 |" in table
    assert [e.role for e in demo.DEMO_ENTRIES[:2]] == ["bound", "baseline"]
    assert {e.role for e in demo.DEMO_ENTRIES[2:]} == {"method"}
    svg = svg_bar_chart([("a", 0.5), ("b", 0.4)], colours=["#111111", "#222222"])
    assert svg.index('fill="#111111"') < svg.index('fill="#222222"')
    with pytest.raises(ValueError, match="role 'weak' is not one of bound, baseline, method"):
        demo.DemoEntry("x", "X", "demo/x.yaml", "train", "scribbles", role="weak")
    with pytest.raises(ValueError, match="1 colours for 2 rows"):
        svg_bar_chart([("a", 0.5), ("b", 0.4)], colours=["#111111"])


def test_timing_counts_the_recorded_time_of_reused_entries():
    results = [_record("full", "full supervision", "masks", 0.9, 120.0), _record("bes", "BES", "tags", 0.5, 240.0)]
    results[1]["stage_seconds"] = {"train_cam": 40.0, "train_seg": 200.0, "evaluate": 0.2}
    fresh = demo.timing_markdown(results, data_seconds=6.0, total_seconds=370.0)
    assert fresh.startswith("Where the time went (6.2 min in `weakseg demo`): data generation 6 s")
    assert "BES 240 s (train_cam 40 s, train_seg 200 s)" in fresh  # stages under half a second are left out
    reused = demo.timing_markdown(results, data_seconds=0.0, total_seconds=3.0)
    assert reused.startswith("Where the time went (6.0 min of recorded entry time; this call took 0.1 min")


def test_report_and_readme_section(tmp_path):
    data = tmp_path / "data"
    generate_synth_demo(data, num_images=4, size=32, seed=0)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- demo-results -->\nold table\n<!-- /demo-results -->\nrest\n")
    results = [_record("full", "full supervision", "masks", 0.9), _record("bes", "BES", "tags", 0.8)]
    page = demo.write_demo_report(tmp_path / "out", data, results, readme=readme)
    html = page.read_text()
    assert "<svg" in html and "grid.png" in html and "<b>80.0</b>" in html and "0.89" in html
    assert (tmp_path / "out" / "grid.png").stat().st_size > 0
    text = readme.read_text()
    assert text.startswith("intro\n<!-- demo-results -->\n") and text.endswith("<!-- /demo-results -->\nrest\n")
    assert "old table" not in text and "| BES | tags | **80.0** | 0.89 |" in text


def test_one_bar_folds_the_nested_bars(capsys):
    """Inside an entry, tqdm bars of the nested runs move the demo's bar instead of drawing their own."""
    import tqdm

    entries = [demo.DemoEntry("a", "A", "x.yaml", "train", "masks", weight=1.0),
               demo.DemoEntry("b", "B", "y.yaml", "train", "tags", weight=3.0)]
    bar = demo._DemoBar(entries, enabled=True)
    with bar.entry(0, entries[0], expected_bars=2):
        inner = tqdm.tqdm(total=10, desc="train")
        for _ in range(5):
            inner.update(1)
        assert bar.bar.n == pytest.approx(25.0)  # half of the first of two bars of a 100-unit entry
        inner.close()
        for _ in tqdm.tqdm(range(4), desc="eval"):
            pass
        print("a log line", file=sys.stderr)
        assert bar.bar.n <= 100.0
    assert bar.bar.n == pytest.approx(100.0)
    with bar.entry(1, entries[1], expected_bars=1):
        assert "B" in bar.bar.desc
    assert bar.bar.n == pytest.approx(400.0)
    bar.close()
    err = capsys.readouterr().err
    assert "a log line" in err and "train:" not in err.replace("A: train", "")


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path, capsys):
    """`weakseg demo --quick`: demo data, the quick entries, an HTML page and a Markdown report; full supervision,
    the upper bound, is not below any weak method. (The quick entries are full supervision and partial CE: at
    QUICK_ITERS iterations dense masks lead scribbles by ~9 mIoU, so this does not hold by luck of one seed.)"""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    printed = capsys.readouterr().out
    page = out / "report.html"
    assert str(page.resolve()) in printed
    html = page.read_text()
    assert "<svg" in html and "Not run by --quick" in html and (out / "grid.png").stat().st_size > 0
    results = json.loads((out / "results.json").read_text())
    quick = [e.key for e in demo.DEMO_ENTRIES if e.quick]
    assert list(results) == quick and quick[0] == "full"
    miou = {k: r["metrics"]["miou"] for k, r in results.items()}
    assert all(0.0 < v <= 1.0 for v in miou.values())
    assert all(miou["full"] >= v for v in miou.values()), miou
    report = (out / "report.md").read_text()
    assert all(f"| {r['label']} |" in report for r in results.values())
