"""``weakseg demo``: every method of weakseg on built-in data, in minutes on a 2-core CPU, with a report to look at.

The demo generates the *demo* variant of the synthetic data (:mod:`weakseg.data.synth_demo`: an easy task that one
small network learns in a minute; the hard benchmark stays for the ablations), then trains and evaluates each entry
of :data:`DEMO_ENTRIES` with its preset under ``configs/demo/`` (one network and one budget for all), and writes:

- ``report.html``: the mIoU and weak/full ratio per method, a bar chart, the per-class table and a picture grid
  (image, ground truth, the weak labels the methods saw, each method's prediction); self-contained but for the grid;
- ``report.md`` (the same tables, and the grid), ``results.json``, ``grid.png``.

An entry says what it runs (``train``: one ``weakseg train``; ``pipeline``: the stages of ``weakseg run``), what
weak labels it saw, and where its final checkpoint, metrics and validation predictions are, so a method joins the
demo by one entry and one preset. One progress bar covers the whole demo (current method and stage, ETA); the
nested runs' own bars are folded into it. Re-running continues: an entry whose results match its current config is
not trained again, an interrupted one resumes from its checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

import weakseg
from weakseg.data.meta import DatasetMeta
from weakseg.engine.config import config_hash, load_config, to_dict
from weakseg.engine.report import (colorize, comparison_markdown, markdown_table_html, overlay, picture_grid,
                                   svg_bar_chart, tag_picture)
from weakseg.utils import dist as wdist
from weakseg.utils.io import (load_json, read_label, read_rgb, replace_marked_section, save_image, write_json_atomic,
                              write_text_atomic)

log = logging.getLogger("weakseg")

#: bar colours of the report's chart by entry role
_ROLE_COLOURS = {"bound": "#55a868", "baseline": "#8c8c8c", "method": "#4c72b0"}


@dataclass(frozen=True)
class DemoEntry:
    """One row of the demo.

    Attributes:
        key: folder of the run under the demo folder.
        label: name of the row in the report.
        preset: preset path relative to ``configs/``.
        kind: ``train`` (single-stage, :func:`weakseg.engine.trainer.train`) or ``pipeline`` (multi-stage,
            :func:`weakseg.engine.pipeline.run_pipeline`).
        saw: the supervision the method trained on: ``masks``, ``scribbles``, ``tags`` or ``web images``.
        checkpoint: the final checkpoint, relative to the run folder.
        metrics: the validation ``metrics.json``, relative to the run folder.
        predictions: the folder of validation predictions (``<id>.png``), relative to the run folder.
        weight: expected run time relative to full supervision (only the progress bar's ETA uses it).
        quick: run by ``weakseg demo --quick`` too.
        data: which demo dataset it trains on (a key of :data:`DEMO_DATA`; evaluation is always on ``demo``).
        web: a key of :data:`DEMO_DATA` whose ``web/`` folder is the entry's ``method.web.root`` (WebCoseg's web
            images), or empty.
        role: ``bound`` (full supervision: the first entry, the ratios' denominator), ``baseline`` (partial CE: the
            naive use of scribbles, the floor the methods improve on) or ``method`` (one of the four published
            systems; the demo's target is ``method`` rows at ≥ 0.85 × the bound).
    """

    key: str
    label: str
    preset: str
    kind: str
    saw: str
    checkpoint: str = "model_final.pth"
    metrics: str = "eval/metrics.json"
    predictions: str = "eval/predictions"
    weight: float = 1.0
    quick: bool = False
    data: str = "demo"
    web: str = ""
    role: str = "method"

    def __post_init__(self) -> None:
        if self.role not in _ROLE_COLOURS:
            raise ValueError(f"demo entry {self.key}: role {self.role!r} is not one of {', '.join(_ROLE_COLOURS)}")


# Multi-stage entries name their last training stage's checkpoint and the pipeline's `evaluate` stage.
# The first entry is the upper bound: the report's weak/full ratios are relative to it.
DEMO_ENTRIES: tuple[DemoEntry, ...] = (
    DemoEntry("full", "full supervision", "demo/full.yaml", "train", "masks", weight=1.0, quick=True, role="bound"),
    DemoEntry("partial_ce", "partial CE", "demo/partial_ce.yaml", "train", "scribbles", weight=1.0, quick=True,
              role="baseline"),
    DemoEntry("blpseg", "BLPSeg", "demo/blpseg.yaml", "train", "scribbles", weight=1.8),
    DemoEntry("cdsp", "CDSP", "demo/cdsp.yaml", "pipeline", "scribbles", checkpoint="train_seg/model_final.pth",
              metrics="evaluate/metrics.json", predictions="evaluate/predictions", weight=2.5),
    DemoEntry("bes", "BES", "demo/bes.yaml", "pipeline", "tags", checkpoint="train_seg/model_final.pth",
              metrics="evaluate/metrics.json", predictions="evaluate/predictions", weight=2.5),
    DemoEntry("webcoseg", "WebCoseg", "demo/webcoseg.yaml", "pipeline", "tags + web images",
              checkpoint="train_seg/model_final.pth", metrics="evaluate/metrics.json",
              predictions="evaluate/predictions", weight=2.5, web="web"),
)

#: demo data size: (images, side); --quick uses fewer images
DEMO_IMAGES, DEMO_QUICK_IMAGES, DEMO_SIZE = 400, 120, 64
#: web images of the demo classes (WebCoseg): the full demo's and --quick's
DEMO_WEB_IMAGES, DEMO_QUICK_WEB_IMAGES = 100, 50
#: --quick: training iterations of every quick entry. Full supervision and partial CE only: at 60 iterations dense
#: masks lead scribbles by ~9 mIoU (78.8 vs 70.0 measured), while BLPSeg, which learns fast from scribbles, was
#: measured at 80.4, above full supervision's 78.8: it would make the smoke test's "full on top" check a coin toss.
QUICK_ITERS = 60


def _generate_demo(root: Path, quick: bool) -> None:
    from weakseg.data.synth_demo import generate_synth_demo

    generate_synth_demo(root, num_images=DEMO_QUICK_IMAGES if quick else DEMO_IMAGES, size=DEMO_SIZE, seed=0)


def _generate_web(root: Path, quick: bool) -> None:
    from weakseg.data.synth_demo import generate_synth_demo_web

    generate_synth_demo_web(root, num_images=DEMO_QUICK_WEB_IMAGES if quick else DEMO_WEB_IMAGES, size=DEMO_SIZE,
                            seed=0)


#: dataset name → generator(root, quick); an entry's ``data`` or ``web`` names one
DEMO_DATA: dict[str, Callable[[Path, bool], None]] = {"demo": _generate_demo, "web": _generate_web}
#: the file each generator writes last (a dataset whose marker exists is not generated again)
_DATA_DONE = {"demo": Path("ImageSets/Segmentation/val.txt"), "web": Path("README.txt")}


def configs_dir() -> Path:
    """The ``configs/`` folder of the weakseg checkout."""
    path = Path(weakseg.__file__).resolve().parents[1] / "configs"
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: the presets folder is missing; run the demo from a weakseg checkout "
                                f"(pip install -e .)")
    return path


def machine_summary() -> str:
    """One line naming this machine: CPU model, cores, bf16 support, torch version."""
    import torch

    model, bf16 = platform.processor() or platform.machine(), False
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        names = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")]
        model = names[0] if names else model
        bf16 = "avx512_bf16" in text or "amx_bf16" in text
    threads = torch.get_num_threads()
    return (f"{model}, {os.cpu_count()} cores{' (native bf16)' if bf16 else ''}, torch {torch.__version__}, "
            f"{threads} thread{'s' if threads > 1 else ''}")


# ----------------------------------------------------------------------------------------------------------------
# one progress bar for the whole demo


class _DemoBar:
    """The demo's single progress bar, in units of expected work (entry weights × 100).

    Inside :meth:`entry`, every tqdm bar the nested run opens (trainer, pipeline stages, evaluator) is replaced by a
    stand-in that moves this bar within the entry's share: an entry expecting ``k`` inner bars advances by
    1/k of its share per finished bar, and by the fraction done of the open one. Log lines written to stderr meanwhile
    are printed above the bar instead of through it.
    """

    def __init__(self, entries: list[DemoEntry], enabled: bool):
        import tqdm

        self._tqdm_cls = tqdm.tqdm
        self.total = sum(100.0 * e.weight for e in entries)
        self.count = len(entries)
        self.bar = self._tqdm_cls(total=self.total, desc="demo", disable=not enabled, file=sys.stderr,
                                  dynamic_ncols=True, mininterval=1.0,
                                  bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed} elapsed, ETA {remaining}")
        self.done = 0.0

    def _move(self, position: float) -> None:
        position = min(position, self.total)
        if position > self.bar.n:
            self.bar.update(position - self.bar.n)

    @contextlib.contextmanager
    def entry(self, index: int, entry: DemoEntry, expected_bars: int):
        import tqdm

        share = 100.0 * entry.weight
        state = {"closed": 0, "open": None}
        title = f"demo [{index + 1}/{self.count}] {entry.label}"
        self.bar.set_description_str(title)
        demo = self

        class Folded:
            """Stands in for tqdm inside the entry (the subset of its API weakseg uses)."""

            def __init__(self, iterable=None, desc=None, total=None, initial=0, **_kwargs):
                self.iterable, self.n = iterable, initial
                self.total = total if total is not None or iterable is None else len(iterable)
                state["open"] = self
                demo.bar.set_description_str(f"{title}: {desc}" if desc else title, refresh=False)
                self._report()

            def _report(self) -> None:
                frac = self.n / self.total if self.total else 0.0
                part = min((state["closed"] + min(frac, 1.0)) / max(expected_bars, 1), 0.99)
                demo._move(demo.done + share * part)

            def update(self, n: int = 1) -> None:
                self.n += n
                self._report()

            def __iter__(self):
                for item in self.iterable:
                    yield item
                    self.update(1)

            def close(self) -> None:
                if state["open"] is self:
                    state["open"] = None
                    state["closed"] += 1
                    self._report()

            def __enter__(self):
                return self

            def __exit__(self, *exc) -> None:
                self.close()

            def set_postfix(self, *args, **kwargs) -> None:
                pass

            set_description = set_description_str = refresh = clear = set_postfix

            @staticmethod
            def write(s: str, *args, **kwargs) -> None:
                demo._tqdm_cls.write(s, file=demo._stderr)

        self._stderr = sys.stderr
        gate = _LineGate(lambda line: self._tqdm_cls.write(line, file=self._stderr))
        saved = tqdm.tqdm
        tqdm.tqdm, sys.stderr = Folded, gate
        try:
            yield
        finally:
            tqdm.tqdm, sys.stderr = saved, self._stderr
            gate.flush()
        self.done += share
        self._move(self.done)

    def close(self) -> None:
        self.bar.close()


class _LineGate:
    """A stderr stand-in that hands complete lines to ``emit`` (which prints them above the progress bar)."""

    def __init__(self, emit: Callable[[str], None]):
        self.emit, self.buf = emit, ""

    def write(self, text: str) -> int:
        self.buf += text.replace("\r", "\n")
        *lines, self.buf = self.buf.split("\n")
        for line in lines:
            if line.strip():
                self.emit(line)
        return len(text)

    def flush(self) -> None:
        if self.buf.strip():
            self.emit(self.buf)
        self.buf = ""

    def isatty(self) -> bool:
        return False


# ----------------------------------------------------------------------------------------------------------------
# running the entries


def select_entries(quick: bool) -> list[DemoEntry]:
    return [e for e in DEMO_ENTRIES if e.quick or not quick]


def run_demo(out: Path, quick: bool = False, readme: Path | None = None) -> Path:
    """Generate the data, run the entries (``--quick``: the quick ones, shorter), write the report.

    Returns:
        the path of ``report.html``.
    """
    from weakseg.engine.runtime import setup_logging

    out = Path(out)
    setup_logging(out, "demo.log")
    t_start = time.time()
    entries = select_entries(quick)
    data_roots: dict[str, Path] = {}
    data_seconds = 0.0
    for name in dict.fromkeys(["demo"] + [e.data for e in entries] + [e.web for e in entries if e.web]):
        if name not in DEMO_DATA:
            raise KeyError(f"demo entry data {name!r} is not one of {sorted(DEMO_DATA)}")
        # --quick makes fewer images: its own folder, so that a later full demo in the same --out does not reuse them
        root = out / (("data" if name == "demo" else f"data_{name}") + ("_quick" if quick else ""))
        if not (root / _DATA_DONE.get(name, Path("ImageSets/Segmentation/val.txt"))).exists():
            t0 = time.time()
            if wdist.is_main():
                DEMO_DATA[name](root, quick)
            wdist.barrier()
            data_seconds += time.time() - t0
            log.info("demo data %r generated in %.1f s → %s", name, time.time() - t0, root)
        data_roots[name] = root

    bar = _DemoBar(entries, enabled=wdist.is_main())
    results = []
    try:
        for i, entry in enumerate(entries):
            results.append(_run_entry(i, entry, out, data_roots, quick, bar))
    finally:
        bar.close()
    total = time.time() - t_start
    for r in results:
        log.info("%s: mIoU %.2f (%.1f min)", r["label"], 100 * r["metrics"]["miou"], r["seconds"] / 60)
    return write_demo_report(out, data_roots["demo"], results, quick=quick, data_seconds=data_seconds,
                             total_seconds=total, readme=readme)


def entry_overrides(entry: DemoEntry, out: Path, data_root: Path, val_root: Path, quick: bool,
                    web_root: Path | None = None) -> list[str]:
    overrides = [f"data.root={data_root}", f"engine.work_dir={out / entry.key}"]
    if web_root is not None:
        overrides.append(f"method.web.root={(web_root / 'web').resolve()}")
    if data_root != val_root:  # trained on another dataset (web images): evaluated on the demo's val split
        overrides.append(f"data.val_list={(val_root / 'ImageSets' / 'Segmentation' / 'val.txt').resolve()}")
    if quick:
        overrides += [f"schedule.iters={QUICK_ITERS}", "schedule.warmup_iters=5", "engine.log_interval=20"]
    return overrides


def _run_entry(index: int, entry: DemoEntry, out: Path, data_roots: dict[str, Path], quick: bool,
               bar: _DemoBar) -> dict:
    from weakseg.engine.pipeline import method_stages, run_pipeline
    from weakseg.engine.trainer import train

    if entry.kind not in ("train", "pipeline"):
        raise ValueError(f"demo entry {entry.key}: kind must be train or pipeline, got {entry.kind!r}")
    cfg = load_config(configs_dir() / entry.preset,
                      entry_overrides(entry, out, data_roots[entry.data], data_roots["demo"], quick,
                                      data_roots[entry.web] if entry.web else None))
    work = out / entry.key
    record_path = work / "demo_entry.json"
    h = config_hash(to_dict(cfg))
    if record_path.exists() and (work / entry.metrics).exists():
        record = load_json(record_path)
        if record.get("config_hash") == h:
            log.info("%s: done before (%s), not trained again", entry.label, record_path)
            record["role"] = entry.role  # records written before roles existed
            with bar.entry(index, entry, 1):
                pass
            return record
    stages: dict[str, float] = {}
    t0 = time.time()
    expected = 2 if entry.kind == "train" else len(method_stages(cfg))
    with bar.entry(index, entry, expected):
        if entry.kind == "train":
            train(cfg, resume=True)
        else:
            summary = run_pipeline(cfg)
            stages = {name: float(info.get("seconds", 0.0)) for name, info in summary.items()}
    # a pipeline's stages record their own times: a resumed entry (interrupted demo, stages run before) reports
    # the time its stages took, not only the minutes of this call
    seconds = max(time.time() - t0, sum(stages.values()))
    metrics_path = work / entry.metrics
    if not metrics_path.exists():
        raise FileNotFoundError(f"{metrics_path}: demo entry {entry.key} finished without its metrics file")
    record = {"key": entry.key, "label": entry.label, "role": entry.role, "preset": entry.preset, "kind": entry.kind,
              "saw": entry.saw,
              "checkpoint": str(work / entry.checkpoint), "predictions": str(work / entry.predictions),
              "metrics": load_json(metrics_path), "seconds": round(seconds, 1), "stage_seconds": stages,
              "iterations": cfg.schedule.iters, "config_hash": h}
    if wdist.is_main():
        write_json_atomic(record_path, record)
    return record


# ----------------------------------------------------------------------------------------------------------------
# the report


def results_markdown(results: list[dict]) -> str:
    """The demo's main table: method, weak labels, mIoU, weak/full ratio, minutes (the first row is the bound; the
    baseline's ratio says ``(baseline)``)."""
    full = results[0]["metrics"]["miou"] if results else float("nan")
    lines = ["| method | trained on | mIoU | × full | minutes |", "|---|---|---:|---:|---:|"]
    for r in results:
        m = r["metrics"]["miou"]
        ratio = "1.00 (bound)" if r is results[0] else (f"{m / full:.2f}" if full > 0 else "–")
        if r is not results[0] and r.get("role") == "baseline":
            ratio += " (baseline)"
        lines.append(f"| {r['label']} | {r['saw']} | **{100 * m:.1f}** | {ratio} | {r['seconds'] / 60:.1f} |")
    return "\n".join(lines) + "\n"


def timing_markdown(results: list[dict], data_seconds: float, total_seconds: float) -> str:
    """Where the minutes went: data generation, each entry, and each stage of the multi-stage entries."""
    work = data_seconds + sum(r["seconds"] for r in results)
    if total_seconds >= 0.9 * work:
        head = f"Where the time went ({total_seconds / 60:.1f} min in `weakseg demo`)"
    else:  # entries finished by an earlier (interrupted) call were reused: their own recorded times count
        head = (f"Where the time went ({work / 60:.1f} min of recorded entry time; this call took "
                f"{total_seconds / 60:.1f} min and reused entries run before)")
    lines = [f"{head}: data generation {data_seconds:.0f} s"]
    for r in results:
        stages = r.get("stage_seconds") or {}
        split = ", ".join(f"{name} {s:.0f} s" for name, s in stages.items() if s >= 0.5)
        lines.append(f"; {r['label']} {r['seconds']:.0f} s" + (f" ({split})" if split else ""))
    return "".join(lines) + ".\n"


def write_demo_report(out: Path, data_root: Path, results: list[dict], *, quick: bool = False,
                      data_seconds: float = 0.0, total_seconds: float = 0.0, readme: Path | None = None) -> Path:
    """Write report.md, report.html, grid.png and results.json under ``out``; returns report.html.

    ``readme``: a README whose ``<!-- demo-results -->`` … ``<!-- /demo-results -->`` section is replaced by the
    table written here (with the machine it ran on).
    """
    classes = tuple((data_root / "classes.txt").read_text().split())
    meta = DatasetMeta(classes)
    machine = machine_summary()
    n_train = len((data_root / "ImageSets" / "Segmentation" / "train.txt").read_text().split())
    n_val = len((data_root / "ImageSets" / "Segmentation" / "val.txt").read_text().split())
    skipped = [e.label for e in DEMO_ENTRIES if e.key not in {r["key"] for r in results}]
    multi = any(r["kind"] == "pipeline" for r in results)
    setting = (f"`weakseg demo{' --quick' if quick else ''}` on {machine}. Data: the demo variant of "
               f"`weakseg data synth` ({n_train} train / {n_val} val images of {DEMO_SIZE}², {len(classes) - 1} "
               f"foreground classes, simulated scribbles, tags from the masks). Every method trains MobileNetV2 "
               f"(ImageNet weights) + PPM/UPerNet (`configs/_base_/demo-64.yaml`) for "
               f"{results[0]['iterations'] if results else '?'} iterations of 16 crops")
    if multi:
        setting += (" (the multi-stage methods: their final network on the same backbone and budget, after small "
                    "auxiliary networks)")
    setting += "."
    if skipped:
        setting += f" Not run{' by --quick' if quick else ''}: {', '.join(skipped)}."
    table = results_markdown(results)
    per_class = comparison_markdown([(r["label"], r["metrics"]) for r in results], classes)
    timing = timing_markdown(results, data_seconds, total_seconds)
    md = ["# weakseg demo", "", setting, "", table, timing, "Per-class IoU (%):", "", per_class,
          "![image, ground truth, the weak labels, each method's prediction](grid.png)", "",
          "The same report as a page: [report.html](report.html).", ""]
    report_md = out / "report.md"
    page = out / "report.html"
    if wdist.is_main():
        write_text_atomic(report_md, "\n".join(md))
        write_json_atomic(out / "results.json", {r["key"]: r for r in results})
        _write_grid(out, data_root, results, meta)
        full = results[0]["metrics"]["miou"] if results else float("nan")
        chart = svg_bar_chart([(r["label"], r["metrics"]["miou"]) for r in results], reference=0.85 * full,
                              colours=[_ROLE_COLOURS[r.get("role", "method")] for r in results])
        write_text_atomic(page, _html_page(setting, table, chart, per_class, timing))
        if readme is not None:
            update_readme(Path(readme), setting, table, per_class)
    wdist.barrier()
    return page


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>weakseg demo</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ padding: 4px 10px; border-bottom: 1px solid #ddd; }}
th {{ background: #f4f4f4; }}
.note {{ color: #555; }}
img {{ image-rendering: pixelated; max-width: 100%; }}
</style></head><body>
<h1>weakseg demo</h1>
<p class="note">{setting}</p>
<h2>mIoU per method</h2>
{table}
{chart}
<p class="note">Green: full supervision, the upper bound. Grey: partial CE, the scribble baseline (cross-entropy on
the scribbled pixels only, the floor the methods improve on). Blue: the four methods. Dashed red line: 0.85 × full
supervision, the demo's target for the methods.</p>
<h2>Per-class IoU (%)</h2>
{per_class}
<h2>Predictions on validation images</h2>
<p class="note">Columns: image, ground truth, the weak labels (scribbles: what partial CE and BLPSeg saw; tags: what
the tag-supervised methods saw), then each method's prediction.</p>
<img src="grid.png" alt="image, ground truth, weak labels and each method's prediction">
<p class="note">{timing}</p>
</body></html>
"""


def _html_page(setting: str, table: str, chart: str, per_class: str, timing: str) -> str:
    from html import escape

    def text(s: str) -> str:
        return escape(s.strip()).replace("`", "")

    return _HTML.format(setting=text(setting), table=markdown_table_html(table), chart=chart,
                        per_class=markdown_table_html(per_class), timing=text(timing))




def update_readme(readme: Path, setting: str, table: str, per_class: str) -> None:
    """Replace the README's demo section (between the markers) with this run's tables."""
    import textwrap

    wrapped = textwrap.fill(setting, width=120, break_long_words=False, break_on_hyphens=False)
    replace_marked_section(readme, "demo-results", "\n".join([wrapped, "", table, per_class.rstrip()]), required=True)


def _write_grid(out: Path, data_root: Path, results: list[dict], meta: DatasetMeta, n: int = 6) -> None:
    ids = (data_root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[:n]
    tags = load_json(data_root / "tags.json") if (data_root / "tags.json").exists() else {}
    kinds = [k for k in ("scribbles", "tags") if any(r["saw"] == k for r in results)]
    rows = []
    for sample_id in ids:
        image = read_rgb(data_root / "JPEGImages" / f"{sample_id}.png")
        gt = read_label(data_root / "SegmentationClass" / f"{sample_id}.png")
        row = [image, colorize(gt, meta.palette)]
        if "scribbles" in kinds:
            row.append(_scribble_picture(image, read_label(data_root / "Scribbles" / f"{sample_id}.png"), meta))
        if "tags" in kinds:
            row.append(tag_picture(tags.get(sample_id, []), meta.classes, meta.palette, *image.shape[:2]))
        for r in results:
            pred_path = Path(r["predictions"]) / f"{sample_id}.png"
            row.append(colorize(read_label(pred_path), meta.palette) if pred_path.exists()
                       else np.zeros_like(image))
        rows.append(row)
    titles = ["image", "ground truth"] + kinds + [r["label"] for r in results]
    save_image(out / "grid.png", picture_grid(rows, titles, cell=max(96, 2 * int(rows[0][0].shape[0]))
                                              if rows else 128))


def _scribble_picture(image: np.ndarray, scribble: np.ndarray, meta: DatasetMeta) -> np.ndarray:
    faded = (image.astype(np.float32) * 0.4 + 153).astype(np.uint8)
    pic = overlay(faded, scribble, meta.palette, alpha=1.0)
    pic[scribble == 0] = (40, 40, 40)  # background strokes drawn dark so they show on the faded image
    return pic

