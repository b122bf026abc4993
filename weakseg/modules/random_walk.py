"""Boundary-guided random walk of CAMs (IRN / BES / SBE propagation, methods.md §4.6, §4.6b).

Given a boundary probability map B (stride 4, h×w, values in [0, 1]) and per-class CAMs V (K×h×w), the
reference builds a dense hw×hw affinity matrix, raises it to the power β, column-normalises it into a
transition matrix T, squares T ``exp_times`` times and propagates v' = vᵀ T^(2^exp_times) with
v = V ⊙ (1 − B).

Design of :func:`random_walk` (the implementation used by the pipeline). T is never materialised. Each pixel j
has at most ``2·O + 1`` non-zero entries in its column of T (itself and its neighbours at the O half-disk
offsets ±d), so T is stored implicitly as ``(2·O + 1)×h×w`` weight maps, already divided by the column
normaliser D_j = Σ_i A_ij. One step v ← vᵀT is

    v'_j = (v_j + Σ_d A(j, j+d)·v_{j+d} + Σ_d A(j−d, j)·v_{j−d}) / D_j,

computed as a shift-multiply-accumulate over the 2·O + 1 shifts, vectorised over the K classes. Repeating the
step 2^exp_times times equals vᵀ T^(2^exp_times) exactly (matrix powers associate); cost O(K·hw·O) per step and
O((K + O)·hw) memory, against O((hw)³·exp_times) time and O((hw)²) memory for repeated squaring.
:func:`random_walk_dense` is the reference (dense matrix, squaring) used by tests and benchmarks.

Affinity (§4.6 step 2): offsets (dy, dx) with dx ∈ 1..r−1, dy = 0, and dy ∈ 1..r−1, dx ∈ −(r−1)..r−1 with
dx² + dy² < r² (34 offsets for r = 5). The path of an offset is the set of grid cells of its bounding box at
perpendicular distance < 1 from the segment (0, 0)→(dy, dx), endpoints included, and
a(i, i+d) = 1 − max_{k ∈ path} B_k. Pairs whose second pixel leaves the image get a = 0 (the reference pads B
with 1 and crops the padded rows/columns away, which is the same). The matrix is symmetric with a_ii = 1.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Offset = tuple[int, int]


def search_offsets(radius: int = 5) -> list[Offset]:
    """The half-disk neighbourhood offsets (dy, dx), in the reference's order (34 for radius 5)."""
    if radius < 2:
        raise ValueError(f"radius must be >= 2, got {radius}")
    offsets: list[Offset] = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        for dx in range(-radius + 1, radius):
            if dx * dx + dy * dy < radius * radius:
                offsets.append((dy, dx))
    return offsets


def offset_path(offset: Offset) -> list[Offset]:
    """Grid cells (py, px) inside the bounding box of (0, 0)→offset at perpendicular distance < 1 from the
    segment; both endpoints are included."""
    dy, dx = offset
    length_sq = dy * dy + dx * dx
    cells = []
    for py in range(min(0, dy), max(0, dy) + 1):
        for px in range(min(0, dx), max(0, dx) + 1):
            # squared distance of (py, px) from the line through 0 and (dy, dx): (dy·px − dx·py)² / |d|²
            if (dy * px - dx * py) ** 2 < length_sq:
                cells.append((py, px))
    return cells


def boundary_affinity(boundary: torch.Tensor, radius: int = 5) -> tuple[list[Offset], torch.Tensor]:
    """Path affinities a(p, p+d) for every pixel p and half-disk offset d.

    Args:
        boundary: h×w float boundary probabilities in [0, 1] (stride-4 map).
        radius: neighbourhood radius (offsets with |d| < radius).

    Returns:
        The O offsets and an O×h×w tensor (dtype of ``boundary``) with
        ``aff[o, y, x] = 1 − max(B on the path from (y, x) to (y+dy, x+dx))``, and 0 where (y+dy, x+dx) is
        outside the image.
    """
    if boundary.ndim != 2:
        raise ValueError(f"boundary must be h×w, got shape {tuple(boundary.shape)}")
    h, w = boundary.shape
    offsets = search_offsets(radius)
    p = radius - 1
    # Out-of-image cells count as boundary 1, so any pair leaving the image gets affinity 0 (paths lie inside
    # the bounding box of the pair, so in-image pairs never touch the padding).
    padded = F.pad(boundary[None, None], (p, p, p, p), mode="constant", value=1.0)[0, 0]
    aff = boundary.new_empty(len(offsets), h, w)
    for o, off in enumerate(offsets):
        (py, px), *rest = offset_path(off)
        aff[o] = padded[p + py : p + py + h, p + px : p + px + w]
        for py, px in rest:
            torch.maximum(aff[o], padded[p + py : p + py + h, p + px : p + px + w], out=aff[o])
    return offsets, aff.neg_().add_(1.0)


class SparseTransition:
    """The column-normalised transition matrix T = colnorm(a^β), held as per-shift weight maps.

    ``weights[s, j]`` = T[j + shift_s, j] (the weight with which pixel j collects from pixel j + shift_s),
    for the 2·O + 1 shifts (0, 0), +d_o, −d_o; entries for out-of-image neighbours are 0.
    """

    def __init__(self, boundary: torch.Tensor, beta: float = 5.0, radius: int = 5):
        offsets, aff = boundary_affinity(boundary, radius)
        h, w = boundary.shape
        n = len(offsets)
        # Filled in place (peak memory ≈ the (2·O + 1)×h×w weights plus the O×h×w affinities).
        weights = aff.new_zeros(2 * n + 1, h, w)
        weights[0] = 1.0  # the diagonal a_jj = 1
        fwd = torch.pow(aff, beta, out=weights[1 : n + 1])  # A(j, j+d) at j
        del aff
        for o, (dy, dx) in enumerate(offsets):
            if dy >= h or abs(dx) >= w:  # the offset leaves even a tiny map: no such pairs
                continue
            # A(j−d, j) at j = the forward map at j − d; zero where j − d is outside the image.
            x0, x1 = max(dx, 0), w + min(dx, 0)
            weights[n + 1 + o, dy:, x0:x1] = fwd[o, : h - dy, x0 - dx : x1 - dx]
        self.column_sum = weights.sum(0)  # D_j = Σ_i A_ij ≥ 1
        self.weights = weights.div_(self.column_sum)
        self.shifts: list[Offset] = [(0, 0)] + offsets + [(-dy, -dx) for dy, dx in offsets]
        self.pad = radius - 1
        self.size = (h, w)

    def propagate(self, v: torch.Tensor, steps: int) -> torch.Tensor:
        """Apply v ← vᵀT ``steps`` times to each row of v (K×h×w); returns K×h×w."""
        h, w = self.size
        p = self.pad
        k = v.shape[0]
        # v lives in the interior of a zero-padded buffer, so every shift is a plain strided view.
        buf = torch.zeros(k, h + 2 * p, w + 2 * p, dtype=v.dtype, device=v.device)
        buf[:, p : p + h, p : p + w] = v
        acc = torch.empty(k, h, w, dtype=v.dtype, device=v.device)
        for _ in range(steps):
            acc.zero_()
            for wmap, (sy, sx) in zip(self.weights, self.shifts):
                acc.addcmul_(buf[:, p + sy : p + sy + h, p + sx : p + sx + w], wmap)
            buf[:, p : p + h, p : p + w] = acc
        return acc if steps > 0 else v.clone()


def _check_inputs(cams: torch.Tensor, boundary: torch.Tensor) -> None:
    if cams.ndim != 3 or boundary.ndim != 2 or cams.shape[1:] != boundary.shape:
        raise ValueError(
            f"expected cams K×h×w and boundary h×w of the same size, got {tuple(cams.shape)} and "
            f"{tuple(boundary.shape)}"
        )


def random_walk(
    cams: torch.Tensor, boundary: torch.Tensor, beta: float = 5.0, exp_times: int = 8, radius: int = 5
) -> torch.Tensor:
    """Propagate CAMs with the boundary-aware random walk (§4.6 steps 2–4), sparse implementation.

    Args:
        cams: K×h×w float CAMs at the boundary map's stride (per-class max-normalised ``cam`` of make_cam).
        boundary: h×w float boundary probabilities in [0, 1].
        beta: exponent of the affinities (``--beta``, 5).
        exp_times: the reference squares T this many times, i.e. 2**exp_times walk steps (``--exp_times``, 8).
        radius: neighbourhood radius (5).

    Returns:
        K×h×w propagated scores vᵀ T^(2^exp_times) with v = cams ⊙ (1 − boundary) (not normalised).
    """
    _check_inputs(cams, boundary)
    boundary = boundary.to(cams.dtype)
    trans = SparseTransition(boundary, beta=beta, radius=radius)
    return trans.propagate(cams * (1.0 - boundary), 2**exp_times)


def transition_matrix_dense(boundary: torch.Tensor, beta: float = 5.0, radius: int = 5) -> torch.Tensor:
    """The reference's dense transition matrix T (hw×hw, row-major pixel order): columns sum to 1."""
    h, w = boundary.shape
    offsets, aff = boundary_affinity(boundary, radius)
    n = h * w
    dense = torch.zeros(n, n, dtype=aff.dtype, device=aff.device)
    ys, xs = torch.meshgrid(
        torch.arange(h, device=aff.device), torch.arange(w, device=aff.device), indexing="ij"
    )
    src = (ys * w + xs).reshape(-1)
    for o, (dy, dx) in enumerate(offsets):
        inside = ((ys + dy < h) & (xs + dx >= 0) & (xs + dx < w)).reshape(-1)
        dst = ((ys + dy) * w + (xs + dx)).reshape(-1)
        s, d, a = src[inside], dst[inside], aff[o].reshape(-1)[inside]
        dense[s, d] = a
        dense[d, s] = a
    dense.fill_diagonal_(1.0)
    scaled = dense.pow_(beta)
    return scaled / scaled.sum(0, keepdim=True)


def random_walk_dense(
    cams: torch.Tensor, boundary: torch.Tensor, beta: float = 5.0, exp_times: int = 8, radius: int = 5
) -> torch.Tensor:
    """Reference implementation of :func:`random_walk`: dense T, squared ``exp_times`` times, then vᵀT.

    Needs (hw)² memory per matrix (1 GiB in float32 for a 128×128 map); for tests and benchmarks only.
    """
    _check_inputs(cams, boundary)
    boundary = boundary.to(cams.dtype)
    k, h, w = cams.shape
    trans = transition_matrix_dense(boundary, beta=beta, radius=radius)
    for _ in range(exp_times):
        trans = trans @ trans
    v = (cams * (1.0 - boundary)).reshape(k, h * w)
    return (v @ trans).reshape(k, h, w)


def propagate_to_label(
    cams: torch.Tensor,
    boundary: torch.Tensor,
    keys: torch.Tensor,
    image_size: tuple[int, int],
    bg_threshold: float = 0.21,
    *,
    beta: float = 5.0,
    exp_times: int = 8,
    radius: int = 5,
    stride: int = 4,
    normalize: Literal["global", "per_class"] = "global",
) -> torch.Tensor:
    """Random-walk the CAMs and turn them into a label map (§4.6 steps 1–5).

    Args:
        cams: K×h×w CAMs of the image's classes at stride ``stride`` (h = ⌈H/4⌉).
        boundary: h×w boundary probabilities in [0, 1].
        keys: K int64 foreground class indices (0-based, 0..19 on VOC) of the CAM channels.
        image_size: (H, W) of the image.
        bg_threshold: constant background score (``sem_seg_bg_thres``: SBE 0.21, BES 0.25).
        normalize: ``"global"`` divides all classes by the single max over classes and pixels, as the reference
            does (a weak class can be suppressed by a strong one, §4.9.5); ``"per_class"`` divides each class
            by its own max. The maximum is floored at 1e-5 so an all-zero map gives background, not NaN.

    Returns:
        H×W int64 class ids: 0 = background, keys[k] + 1 for class channel k.
    """
    if keys.ndim != 1 or keys.numel() != cams.shape[0]:
        raise ValueError(f"keys must have K={cams.shape[0]} entries, got shape {tuple(keys.shape)}")
    if normalize not in ("global", "per_class"):
        raise ValueError(f"normalize must be 'global' or 'per_class', got {normalize!r}")
    height, width = image_size
    rw = random_walk(cams, boundary, beta=beta, exp_times=exp_times, radius=radius)
    up = F.interpolate(rw[None], scale_factor=stride, mode="bilinear", align_corners=False)[0]
    if up.shape[1] < height or up.shape[2] < width:
        raise ValueError(f"{stride}× upsampled map {tuple(up.shape[1:])} is smaller than the image {image_size}")
    up = up[:, :height, :width]
    if normalize == "global":
        up = up / up.max().clamp_min(1e-5)
    else:
        up = up / up.amax(dim=(1, 2), keepdim=True).clamp_min(1e-5)
    scores = F.pad(up, (0, 0, 0, 0, 1, 0), value=bg_threshold)
    lut = torch.cat([keys.new_zeros(1), keys + 1]).to(torch.int64)
    return lut[scores.argmax(0)]
