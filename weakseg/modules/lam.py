"""LAM — BLPSeg's local aggregation module (spec ``methods.md`` §2.4), windowed and memory-bounded.

The operation, per image, on a grid of n = h·w positions p = (row, col) (stride 4 in BLPSeg):

    z[a, b] = F_a · F_b − ‖p_a − p_b‖² / (2σ²)          (raw dot product: no temperature, no normalisation)
    W[a, b] = exp(z[a, b]) / Σ_{a'} exp(z[a', b])         (normalised over the *source* index a, per target b)
    Ŝ[:, b] = Σ_a S[:, a] · W[a, b]

This is the spec's A_feat ⊙ G column-normalised (the feature softmax denominator cancels). The spec's
"+1e-7" in the column normalisation is not reproduced: W here is an exact softmax, so every output column's
weights sum to 1 (the spec's weights sum to ΣK/(ΣK + 1e-7), ΣK = Σ_a A_feat[a, b]·G[a, b] ∈ (0, 1]; the relative
difference is 1e-7/(ΣK + 1e-7), e.g. ≈ 4e-6 for ΣK ≈ 2πσ²/n at σ = 6 on 96², and below 1e-4 whenever
ΣK > 1e-3).

Truncation: the Gaussian is cut to the square window |Δrow| ≤ radius and |Δcol| ≤ radius (default radius =
ceil(4σ) = 24 for σ = 6, i.e. 49×49 offsets). Sources outside the window, and positions outside the image grid,
are excluded from the normalisation, exactly as in the dense formula with G zeroed outside the window. With
radius ≥ max(h, w) − 1 the result is the untruncated formula of the spec. The truncation is an approximation of
the spec: a source at distance d has weight ≤ exp(Δz_feat − d²/(2σ²)), so it is negligible unless dot products
of far-away features exceed the near ones by ≳ 8 (the Gaussian term at one axis-aligned radius).

Implementation (blocked local attention, flash-attention style):
    * Targets are cut into tiles of ``tile``×``tile`` positions; each tile attends to its halo of
      (tile + 2·radius)² source positions with one batched matmul; a fixed per-call bias matrix holds the
      Gaussian term and masks offsets outside the window; sources outside the grid are masked inside the same
      matmul by one extra feature channel (1 on targets; 0 / −1e30 on sources inside / outside the grid).
      Exponentials are clamped at e^-80 and flushed to 0 (CPU exp() of underflowing arguments is ~30× slower).
      Tiles are processed in chunks of at most ``chunk_elements`` logits, so the workspace is constant and the
      total work grows with positions × window, never positions² (tile 16, radius 24: 1.7× the window's work,
      spent in BLAS instead of ~2401 per-offset elementwise passes; tiles 8/12/16 measured within noise).
    * A custom ``torch.autograd.Function`` stores S, F, the output Ŝ and the log-sum-exp per target, and the
      logits themselves when all of them fit ``save_elements`` (then the backward skips their matmul, one of its
      three big ones; otherwise it recomputes them per chunk, the same values bit for bit). Because the window and
      the Gaussian are symmetric, every gradient is a *gather* over the halo (no scatter-add): for a tile of
      positions t and its halo h,
      dF_t = Σ_h dz[t, h] F_h (t as target) + Σ_h dz[h, t] F_h (t as source), dS_t = Σ_h W[t, h] dŜ_h.
    * Dot products and exponentials run in float32 (float64 inputs stay float64), with max subtraction, also
      under fp16/bf16 autocast (the reference's raw exp(F·F) overflows fp16). The output is cast back to the
      dtype of ``seg``; it is a convex combination of ``seg`` values, so it cannot overflow that dtype.

Nothing depends on the input size: the module has no parameters or buffers (empty ``state_dict``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LAM", "lam_dense", "lam_windowed"]

# Logit given to masked (out-of-window / out-of-grid) pairs: finite, so that a fully masked row (only possible
# for the zero-padded targets that complete the last tile, which are cropped away) gives no NaN, and so that
# 0·_NEG = 0 in the backward matmuls.
_NEG = -1.0e30
# exp() of arguments that underflow takes a slow path on CPU (25–40× slower per element); arguments are clamped
# to _EXP_FLOOR and the results ≤ _EXP_CUT (> exp(_EXP_FLOOR)) set to exactly 0. Values dropped this way are
# < 2e-35 relative to the largest weight of their column, i.e. what float32 underflow would do anyway.
_EXP_FLOOR = -80.0
_EXP_CUT = 2.0e-35
# Default budget of logits the forward keeps for the backward (2^26 float32 = 256 MiB): BLPSeg's CPU horse network
# (8 × 48² grid, σ = 4) needs 42.5 M and saves its backward one logits matmul of three; the paper's 10 × 96² grid
# at σ = 6 (377 M) recomputes them.
SAVE_ELEMENTS = 1 << 26


def _exp_(x: Tensor) -> Tensor:
    """In-place exp for arguments ≤ 0 (after max or log-sum-exp subtraction), with exact zeros below e^-80."""
    return F.threshold_(x.clamp_(min=_EXP_FLOOR).exp_(), _EXP_CUT, 0.0)


@dataclass(frozen=True)
class _Geometry:
    h: int
    w: int
    ry: int  # effective radius along rows: min(radius, h − 1) (larger offsets never hit the grid)
    rx: int
    ty: int  # tile size (targets) along rows
    tx: int
    nty: int  # number of tiles along rows
    ntx: int

    @property
    def hp(self) -> int:  # rows after padding targets to whole tiles
        return self.nty * self.ty

    @property
    def wp(self) -> int:
        return self.ntx * self.tx

    @property
    def ky(self) -> int:  # halo rows (sources seen by one tile)
        return self.ty + 2 * self.ry

    @property
    def kx(self) -> int:
        return self.tx + 2 * self.rx


def _geometry(h: int, w: int, radius: int, tile: int) -> _Geometry:
    ry, rx = min(radius, h - 1), min(radius, w - 1)
    ty, tx = min(tile, h), min(tile, w)
    return _Geometry(h, w, ry, rx, ty, tx, -(-h // ty), -(-w // tx))


def _target_tiles(x: Tensor, g: _Geometry) -> Tensor:
    """N×K×h×w → view N×nty×ntx×ty×tx×K of the target tiles (zero-padded to whole tiles)."""
    # channels-last copy first, so that the gathers below read contiguous K-vectors
    x = F.pad(x, (0, g.wp - g.w, 0, g.hp - g.h)).permute(0, 2, 3, 1).contiguous()
    return x.unfold(1, g.ty, g.ty).unfold(2, g.tx, g.tx).permute(0, 1, 2, 4, 5, 3)


def _source_tiles(x: Tensor, g: _Geometry, grid_channel: bool = False) -> Tensor:
    """N×K×h×w → view N×nty×ntx×ky×kx×K' of the halo of every tile (zero-padded by the radius).

    With ``grid_channel`` one channel is appended (K' = K + 1) that is 0 inside the grid and _NEG outside; the
    target tiles carry 1 in that channel, so the matmul itself adds _NEG to the logits of out-of-grid sources.
    """
    pad = (g.rx, g.rx + g.wp - g.w, g.ry, g.ry + g.hp - g.h)
    x = F.pad(x, pad)
    if grid_channel:
        x = torch.cat([x, F.pad(x.new_zeros(x.shape[0], 1, g.h, g.w), pad, value=_NEG)], dim=1)
    x = x.permute(0, 2, 3, 1).contiguous()
    return x.unfold(1, g.ky, g.ty).unfold(2, g.kx, g.tx).permute(0, 1, 2, 4, 5, 3)


def _feature_tiles(feat: Tensor, g: _Geometry) -> tuple[Tensor, Tensor]:
    """Target and halo tiles of F, each with the extra grid channel (1 for targets; 0 / _NEG for sources)."""
    targets = torch.cat([feat, feat.new_ones(feat.shape[0], 1, g.h, g.w)], dim=1)
    return _target_tiles(targets, g), _source_tiles(feat, g, grid_channel=True)


def _untile(x: Tensor, n: int, g: _Geometry) -> Tensor:
    """(N·nty·ntx)×(ty·tx)×K tiles → N×K×h×w."""
    k = x.shape[-1]
    x = x.view(n, g.nty, g.ntx, g.ty, g.tx, k).permute(0, 5, 1, 3, 2, 4).reshape(n, k, g.hp, g.wp)
    return x[:, :, : g.h, : g.w].contiguous()


def _spatial_bias(g: _Geometry, radius: int, sigma: float, dtype: torch.dtype, device) -> Tensor:
    """(ty·tx)×(ky·kx) logit bias: −‖Δp‖²/(2σ²) inside the square window, _NEG outside (same for every tile)."""
    t_r, t_c = torch.meshgrid(torch.arange(g.ty, device=device), torch.arange(g.tx, device=device), indexing="ij")
    s_r, s_c = torch.meshgrid(torch.arange(g.ky, device=device), torch.arange(g.kx, device=device), indexing="ij")
    # source (s_r, s_c) of the halo sits at offset (s_r − ry − t_r, s_c − rx − t_c) from target (t_r, t_c)
    dy = s_r.reshape(1, -1) - g.ry - t_r.reshape(-1, 1)
    dx = s_c.reshape(1, -1) - g.rx - t_c.reshape(-1, 1)
    bias = (dy.square() + dx.square()).to(dtype).mul_(-1.0 / (2.0 * sigma * sigma))
    return bias.masked_fill_((dy.abs() > radius) | (dx.abs() > radius), _NEG)


def _chunks(num_tiles: int, per_tile: int, chunk_elements: int):
    step = max(1, chunk_elements // per_tile)
    for start in range(0, num_tiles, step):
        yield start, min(num_tiles, start + step)


class _LAMFunction(torch.autograd.Function):
    """Windowed LAM with a recompute-per-chunk backward. Inputs S N×C×h×w and F N×D×h×w of the same dtype."""

    @staticmethod
    def forward(ctx, seg: Tensor, feat: Tensor, sigma: float, radius: int, tile: int, chunk_elements: int,
                save_elements: int):
        n, c, h, w = seg.shape
        d = feat.shape[1]
        g = _geometry(h, w, radius, tile)
        bias = _spatial_bias(g, radius, sigma, seg.dtype, seg.device)
        t2, k2 = g.ty * g.tx, g.ky * g.kx
        (f_t, f_s), s_s = _feature_tiles(feat, g), _source_tiles(seg, g)

        num_tiles = n * g.nty * g.ntx
        out = seg.new_empty(num_tiles, t2, c)
        lse = seg.new_empty(num_tiles, t2, 1)
        # the logits of every tile, kept for the backward when they fit the budget (it then skips one of its two
        # big matmuls); only when a gradient will be asked for
        saved = (seg.new_empty(num_tiles, t2, k2)
                 if any(ctx.needs_input_grad[:2]) and num_tiles * t2 * k2 <= save_elements else None)
        for lo, hi in _chunks(num_tiles, t2 * k2, chunk_elements):
            ids = torch.arange(lo, hi, device=seg.device)
            bi, ii, jj = ids // (g.nty * g.ntx), (ids // g.ntx) % g.nty, ids % g.ntx
            q = f_t[bi, ii, jj].reshape(-1, t2, d + 1)
            k = f_s[bi, ii, jj].reshape(-1, k2, d + 1)
            # B×t2×k2 logits, _NEG outside window and grid
            if saved is None:
                z = torch.baddbmm(bias, q, k.transpose(1, 2))
                m = z.amax(dim=2, keepdim=True)
                p = _exp_(z.sub_(m))
            else:
                z = torch.baddbmm(bias, q, k.transpose(1, 2), out=saved[lo:hi])
                m = z.amax(dim=2, keepdim=True)
                p = _exp_(z - m)
            den = p.sum(dim=2, keepdim=True)
            out[lo:hi] = torch.bmm(p, s_s[bi, ii, jj].reshape(-1, k2, c)).div_(den)
            lse[lo:hi] = m + den.log()

        out = _untile(out, n, g)
        lse = _untile(lse, n, g)
        ctx.save_for_backward(seg, feat, out, lse)
        ctx.saved_logits = saved
        ctx.config = (sigma, radius, tile, chunk_elements)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        seg, feat, out, lse = ctx.saved_tensors
        saved, ctx.saved_logits = ctx.saved_logits, None  # freed with this backward (once_differentiable)
        sigma, radius, tile, chunk_elements = ctx.config
        need_seg, need_feat = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n, c, h, w = seg.shape
        d = feat.shape[1]
        g = _geometry(h, w, radius, tile)
        bias = _spatial_bias(g, radius, sigma, seg.dtype, seg.device)
        t2, k2 = g.ty * g.tx, g.ky * g.kx
        grad_out = grad_out.contiguous()
        # delta_b = Σ_a W[a, b] dz-independent term of the softmax backward: dŜ_b · Ŝ_b
        delta = (grad_out * out).sum(dim=1, keepdim=True)

        f_t, f_s = _feature_tiles(feat, g)
        s_t, s_s = _target_tiles(seg, g), _source_tiles(seg, g)
        go_t, go_s = _target_tiles(grad_out, g), _source_tiles(grad_out, g)
        lse_t, lse_s = _target_tiles(lse, g), _source_tiles(lse, g)
        dl_t, dl_s = _target_tiles(delta, g), _source_tiles(delta, g)

        num_tiles = n * g.nty * g.ntx
        grad_seg = seg.new_empty(num_tiles, t2, c) if need_seg else None
        grad_feat = feat.new_empty(num_tiles, t2, d + 1) if need_feat else None  # last channel: grid, dropped
        for lo, hi in _chunks(num_tiles, t2 * k2, chunk_elements):
            ids = torch.arange(lo, hi, device=seg.device)
            bi, ii, jj = ids // (g.nty * g.ntx), (ids // g.ntx) % g.nty, ids % g.ntx
            q = f_t[bi, ii, jj].reshape(-1, t2, d + 1)
            k = f_s[bi, ii, jj].reshape(-1, k2, d + 1)
            if saved is None:  # z[t, h], symmetric in (t, h) inside the grid: the forward's values, bit for bit
                z = torch.baddbmm(bias, q, k.transpose(1, 2))
            else:
                z = saved[lo:hi]
            go_h = go_s[bi, ii, jj].reshape(-1, k2, c)

            # tile positions as *sources* a = t of the halo targets b = h: W[t, h] = exp(z − lse_h)
            p_src = _exp_(z - lse_s[bi, ii, jj].reshape(-1, 1, k2))
            if need_seg:
                grad_seg[lo:hi] = torch.bmm(p_src, go_h)
            if need_feat:
                # dz[t, h] = W[t, h] · (dŜ_h · S_t − delta_h)
                dz = torch.bmm(s_t[bi, ii, jj].reshape(-1, t2, c), go_h.transpose(1, 2))
                dz.sub_(dl_s[bi, ii, jj].reshape(-1, 1, k2)).mul_(p_src)
                del p_src
                # tile positions as *targets* b = t of the halo sources a = h: W[h, t] = exp(z − lse_t)
                p_tgt = _exp_(torch.sub(z, lse_t[bi, ii, jj].reshape(-1, t2, 1)))
                dz2 = torch.bmm(go_t[bi, ii, jj].reshape(-1, t2, c), s_s[bi, ii, jj].reshape(-1, k2, c).transpose(1, 2))
                dz2.sub_(dl_t[bi, ii, jj].reshape(-1, t2, 1)).mul_(p_tgt)
                dz.add_(dz2)
                grad_feat[lo:hi] = torch.bmm(dz, k)

        grad_seg = _untile(grad_seg, n, g) if need_seg else None
        grad_feat = _untile(grad_feat, n, g)[:, :d].contiguous() if need_feat else None
        return grad_seg, grad_feat, None, None, None, None, None


def _check_inputs(seg: Tensor, feat: Tensor) -> None:
    if seg.dim() != 4 or feat.dim() != 4:
        raise ValueError(f"LAM expects seg N×C×h×w and feat N×D×h'×w', got {tuple(seg.shape)} and {tuple(feat.shape)}")
    if seg.shape[0] != feat.shape[0]:
        raise ValueError(f"LAM batch sizes differ: seg {tuple(seg.shape)}, feat {tuple(feat.shape)}")


def _compute_dtype(seg: Tensor, feat: Tensor) -> torch.dtype:
    dtype = torch.promote_types(seg.dtype, feat.dtype)
    return dtype if dtype == torch.float64 else torch.float32


def lam_windowed(
    seg: Tensor,
    feat: Tensor,
    sigma: float = 6.0,
    radius: int | None = None,
    tile: int = 16,
    chunk_elements: int = 1 << 20,
    save_elements: int = SAVE_ELEMENTS,
) -> Tensor:
    """Functional form of :class:`LAM` (same arguments and result)."""
    _check_inputs(seg, feat)
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    radius = math.ceil(4 * sigma) if radius is None else int(radius)
    if radius < 0 or tile < 1 or chunk_elements < 1 or save_elements < 0:
        raise ValueError(f"need radius >= 0, tile >= 1, chunk_elements >= 1, save_elements >= 0; got {radius}, {tile}, "
                         f"{chunk_elements}, {save_elements}")
    dtype = _compute_dtype(seg, feat)
    with torch.autocast(device_type=seg.device.type, enabled=False):
        s, f = seg.to(dtype), feat.to(dtype)
        if f.shape[-2:] != s.shape[-2:]:
            f = F.interpolate(f, size=s.shape[-2:], mode="bilinear", align_corners=False)
        out = _LAMFunction.apply(s.contiguous(), f.contiguous(), float(sigma), radius, int(tile), int(chunk_elements),
                                 int(save_elements))
    return out.to(seg.dtype)


class LAM(nn.Module):
    """Local aggregation module of BLPSeg (spec §2.4): Ŝ[:, b] = Σ_a S[:, a]·W[a, b], W = windowed column softmax.

    Args:
        sigma: Gaussian σ of the spatial prior, in grid cells (BLPSeg: 6 cells at stride 4 = 24 input pixels).
        radius: half-width of the square window (|Δrow|, |Δcol| ≤ radius); ``None`` → ceil(4σ). Any value
            ≥ max(h, w) − 1 gives the untruncated formula.
        tile: side of the target tiles of the blocked computation (a speed knob only; the result does not
            depend on it).
        chunk_elements: number of logits computed at once (bounds the workspace; a memory knob only).
        save_elements: the forward keeps all logits for the backward when there are at most this many (default
            2^26, 256 MiB in float32; 0 = always recompute). A speed/memory knob only: the gradients are the same
            bit for bit.

    Shapes:
        seg: N×C×h×w float logits. feat: N×D×h'×w' float shallow features (bilinearly resized to h×w,
        align_corners=False, when the sizes differ). Returns N×C×h×w logits, dtype of ``seg``.
    """

    def __init__(self, sigma: float = 6.0, radius: int | None = None, tile: int = 16, chunk_elements: int = 1 << 20,
                 save_elements: int = SAVE_ELEMENTS):
        super().__init__()
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)
        self.radius = math.ceil(4 * sigma) if radius is None else int(radius)
        if self.radius < 0:
            raise ValueError(f"radius must be >= 0, got {radius}")
        self.tile = int(tile)
        self.chunk_elements = int(chunk_elements)
        self.save_elements = int(save_elements)

    def forward(self, seg: Tensor, feat: Tensor) -> Tensor:
        return lam_windowed(seg, feat, self.sigma, self.radius, self.tile, self.chunk_elements, self.save_elements)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, radius={self.radius}, tile={self.tile}"


def lam_dense(seg: Tensor, feat: Tensor, sigma: float = 6.0, radius: int | None = None, eps: float = 1e-7) -> Tensor:
    """Dense n×n reference of spec §2.4, step by step (for tests and the benchmark; memory O(N·n²)).

    A_feat = softmax over sources a of F_a·F_b; G = exp(−‖p_a − p_b‖²/(2σ²)), set to 0 outside the square window
    |Δrow|, |Δcol| ≤ ``radius`` when a radius is given (``None`` = untruncated, as in the spec);
    W = (A_feat ⊙ G) / (Σ_a A_feat ⊙ G + eps); Ŝ = S·W. Differentiable by autograd.
    """
    _check_inputs(seg, feat)
    n, c, h, w = seg.shape
    if feat.shape[-2:] != seg.shape[-2:]:
        feat = F.interpolate(feat, size=(h, w), mode="bilinear", align_corners=False)
    f = feat.flatten(2)  # N×D×n
    a_feat = torch.bmm(f.transpose(1, 2), f).softmax(dim=1)  # [a, b], softmax over the source index a
    rows, cols = torch.meshgrid(torch.arange(h, device=seg.device), torch.arange(w, device=seg.device), indexing="ij")
    pos = torch.stack([rows.flatten(), cols.flatten()], dim=1).to(f.dtype)  # n×2
    gauss = _exp_(torch.cdist(pos, pos).square_().mul_(-1.0 / (2.0 * sigma * sigma)))  # no grad: fixed prior
    if radius is not None:
        gauss.masked_fill_(torch.cdist(pos, pos, p=float("inf")) > radius, 0.0)
    k = a_feat * gauss
    weights = k / (k.sum(dim=1, keepdim=True) + eps)
    return torch.bmm(seg.flatten(2), weights).view(n, c, h, w)
