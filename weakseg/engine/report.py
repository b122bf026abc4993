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


# ----------------------------------------------------------------------------------------------------------------
# the demo page: an SVG bar chart and one self-contained HTML file


def tag_picture(tags: list[int], classes: list[str] | tuple[str, ...], palette: np.ndarray, height: int = 64,
                width: int = 64) -> np.ndarray:
    """An H×W×3 uint8 card listing image-level tags: one colour chip and the class name per foreground tag."""
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = 3
    for c in tags:
        if c == 0:  # background is in every image's tags; it tells the reader nothing
            continue
        draw.rectangle((3, y + 1, 11, y + 9), fill=tuple(int(v) for v in palette[c]))
        draw.text((14, y), str(classes[c]), fill=(0, 0, 0))
        y += 13
    return np.asarray(canvas)


def svg_bar_chart(rows: list[tuple[str, float]], reference: float | None = None, width: int = 560,
                  bar_height: int = 22, label_width: int = 190, colours: list[str] | None = None) -> str:
    """Horizontal bars of values in [0, 1] (drawn as %), one per (label, value); ``reference`` draws a dashed
    line (e.g. 0.85 × full supervision); ``colours``: one fill per row (default: the first green, the others
    blue). Returns an ``<svg>`` element for inline use in HTML."""
    from html import escape

    if colours is not None and len(colours) != len(rows):
        raise ValueError(f"svg_bar_chart: {len(colours)} colours for {len(rows)} rows")
    plot = width - label_width - 60
    height = 18 + len(rows) * (bar_height + 8) + 18
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
           f'aria-label="mIoU per method" font-family="sans-serif" font-size="13">']
    for tick in (0, 25, 50, 75, 100):
        x = label_width + plot * tick / 100
        out.append(f'<line x1="{x:.1f}" y1="12" x2="{x:.1f}" y2="{height - 16}" stroke="#ddd"/>'
                   f'<text x="{x:.1f}" y="{height - 3}" text-anchor="middle" fill="#666">{tick}</text>')
    for i, (label, value) in enumerate(rows):
        y = 18 + i * (bar_height + 8)
        v = 0.0 if value != value else max(0.0, min(1.0, value))
        colour = colours[i] if colours is not None else ("#4c72b0" if i else "#55a868")
        out.append(f'<text x="{label_width - 8}" y="{y + bar_height * 0.7:.1f}" text-anchor="end">'
                   f'{escape(label)}</text>'
                   f'<rect x="{label_width}" y="{y}" width="{plot * v:.1f}" height="{bar_height}" fill="{colour}"/>'
                   f'<text x="{label_width + plot * v + 5:.1f}" y="{y + bar_height * 0.7:.1f}">{_fmt(value)}</text>')
    if reference is not None and reference == reference:
        x = label_width + plot * max(0.0, min(1.0, reference))
        out.append(f'<line x1="{x:.1f}" y1="12" x2="{x:.1f}" y2="{height - 16}" stroke="#c44e52" '
                   f'stroke-dasharray="5,4"/>')
    out.append("</svg>")
    return "".join(out)


def markdown_table_html(markdown: str) -> str:
    """A pipe table (as written by this module) → an HTML ``<table>``; ``**x**`` becomes bold, cells are escaped."""
    from html import escape

    lines = [ln.strip() for ln in markdown.strip().splitlines() if ln.strip().startswith("|")]
    if len(lines) < 2:
        return ""

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip("|").split("|")]

    def fmt(cell: str) -> str:
        text = escape(cell)
        while text.count("**") >= 2:
            text = text.replace("**", "<b>", 1).replace("**", "</b>", 1)
        return text.replace("`", "")

    aligns = ["right" if c.endswith(":") else "left" for c in cells(lines[1])]
    head = "".join(f'<th style="text-align:{a}">{fmt(c)}</th>' for c, a in zip(cells(lines[0]), aligns))
    body = "".join("<tr>" + "".join(f'<td style="text-align:{a}">{fmt(c)}</td>' for c, a in zip(cells(ln), aligns))
                   + "</tr>" for ln in lines[2:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
