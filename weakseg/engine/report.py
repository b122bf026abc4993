"""Human-readable outputs: per-class IoU tables (Markdown), label colouring, overlays and picture grids."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def colorize(label: np.ndarray, palette: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """H×W class ids → H×W×3 uint8 colours; the ignore index is drawn white."""
    pal = np.asarray(palette, dtype=np.uint8).copy()
    pal[ignore_index] = 255
    return pal[label.astype(np.int64)]


def overlay(image: np.ndarray, label: np.ndarray, palette: np.ndarray, alpha: float = 0.5,
            ignore_index: int = 255) -> np.ndarray:
    """Blend coloured labels over an H×W×3 uint8 image; background (0) and ignored pixels stay unblended."""
    color = colorize(label, palette, ignore_index).astype(np.float32)
    out = image.astype(np.float32)
    mask = (label != 0) & (label != ignore_index)
    out[mask] = (1 - alpha) * out[mask] + alpha * color[mask]
    return out.clip(0, 255).astype(np.uint8)


def picture_grid(rows: list[list[np.ndarray]], titles: list[str], cell: int = 128, pad: int = 4) -> np.ndarray:
    """Tile H×W×3 uint8 pictures into a grid (each resized to ``cell`` px high), with column titles on top."""
    ncol = len(titles)
    if any(len(r) != ncol for r in rows):
        raise ValueError("every row of the grid must have one picture per title")

    def fit(img: np.ndarray) -> Image.Image:
        h, w = img.shape[:2]
        return Image.fromarray(img).resize((max(1, round(w * cell / h)), cell), Image.NEAREST)

    cells = [[fit(img) for img in r] for r in rows]
    col_w = [max(cells[i][j].width for i in range(len(rows))) if rows else cell for j in range(ncol)]
    head = 16
    width = sum(col_w) + pad * (ncol + 1)
    height = head + len(rows) * (cell + pad) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = pad
    for j, t in enumerate(titles):
        draw.text((x, 2), t, fill=(0, 0, 0))
        x += col_w[j] + pad
    for i, r in enumerate(cells):
        x = pad
        y = head + pad + i * (cell + pad)
        for j, c in enumerate(r):
            canvas.paste(c, (x, y))
            x += col_w[j] + pad
    return np.asarray(canvas)


def _fmt(v: float) -> str:
    return "–" if v != v else f"{100 * v:.2f}"


def metrics_markdown(metrics: dict, classes: list[str] | tuple[str, ...], title: str = "Evaluation") -> str:
    """A Markdown report: summary line and a per-class IoU table (IoU in %)."""
    lines = [f"# {title}", "",
             f"mIoU **{_fmt(metrics['miou'])}**, pixel accuracy {_fmt(metrics['acc'])}, "
             f"mean class accuracy {_fmt(metrics['macc'])} over {metrics.get('images', '?')} images.", ""]
    if metrics.get("coverage", 1.0) == metrics.get("coverage") and metrics.get("coverage", 1.0) < 1.0:
        lines += [f"Coverage {_fmt(metrics['coverage'])}, precision on covered pixels {_fmt(metrics['precision'])}.", ""]
    lines += ["| class | IoU |", "|---|---:|"]
    lines += [f"| {name} | {_fmt(v)} |" for name, v in zip(classes, metrics["iou"])]
    return "\n".join(lines) + "\n"


def comparison_markdown(rows: list[tuple[str, dict]], classes: list[str] | tuple[str, ...]) -> str:
    """A table with one row per run (mIoU and per-class IoU in %)."""
    head = "| run | mIoU | " + " | ".join(classes) + " |"
    sep = "|---|---:|" + "---:|" * len(classes)
    body = [f"| {name} | **{_fmt(m['miou'])}** | " + " | ".join(_fmt(v) for v in m["iou"]) + " |" for name, m in rows]
    return "\n".join([head, sep, *body]) + "\n"
