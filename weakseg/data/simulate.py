"""Scribble simulation from dense masks ("how people draw scribbles"), with URSS-style shrink / drop variants.

This is weakseg's own generator, not the (unpublished) URSS procedure (spec §1.4). For every connected region
(8-connectivity) of every class — background included unless ``background=False`` — it draws
``strokes_per_region`` strokes:

1. Distance transform of the region (the image border counts as boundary), depth d_max = its maximum.
2. *Erosion*: the core is the set of region pixels with depth ≥ max(1, erosion·d_max). Thin parts (legs, tails,
   spikes) and corners are shallower than that and fall outside the core, so strokes rarely reach them.
3. The first stroke follows the longest ridge path of the largest core component: a shortest path, in a metric that
   makes shallow pixels expensive (edge cost = step length · d_max / depth, averaged over both ends), between two
   mutually far core pixels (a random pixel → the Euclidean-farthest pixel a → the path-farthest pixel b from a;
   cores of more than 500 pixels are searched on a grid sub-sampled by an integer factor). Further strokes
   start at a depth-weighted random core pixel (of a core component picked with probability ∝ its area) away from
   earlier strokes and run to the pixel farthest from it, with path costs ×10 within the erosion depth of earlier
   strokes, so that they cover other parts of the region.
4. The path is resampled to control points every ``step`` pixels, the control points get a small smooth random
   offset (≤ ``wobble``·erosion depth, hand tremor), and a polyline through them is drawn ``width`` pixels wide
   (disc of diameter ``width``), clipped to the region, so a stroke never leaves its class.
5. ``shrink`` keeps the middle (1 − shrink) of each stroke's arc length (shrink = 0.5 keeps the middle 50 %);
   ``drop`` removes each stroke independently with that probability. Random numbers are drawn identically for every
   shrink/drop value, so with the same seed the shrunk/dropped scribbles are subsets of the full ones.
6. ``reach``: with this probability a stroke gets an *excursion* — the annotator occasionally follows a thin part to
   its tip. Over the whole region (not the core), with the same depth-weighted metric, the pixel most remote from
   the stroke (typically the tip of a leg, tail or spike) is found and the path from the stroke towards it is drawn
   for a uniform 50–100 % of its length. So thin parts are annotated *rarely* rather than never — the skewed but
   non-zero annotation distribution that BLPSeg's annotation-probability map models. Excursions use their own
   random stream (spawned, not drawn from the main one), so the main strokes are identical for every ``reach``.

Small regions: area < ``min_dot_area`` → nothing; ``min_dot_area`` ≤ area < ``min_region_area`` → one dot
(a ``width`` disc clipped to the region) at the deepest pixel (still subject to ``drop``).

Output: H×W uint8, class index on stroke pixels, ``ignore_index`` (255) = not annotated. Pixels that are
``ignore_index`` in the input mask are never a class and never scribbled.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from weakseg.data.meta import voc_palette
from weakseg.data.scribble_xml import polyline_pixels
from weakseg.utils.io import DataError, read_label, save_label_png

_EIGHT = np.ones((3, 3), dtype=bool)
_NEIGH = ((0, 1, 1.0), (1, 0, 1.0), (1, 1, np.sqrt(2.0)), (1, -1, np.sqrt(2.0)))


def _disc(width: int) -> np.ndarray:
    r = (width - 1) / 2.0
    n = int(np.ceil(r))
    yy, xx = np.mgrid[-n:n + 1, -n:n + 1]
    return (yy**2 + xx**2) <= r * r + 0.5


def _ridge_graph(dist: np.ndarray, core: np.ndarray, d_max: float):
    """Graph over core pixels, 8-neighbour edges costing step · d_max / depth (mean over both ends).

    Returns (CSR graph with both edge directions, rows, cols) with node i at pixel (rows[i], cols[i]).
    """
    rows, cols = np.nonzero(core)
    n = rows.size
    idx = np.full(core.shape, -1, dtype=np.int32)
    idx[rows, cols] = np.arange(n, dtype=np.int32)
    inv = d_max / np.maximum(dist, 1e-3)
    h, w = core.shape
    src, dst, wts = [], [], []
    for dr, dc, step in _NEIGH:
        # pixel pairs (r, c) → (r + dr, c + dc) as two aligned slices of the grid
        a = (slice(0, h - dr), slice(max(0, -dc), w - max(0, dc)))
        b = (slice(dr, h), slice(max(0, dc), w - max(0, -dc)))
        both = core[a] & core[b]
        ia, ib = idx[a][both], idx[b][both]
        cost = step * 0.5 * (inv[a][both] + inv[b][both])
        src += [ia, ib]
        dst += [ib, ia]
        wts += [cost, cost]
    src_a, dst_a, wts_a = np.concatenate(src), np.concatenate(dst), np.concatenate(wts)
    order = np.argsort(src_a, kind="stable")
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src_a, minlength=n), out=indptr[1:])
    return csr_matrix((wts_a[order], dst_a[order], indptr), shape=(n, n)), rows, cols


def _farthest(graph, source: int) -> tuple[int, np.ndarray, np.ndarray]:
    d, pred = dijkstra(graph, directed=True, indices=source, return_predecessors=True)
    d = np.where(np.isfinite(d), d, -1.0)
    return int(np.argmax(d)), d, pred


def _path(pred: np.ndarray, end: int) -> list[int]:
    out = [end]
    while pred[out[-1]] >= 0:
        out.append(int(pred[out[-1]]))
    return out[::-1]


def _keep_middle(pts: np.ndarray, shrink: float) -> np.ndarray:
    """The middle (1 − shrink) of a polyline's arc length (points are kept, not interpolated)."""
    if shrink <= 0 or len(pts) < 2:
        return pts
    seg = np.sqrt((np.diff(pts.astype(np.float64), axis=0) ** 2).sum(1))
    s = np.concatenate([[0.0], np.cumsum(seg)])
    total = s[-1]
    lo, hi = 0.5 * shrink * total, (1 - 0.5 * shrink) * total
    keep = (s >= lo - 1e-9) & (s <= hi + 1e-9)
    if not keep.any():
        keep[np.argmin(np.abs(s - 0.5 * total))] = True
    return pts[keep]


def _wobble(pts: np.ndarray, rng: np.random.Generator, amplitude: float, step: int) -> np.ndarray:
    """Resample a pixel path to control points every ``step`` pixels and add a smooth lateral offset."""
    ctrl = pts[::step]
    if len(pts) > 1 and not np.array_equal(ctrl[-1], pts[-1]):
        ctrl = np.concatenate([ctrl, pts[-1:]], axis=0)
    ctrl = ctrl.astype(np.float64)
    n = len(ctrl)
    phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 1.5)
    if n < 3 or amplitude <= 0:
        return np.round(ctrl).astype(np.int64)
    tang = np.empty_like(ctrl)
    tang[1:-1] = ctrl[2:] - ctrl[:-2]
    tang[0], tang[-1] = ctrl[1] - ctrl[0], ctrl[-1] - ctrl[-2]
    norm = np.stack([-tang[:, 1], tang[:, 0]], axis=1)
    norm /= np.maximum(np.sqrt((norm * norm).sum(1, keepdims=True)), 1e-9)
    t = np.arange(n) / (n - 1)
    off = amplitude * np.sin(2 * np.pi * freq * t + phase) * np.sin(np.pi * t)  # zero at both ends
    return np.round(ctrl + off[:, None] * norm).astype(np.int64)


def _polyline(ctrl: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """M×2 pixels of the polyline through the control points, clipped to ``shape``."""
    pix = polyline_pixels(ctrl)
    np.clip(pix[:, 0], 0, shape[0] - 1, out=pix[:, 0])
    np.clip(pix[:, 1], 0, shape[1] - 1, out=pix[:, 1])
    return pix


def simulate_scribbles(label: np.ndarray, *, rng: np.random.Generator | None = None, seed: int | None = None,
                       strokes_per_region: int = 1, width: int = 3, erosion: float = 0.4,
                       min_region_area: int = 100, min_dot_area: int = 9, shrink: float = 0.0, drop: float = 0.0,
                       ignore_index: int = 255, background: bool = True, wobble: float = 0.3, step: int = 6,
                       reach: float = 0.0) -> np.ndarray:
    """Simulate human-like scribbles for an H×W uint8 mask (see the module docstring for the procedure).

    Args:
        label: H×W uint8 class ids, ``ignore_index`` = void.
        rng, seed: randomness (one of them; ``seed`` builds ``np.random.default_rng(seed)``; neither = seed 0).
        strokes_per_region: strokes per connected region (≥ 1).
        width: stroke width in pixels (disc diameter; 1 = one-pixel polyline).
        erosion: core depth threshold as a fraction of the region's maximum depth, in [0, 1).
        min_region_area: regions smaller than this get a dot instead of strokes.
        min_dot_area: regions smaller than this get nothing.
        shrink: fraction of each stroke's arc length removed, half at each end, in [0, 1).
        drop: probability that each stroke (or dot) is removed, in [0, 1].
        ignore_index: void value of ``label`` and the not-annotated value of the output.
        background: also scribble class 0.
        wobble: lateral tremor amplitude as a fraction of the core depth threshold.
        step: control-point spacing in pixels along the path.
        reach: probability that a stroke gets an excursion to the region's most remote thin part, in [0, 1].

    Returns:
        H×W uint8 scribble map, class ids on stroke pixels and ``ignore_index`` elsewhere.
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label must be H×W, got shape {label.shape}")
    if strokes_per_region < 1 or width < 1 or step < 1:
        raise ValueError("strokes_per_region, width and step must be >= 1")
    if not 0 <= erosion < 1 or not 0 <= shrink < 1 or not 0 <= drop <= 1 or not 0 <= reach <= 1:
        raise ValueError(f"need 0 <= erosion < 1, 0 <= shrink < 1, 0 <= drop <= 1, 0 <= reach <= 1; "
                         f"got {erosion}, {shrink}, {drop}, {reach}")
    if rng is None:
        rng = np.random.default_rng(0 if seed is None else seed)
    # spawned, not drawn: the main stream (hence every main stroke) is the same for every value of ``reach``
    reach_rng = rng.spawn(1)[0] if reach > 0 else None
    out = np.full(label.shape, ignore_index, dtype=np.uint8)
    disc = np.argwhere(_disc(width)) - (width - 1) // 2 if width > 1 else np.zeros((1, 2), np.int64)
    classes = [int(c) for c in np.unique(label) if c != ignore_index and (background or c != 0)]
    for cls in classes:
        # pad by one pixel so that every region crop has a margin and the EDT sees the image border as boundary
        comps, n_comp = ndimage.label(np.pad(label == cls, 1), structure=_EIGHT)
        for k, sl in enumerate(ndimage.find_objects(comps), 1):
            r0, c0 = sl[0].start - 1, sl[1].start - 1
            region = comps[r0:sl[0].stop + 1, c0:sl[1].stop + 1] == k
            area = int(region.sum())
            if area < min_dot_area:
                continue
            dist = ndimage.distance_transform_edt(region)
            d_max = float(dist.max())
            if area < min_region_area:
                strokes = []
                if rng.random() >= drop:
                    strokes.append(np.argwhere(dist == d_max)[:1])
            else:
                strokes = _region_strokes(region, dist, d_max, rng, strokes_per_region, erosion, shrink, drop,
                                          wobble, step, reach, reach_rng)
            for pix in strokes:
                pix = (pix[:, None, :] + disc[None]).reshape(-1, 2)
                h, w = region.shape
                pix = pix[(pix[:, 0] >= 0) & (pix[:, 0] < h) & (pix[:, 1] >= 0) & (pix[:, 1] < w)]
                pix = pix[region[pix[:, 0], pix[:, 1]]]          # never leave the region
                # crop coordinates → padded image → image
                out[pix[:, 0] + r0 - 1, pix[:, 1] + c0 - 1] = cls
    return out


_MAX_GRAPH_NODES = 500  # larger cores are path-searched on a sub-sampled grid (every f-th row and column)


def _region_strokes(region: np.ndarray, dist: np.ndarray, d_max: float, rng: np.random.Generator, n_strokes: int,
                    erosion: float, shrink: float, drop: float, wobble: float, step: int, reach: float = 0.0,
                    reach_rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """1-pixel strokes (M×2 (row, col) pixels, before width dilation) for one region, in crop coordinates."""
    thr = max(1.0, erosion * d_max)
    core = dist >= thr
    f = max(1, int(np.ceil(np.sqrt(np.count_nonzero(core) / _MAX_GRAPH_NODES))))
    while f > 1 and not core[::f, ::f].any():
        f -= 1
    core_s, dist_s = core[::f, ::f], dist[::f, ::f]
    core_lab, n_core = ndimage.label(core_s, structure=_EIGHT)
    areas = np.bincount(core_lab.ravel(), minlength=n_core + 1)[1:].astype(np.float64)
    graph, rows, cols = _ridge_graph(dist_s, core_s, d_max)
    comp_of = core_lab[rows, cols]
    taken = np.zeros(core_s.shape, dtype=bool)   # pixels of earlier strokes (sub-sampled grid)
    strokes = []
    for s in range(n_strokes):
        comp = int(np.argmax(areas)) + 1 if s == 0 else int(rng.choice(n_core, p=areas / areas.sum())) + 1
        members = np.flatnonzero(comp_of == comp)
        wts = dist_s[rows[members], cols[members]]
        if s > 0:
            # later strokes keep away from earlier ones: paths near them cost 10×, starts there are avoided
            near = ndimage.distance_transform_edt(~taken) <= max(1.0, thr / f)
            graph, _, _ = _ridge_graph(dist_s / (1.0 + 9.0 * near), core_s, d_max)
            free = wts * ~near[rows[members], cols[members]]
            wts = free if free.sum() > 0 else wts
        start = int(members[rng.choice(members.size, p=wts / wts.sum())])
        u_drop = rng.random()
        if s == 0:
            # one end of the longest path: the member farthest (Euclidean) from the start, then the far end of it
            far = np.hypot(rows[members] - rows[start], cols[members] - cols[start])
            start = int(members[int(np.argmax(far))])
        end, _, pred = _farthest(graph, start)
        nodes = _path(pred, end)
        taken[rows[nodes], cols[nodes]] = True
        pts = np.stack([rows[nodes], cols[nodes]], axis=1) * f
        ctrl = _wobble(pts, rng, wobble * thr, max(1, step // f))
        if u_drop < drop:
            continue
        ctrl = _keep_middle(ctrl, shrink)
        strokes.append(_polyline(ctrl, region.shape))
        if reach_rng is not None and reach_rng.random() < reach:
            excursion = _excursion(region, dist, d_max, strokes[-1], reach_rng)
            if excursion is not None:
                strokes.append(_polyline(_wobble(excursion, reach_rng, wobble * thr, step), region.shape))
    return strokes


_MAX_EXCURSION_NODES = 4000  # finer than the core search: thin parts must stay connected on the sub-sampled grid


def _excursion(region: np.ndarray, dist: np.ndarray, d_max: float, stroke: np.ndarray,
               rng: np.random.Generator) -> np.ndarray | None:
    """Path (M×2 pixels) from ``stroke`` towards the region pixel most remote from it, cut at 50–100 % of its length.

    Remoteness is the depth-weighted path length of :func:`_ridge_graph` over the whole region, so the target is a
    tip of a thin part and the path runs along its middle. None if the region has nothing reachable beyond the stroke.
    """
    f = max(1, int(np.ceil(np.sqrt(np.count_nonzero(region) / _MAX_EXCURSION_NODES))))
    region_s, dist_s = region[::f, ::f], dist[::f, ::f]
    graph, rows, cols = _ridge_graph(dist_s, region_s, d_max)
    idx = np.full(region_s.shape, -1, dtype=np.int64)
    idx[rows, cols] = np.arange(rows.size)
    on_stroke = idx[np.clip(stroke[:, 0] // f, 0, region_s.shape[0] - 1),
                    np.clip(stroke[:, 1] // f, 0, region_s.shape[1] - 1)]
    sources = np.unique(on_stroke[on_stroke >= 0])
    if sources.size == 0:
        return None
    d, pred, _ = dijkstra(graph, directed=True, indices=sources, return_predecessors=True, min_only=True)
    d = np.where(np.isfinite(d), d, -1.0)
    end = int(np.argmax(d))
    if d[end] <= 0:
        return None
    nodes = _path(pred, end)
    keep = max(2, int(round(len(nodes) * rng.uniform(0.5, 1.0))))
    nodes = nodes[:keep]
    return np.stack([rows[nodes], cols[nodes]], axis=1) * f


def image_seed(seed: int, image_id: str) -> np.random.Generator:
    """Per-image generator from (seed, id): independent of list order and of which other images are processed."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(image_id.encode("utf-8"))]))


def simulate_folder(root: str | os.PathLike, list_file: str | os.PathLike, label_dir: str | os.PathLike,
                    out_dir: str | os.PathLike, *, seed: int = 0, label_ext: str = ".png", overwrite: bool = True,
                    num_classes: int | None = None, ignore_index: int = 255, **kwargs) -> tuple[int, int, list[str]]:
    """Simulate scribbles for every id of ``list_file`` from ``<label_dir>/<id>.png`` into ``<out_dir>/<id>.png``.

    Paths are relative to ``root`` unless absolute. ``kwargs`` go to :func:`simulate_scribbles`. Each image uses
    :func:`image_seed` (seed, id), so results do not depend on list order. Outputs are palette PNGs written
    atomically; with ``overwrite=False`` existing outputs are kept (resume). A mask with a value that is neither a
    class id (< ``num_classes``; default: the classes of ``<root>/classes.txt``, VOC's 21 without one) nor
    ``ignore_index`` is skipped with a problem naming the file and the values: its scribbles would carry them.

    Returns:
        (number written, number skipped because unreadable or out of range, problems).
    """
    from weakseg.data.dataset import meta_from_root, read_list_file  # lazy: keeps torch out of the imports

    root = Path(root)

    def rel(p) -> Path:
        return Path(p) if Path(p).is_absolute() else root / p

    ids = read_list_file(rel(list_file))
    label_dir, out_dir = rel(label_dir), rel(out_dir)
    palette = voc_palette()
    if num_classes is None:
        num_classes = meta_from_root(root).num_classes
    n_ok, problems = 0, []
    for sid in ids:
        dst = out_dir / f"{sid}.png"
        if not overwrite and dst.exists():
            n_ok += 1
            continue
        src = label_dir / f"{sid}{label_ext}"
        try:
            label = read_label(src)
        except DataError as exc:
            problems.append(str(exc))
            continue
        bad = np.unique(label[(label >= num_classes) & (label != ignore_index)])
        if bad.size:
            problems.append(f"{src}: values {bad.tolist()} are not class ids (< {num_classes}) or {ignore_index}")
            continue
        scrib = simulate_scribbles(label, rng=image_seed(seed, sid), ignore_index=ignore_index, **kwargs)
        save_label_png(dst, scrib, palette)
        n_ok += 1
    return n_ok, len(problems), problems
