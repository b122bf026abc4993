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

Implementation, eager mode (``_LAMPairsFunction``: each pair of tiles once):
    * The grid is cut into tiles of ty×tx positions (ty = min(tile, h), tx = min(tile, w); the last ones completed
      with padding that is never a source). z is symmetric (F_a·F_b, and the Gaussian and the window are symmetric
      in a, b), so the t2×t2 block Z_AB = F_Aᵀ·F_B + bias of a pair of tiles serves both directions: column j holds
      the logits of target b_j over the sources of A, row i those of target a_i over the sources of B. Only the half
      set of tile offsets o = (dy, dx) (dy > 0, or dy = 0 and dx ≥ 0) with |dy| ≤ ⌈radius/ty⌉, |dx| ≤ ⌈radius/tx⌉
      is computed, and only pairs with both tiles in the grid: on the horse network's 48² grid at radius 16, tile 8,
      306 blocks of 64² per image (1.25 M logits) where a 40² halo per tile took 36 × 64 × 40² = 3.7 M, of which
      the positions of the clamped halos beyond the window (up to 4 tiles away at a border) were masked anyway.
      One batched matmul per chunk of pairs (all of one offset, so one bias table): the bias is −Δ²/(2σ²) and _NEG
      outside the window.
    * Forward: pass 1, the max logit of every target over all its blocks (column and row maxima of each block);
      pass 2, E = exp(z − max) per direction and one skinny matmul each, [S_A; 1]·E, accumulated per target tile
      (``index_add_``; tile ids are unique within a chunk) into Σ_a E[a, b]·S_a and Σ_a E[a, b] (≥ 1: the max term).
      Ŝ_b is their ratio.
    * Backward: W[a, b] = E[a, b] / Σ_a' E[a', b]; the normaliser is put onto the target's factors (dŜ_b, δ_b), so
      the forward's E serve unchanged: G[a, b] = W[a, b]·(dŜ_b·S_a − δ_b) = E[a, b]·([S_a, 1]·[dŜ_b, −δ_b]/ΣE_b),
      one rank-(C+1) matmul per direction; the product F_a·F_b feeds z[a, b] and z[b, a], so
      dF_A += (G_AB + G_BAᵀ)·F_B and dF_B += (G_AB + G_BAᵀ)ᵀ·F_A (for Z_AA: dF_A += (G + Gᵀ)·F_A);
      dS_a = Σ_b W[a, b]·dŜ_b likewise per direction.
    * The forward keeps the E blocks (two per pair, one per Z_AA) for the backward when there are at most
      ``save_elements`` of them; otherwise the forward computes each block's logits twice (once per pass) and the
      backward recomputes E per chunk, the same values bit for bit. Tiles are processed in chunks of at most
      ``chunk_elements`` logits: the workspace is constant and the work grows with positions × window.
    * Dot products and exponentials run in float32 (float64 inputs stay float64), with max subtraction, also
      under fp16/bf16 autocast (the reference's raw exp(F·F) overflows fp16). The output is cast back to the
      dtype of ``seg``; it is a convex combination of ``seg`` values, so it cannot overflow that dtype.
    * Measured (CPU, one thread, forward + backward at the horse shapes 8 × 48², C = 2, D = 128, σ = 4, tile 8):
      0.25–0.30 s of CPU time against 0.61–0.66 s for the halo path below, interleaved in one process.

Implementation for tracing (``_LAMFunction``, blocked local attention with per-tile halos; also ``impl="halo"``):
    * Targets are cut into tiles as above. Each tile attends to its halo: ky×kx source positions with
      ky = min(ty + 2·radius, h), kx = min(tx + 2·radius, w), *clamped into the grid* (a tile near a border takes
      the ky rows nearest to it, not rows outside the image). The halo always holds the whole window of every target
      of the tile, and every source is a real grid position, so no source needs masking for being out of the grid.
    * One batched matmul per chunk of tiles gives the B×(ty·tx)×(ky·kx) logits, added onto a per-tile bias: the
      Gaussian term −Δ²/(2σ²) per axis (separable, from two small per-tile-row / per-tile-column tables), _NEG outside
      the square window. The target-side weights are a fused ``softmax``.
    * A custom ``torch.autograd.Function`` stores S, F, the output Ŝ and the log-sum-exp per target, and the
      logits themselves when all of them fit ``save_elements`` (otherwise the backward recomputes them per chunk).
      Every gradient is a *gather* over the halo (no scatter-add): for a tile of positions t and its halo h,
      dF_t = Σ_h dz[t, h] F_h (t as target) + Σ_h dz[h, t] F_h (t as source), dS_t = Σ_h W[t, h] dŜ_h.
    * ONNX: the graph is traced (``weakseg export``) with dynamic batch and image size. Every size below is derived
      from the input's traced shape with tensor operations (``min(tile, h)`` is the length of ``arange(h)[:tile]``,
      tile starts and halo offsets are ``arange`` results), and the result of each chunk is a new tensor, never a
      slice assignment into a preallocated buffer (which the tracer drops: the previous version exported a graph
      whose LAM output was a constant). The one thing a trace cannot follow is a Python loop over chunks, so a trace
      always takes the one-chunk path (``torch.jit.is_tracing()``; the same code eager mode runs for any input below
      ``chunk_elements`` logits): the exported graph computes all tiles of an input in one batch, e.g. ≈ 150 MiB of
      logits for a 500×375 image at σ = 6. (The pair path's pair lists are Python-sized from the input shape, which
      a trace would freeze; so tracing always takes this path.)

Nothing depends on the input size: the module has no parameters or buffers (empty ``state_dict``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LAM", "lam_dense", "lam_windowed"]

# Logit bias of out-of-window pairs: finite, so that a fully masked row (only possible for the zero-padded targets
# that complete the last tile, which are cropped away) gives no NaN, and so that 0·_NEG = 0 in the backward matmuls.
_NEG = -1.0e30
# exp() of arguments that underflow takes a slow path on CPU (25–40× slower per element); arguments are clamped
# to _EXP_FLOOR and the results ≤ _EXP_CUT (> exp(_EXP_FLOOR)) set to exactly 0. Values dropped this way are
# < 2e-35 relative to the largest weight of their column, i.e. what float32 underflow would do anyway.
# (``torch.softmax`` has no such slow path: measured 0.35 ms vs 3.0 ms for exp_ on 256×2304 half-masked logits.)
_EXP_FLOOR = -80.0
_EXP_CUT = 2.0e-35
# Default budget of values the forward keeps for the backward (2^26 float32 = 256 MiB): the pair path keeps its
# weights E, BLPSeg's CPU horse network (8 × 48² grid, σ = 4, tile 8: 8 × (2 × 270 + 36) blocks of 64²) 18.9 M, and
# its backward then has no logits matmul and no exp; the paper's 10 × 96² grid at σ = 6 (212 M) recomputes them.
# The halo path (tracing) keeps its logits under the same budget.
SAVE_ELEMENTS = 1 << 26


def _exp_(x: Tensor) -> Tensor:
    """In-place exp for arguments ≤ 0 (after max or log-sum-exp subtraction), with exact zeros below e^-80."""
    return F.threshold_(x.clamp_(min=_EXP_FLOOR).exp_(), _EXP_CUT, 0.0)


class _Axis:
    """Tiling of one grid axis of ``size`` positions (an int, or a traced size during ONNX export).

    Attributes: ``t`` tile length min(tile, size); ``k`` halo length min(t + 2·radius, size); ``count`` tiles;
    ``src`` count×k halo positions of every tile (clamped into [0, size)); ``bias`` count×t×k logit bias
    −Δ²/(2σ²) between target (tile start + row) and source, _NEG where |Δ| > radius.
    """

    def __init__(self, size, tile: int, radius: int, sigma: float, dtype: torch.dtype, device):
        pos = torch.arange(size, device=device)
        # sizes as lengths of slices: min() of a traced size would be frozen into an exported graph
        self.t = pos[:tile].shape[0]
        self.k = pos[: tile + 2 * radius].shape[0]  # = min(t + 2·radius, size) also when t = size < tile
        self.count = (size + self.t - 1) // self.t
        start = torch.arange(self.count, device=device) * self.t
        # halo start: radius before the tile, moved inside the grid (the halo is never longer than the grid)
        first = (start - radius).clamp(min=0).clamp(max=size - self.k)
        self.src = first[:, None] + torch.arange(self.k, device=device)
        offset = self.src[:, None, :] - (start[:, None] + torch.arange(self.t, device=device))[:, :, None]
        self.bias = (offset.square().to(dtype).mul(-1.0 / (2.0 * sigma * sigma))
                     .masked_fill(offset.abs() > radius, _NEG))
        self.pad = self.count * self.t - size  # zero rows/columns completing the last tile


class _Tiling:
    """Both axes of an h×w grid, and the gathers between N×K×h×w maps and B×positions×K tiles."""

    def __init__(self, n, h, w, tile: int, radius: int, sigma: float, dtype: torch.dtype, device):
        self.n, self.h, self.w = n, h, w
        self.y = _Axis(h, tile, radius, sigma, dtype, device)
        self.x = _Axis(w, tile, radius, sigma, dtype, device)
        self.t2 = self.y.t * self.x.t
        self.k2 = self.y.k * self.x.k
        self.num_tiles = n * self.y.count * self.x.count

    def chunks(self, chunk_elements: int, device):
        """Yield (tile ids, slice of the tile dimension) per chunk of at most ``chunk_elements`` logits.

        One chunk: all tiles, ``slice(None)`` and ids from ``arange(num_tiles)``. A trace (ONNX export) always
        takes this path: the number of chunks is a Python loop count, which a traced graph would keep from the
        tracing input (an export at 128×160 then failed at any other size); the one-chunk path is the same
        computation, only without the workspace bound, and valid for every input size."""
        step = chunk_elements // (self.t2 * self.k2)
        if torch.jit.is_tracing() or step >= self.num_tiles:
            yield torch.arange(self.num_tiles, device=device), slice(None)
            return
        step = max(1, int(step))
        for lo in range(0, int(self.num_tiles), step):
            hi = min(int(self.num_tiles), lo + step)
            yield torch.arange(lo, hi, device=device), slice(lo, hi)

    def targets(self, x: Tensor) -> Tensor:
        """N×K×h×w → num_tiles×(ty·tx)×K target tiles (zero-padded to whole tiles), tile id = (n, row, col)."""
        k = x.shape[1]
        x = F.pad(x, (0, self.x.pad, 0, self.y.pad))
        x = x.reshape(self.n, k, self.y.count, self.y.t, self.x.count, self.x.t).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(self.num_tiles, self.t2, k)

    def untile(self, x: Tensor) -> Tensor:
        """num_tiles×(ty·tx)×K → N×K×h×w (padding cropped)."""
        k = x.shape[-1]
        x = x.reshape(self.n, self.y.count, self.x.count, self.y.t, self.x.t, k).permute(0, 5, 1, 3, 2, 4)
        x = x.reshape(self.n, k, self.y.count * self.y.t, self.x.count * self.x.t)
        return x[:, :, : self.h, : self.w]

    def halos(self, x_cl: Tensor, ids: Tensor) -> Tensor:
        """Channels-last N×h×w×K map → B×(ky·kx)×K halo of the tiles ``ids``.

        One ``index_select`` of whole K-vectors by flat position (about 2× faster here than advanced indexing
        with three index tensors, which gathers element by element)."""
        b, i, j = self.split(ids)
        flat = ((b[:, None] * self.h + self.y.src[i])[:, :, None] * self.w + self.x.src[j][:, None, :]).reshape(-1)
        k = x_cl.shape[-1]
        return x_cl.reshape(-1, k).index_select(0, flat).reshape(ids.shape[0], self.k2, k)

    def bias(self, ids: Tensor) -> Tensor:
        """B×(ty·tx)×(ky·kx) logit bias of the tiles ``ids`` (a new tensor: the logits are added onto it)."""
        _, i, j = self.split(ids)
        bias = self.y.bias[i][:, :, None, :, None] + self.x.bias[j][:, None, :, None, :]
        return bias.reshape(ids.shape[0], self.t2, self.k2)

    def split(self, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        per_image = self.y.count * self.x.count
        return ids // per_image, (ids // self.x.count) % self.y.count, ids % self.x.count


def _channels_last(x: Tensor) -> Tensor:
    return x.permute(0, 2, 3, 1).contiguous()


class _LAMFunction(torch.autograd.Function):
    """Windowed LAM with a recompute-per-chunk backward. Inputs S N×C×h×w and F N×D×h×w of the same dtype."""

    @staticmethod
    def forward(ctx, seg: Tensor, feat: Tensor, sigma: float, radius: int, tile: int, chunk_elements: int,
                save_elements: int):
        n, c, h, w = seg.shape
        g = _Tiling(n, h, w, tile, radius, sigma, seg.dtype, seg.device)
        q_all = g.targets(feat)
        src = _channels_last(torch.cat([feat, seg], dim=1))  # one gather per chunk for F and S
        d = feat.shape[1]
        # the logits of every tile, kept for the backward when they fit the budget (it then skips their matmul);
        # only when a gradient will be asked for
        keep = any(ctx.needs_input_grad[:2]) and g.num_tiles * g.t2 * g.k2 <= save_elements
        outs, lses, saved = [], [], []
        for ids, sl in g.chunks(chunk_elements, seg.device):
            halo = g.halos(src, ids)
            # B×t2×k2 logits, _NEG outside the window
            z = g.bias(ids).baddbmm_(q_all[sl], halo[..., :d].transpose(1, 2))
            p = torch.softmax(z, dim=2)
            outs.append(torch.bmm(p, halo[..., d:].contiguous()))
            # log-sum-exp of each target's logits: max + log(1 / weight of the max)
            lses.append(z.amax(dim=2, keepdim=True) - p.amax(dim=2, keepdim=True).log())
            if keep:
                saved.append(z)
            del z, p
        out = g.untile(outs[0] if len(outs) == 1 else torch.cat(outs)).contiguous()
        lse = g.untile(lses[0] if len(lses) == 1 else torch.cat(lses)).contiguous()
        ctx.save_for_backward(seg, feat, out, lse)
        ctx.saved_logits = saved if keep else None
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
        g = _Tiling(n, h, w, tile, radius, sigma, seg.dtype, seg.device)
        grad_out = grad_out.contiguous()
        # delta_b = Σ_a W[a, b]·(dŜ_b · S_a) = dŜ_b · Ŝ_b, the softmax backward's subtracted term
        delta = (grad_out * out).sum(dim=1, keepdim=True)
        # per position: S | 1 | dŜ | −δ, so that dŜ_h·S_t − δ_h = [S_t, 1]·[dŜ_h, −δ_h] and
        # dŜ_t·S_h − δ_t = [dŜ_t, −δ_t]·[S_h, 1] are one small matmul each; the halos also carry the lse
        aux = torch.cat([seg, torch.ones_like(delta), grad_out, -delta], dim=1)
        aux_t = g.targets(aux)
        aux_s = _channels_last(torch.cat([aux, lse], dim=1))
        feat_s = _channels_last(feat)
        q_all = g.targets(feat) if saved is None else None

        grads_seg, grads_feat = [], []
        for num, (ids, sl) in enumerate(g.chunks(chunk_elements, seg.device)):
            halo = g.halos(aux_s, ids)  # B×k2×(2C+3)
            k = g.halos(feat_s, ids)  # B×k2×D
            if saved is None:  # z[t, h], symmetric in (t, h): the forward's values, bit for bit
                z = g.bias(ids).baddbmm_(q_all[sl], k.transpose(1, 2))
            else:
                z = saved[num]
                saved[num] = None
            # tile positions as *sources* a = t of the halo targets b = h: W[t, h] = exp(z − lse_h)
            w_src = _exp_(z - halo[..., 2 * c + 2].contiguous().unsqueeze(1))
            if need_seg:
                grads_seg.append(torch.bmm(w_src, halo[..., c + 1: 2 * c + 1].contiguous()))
            if need_feat:
                a = aux_t[sl]
                # dz[t, h] = W[t, h]·(dŜ_h·S_t − δ_h) + W[h, t]·(dŜ_t·S_h − δ_t), W[h, t] = softmax over h of z[t, :]
                # (small operands made contiguous: the strided rank-(C+1) bmm took 10× longer)
                dz = torch.bmm(a[..., : c + 1].contiguous(), halo[..., c + 1: 2 * c + 2].transpose(1, 2).contiguous())
                dz.mul_(w_src)
                del w_src
                w_tgt = torch.softmax(z, dim=2)
                del z
                dz.addcmul_(torch.bmm(a[..., c + 1:].contiguous(), halo[..., : c + 1].transpose(1, 2).contiguous()),
                            w_tgt)
                del w_tgt
                grads_feat.append(torch.bmm(dz, k))
            else:
                del w_src, z

        def assemble(parts: list[Tensor]) -> Tensor:
            return g.untile(parts[0] if len(parts) == 1 else torch.cat(parts)).contiguous()

        grad_seg = assemble(grads_seg) if need_seg else None
        grad_feat = assemble(grads_feat) if need_feat else None
        return grad_seg, grad_feat, None, None, None, None, None


class _Pairs:
    """Tiles of an N×h×w grid and the pairs of tiles within the window, each unordered pair once.

    Tiles: ty×tx positions (ty = min(tile, h), tx = min(tile, w)), ny×nx per image, the last ones completed with
    padding; tile id = (image·ny + row)·nx + col, position p = r·tx + c inside a tile (t2 = ty·tx positions).
    Pairs (A, B = A + o) for the half set of tile offsets o = (dy, dx): dy > 0, or dy = 0 and dx ≥ 0, with
    |dy| ≤ ⌈radius / ty⌉ and |dx| ≤ ⌈radius / tx⌉ (tiles farther apart hold no position pair within the window),
    and B inside the grid. A block Z_AB[i, j] = z[a_i, b_j] serves both directions (z is symmetric); offset 0's
    blocks Z_AA are the tiles' own t2×t2 logits.
    """

    def __init__(self, n: int, h: int, w: int, tile: int, radius: int, sigma: float, dtype: torch.dtype, device):
        self.n, self.h, self.w = n, h, w
        self.ty, self.tx = min(tile, h), min(tile, w)
        self.ny, self.nx = -(-h // self.ty), -(-w // self.tx)
        self.t2 = self.ty * self.tx
        self.num_tiles = n * self.ny * self.nx
        ry = min((radius + self.ty - 1) // self.ty, self.ny - 1)
        rx = min((radius + self.tx - 1) // self.tx, self.nx - 1)
        self.offsets = [(0, dx) for dx in range(rx + 1)] + [(dy, dx) for dy in range(1, ry + 1)
                                                              for dx in range(-rx, rx + 1)]
        r = torch.arange(self.t2, device=device) // self.tx
        c = torch.arange(self.t2, device=device) % self.tx
        tiles = torch.arange(self.num_tiles, device=device).view(n, self.ny, self.nx)
        biases, self.pairs = [], []
        for dy, dx in self.offsets:
            # t2×t2 logit bias −Δ²/(2σ²) between the positions of A (rows) and of B (columns), _NEG off the window
            drow = (dy * self.ty + r[None, :] - r[:, None]).to(dtype)
            dcol = (dx * self.tx + c[None, :] - c[:, None]).to(dtype)
            bias = (drow.square() + dcol.square()).mul_(-1.0 / (2.0 * sigma * sigma))
            biases.append(bias.masked_fill_((drow.abs() > radius) | (dcol.abs() > radius), _NEG))
            a = tiles[:, : self.ny - dy, max(0, -dx): self.nx - max(0, dx)].reshape(-1)
            self.pairs.append((a, a + dy * self.nx + dx))
        self.bias = torch.stack(biases)  # offsets×t2×t2
        # positions completing the last tiles are no sources: _NEG on their rows and columns of every block
        self.pad = None
        if self.ny * self.ty != h or self.nx * self.tx != w:
            self.pad = self.tile(torch.zeros(n, 1, h, w, dtype=dtype, device=device), fill=_NEG)[:, 0]  # T×t2
        # weights kept by the forward for the backward: two per block (both directions), one per Z_AA
        blocks = sum(a.shape[0] for a, _ in self.pairs)
        self.num_weights = (2 * blocks - self.pairs[0][0].shape[0]) * self.t2 * self.t2

    def chunks(self, chunk_elements: int):
        """Yield (offset index, A tile ids, B tile ids) per chunk of at most ``chunk_elements`` logits (≥ 1 block),
        offset by offset."""
        step = max(1, chunk_elements // (self.t2 * self.t2))
        for k, (a, b) in enumerate(self.pairs):
            for lo in range(0, a.shape[0], step):
                yield k, a[lo: lo + step], b[lo: lo + step]

    def tile(self, x: Tensor, fill: float = 0.0) -> Tensor:
        """N×K×h×w → T×K×t2 tiles, channels first (``fill`` on the positions completing the last tiles)."""
        k = x.shape[1]
        x = F.pad(x, (0, self.nx * self.tx - self.w, 0, self.ny * self.ty - self.h), value=fill)
        x = x.reshape(self.n, k, self.ny, self.ty, self.nx, self.tx).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(self.num_tiles, k, self.t2)

    def untile(self, x: Tensor) -> Tensor:
        """T×K×t2 → N×K×h×w (padding cropped)."""
        k = x.shape[1]
        x = x.reshape(self.n, self.ny, self.nx, k, self.ty, self.tx).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(self.n, k, self.ny * self.ty, self.nx * self.tx)[:, :, : self.h, : self.w].contiguous()

    def logits(self, feat_t: Tensor, k: int, a: Tensor, b: Tensor) -> Tensor:
        """B×t2×t2 blocks Z_AB = F_Aᵀ·F_B + bias of offset k (feat_t: T×D×t2 tiles)."""
        z = torch.baddbmm(self.bias[k], feat_t.index_select(0, a).transpose(1, 2), feat_t.index_select(0, b))
        if self.pad is not None:
            z += self.pad.index_select(0, a)[:, :, None]
            z += self.pad.index_select(0, b)[:, None, :]
        return z

    def weights(self, z: Tensor, top: Tensor, k: int, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor | None]:
        """Unnormalised weights of a chunk of blocks (z is overwritten): E_ab[i, j] = exp(z[a_i, b_j] − max_b) of
        source a_i for target b_j and, off offset 0, E_ba[i, j] = exp(z[a_i, b_j] − max_a) of source b_j for
        target a_i; ``top``: T×t2 max logit per target."""
        e_ba = _exp_(z - top.index_select(0, a)[:, :, None]) if k else None
        return _exp_(z.sub_(top.index_select(0, b)[:, None, :])), e_ba


class _LAMPairsFunction(torch.autograd.Function):
    """Windowed LAM over pairs of tiles (eager mode). Inputs S N×C×h×w and F N×D×h×w of the same dtype."""

    @staticmethod
    def forward(ctx, seg: Tensor, feat: Tensor, sigma: float, radius: int, tile: int, chunk_elements: int,
                save_elements: int):
        n, c, h, w = seg.shape
        g = _Pairs(n, h, w, tile, radius, sigma, seg.dtype, seg.device)
        feat_t = g.tile(feat).contiguous()  # T×D×t2
        # S | 1 per source: one skinny matmul per direction gives both Σ_a E[a, b]·S_a and Σ_a E[a, b]
        seg1 = g.tile(torch.cat([seg, torch.ones_like(seg[:, :1])], dim=1)).contiguous()  # T×(C+1)×t2
        store = g.num_weights <= save_elements
        # pass 1: every target's max logit over its sources, from the columns and (off offset 0) rows of the blocks
        top = torch.full((g.num_tiles, g.t2), -math.inf, dtype=seg.dtype, device=seg.device)
        logits = []
        for k, a, b in g.chunks(chunk_elements):
            z = g.logits(feat_t, k, a, b)
            top.index_copy_(0, b, torch.maximum(top.index_select(0, b), z.amax(dim=1)))
            if k:
                top.index_copy_(0, a, torch.maximum(top.index_select(0, a), z.amax(dim=2)))
            if store:
                logits.append(z)
        # pass 2: per target b, Σ_a E[a, b]·[S_a, 1] (one index_add per direction: tile ids are unique in a chunk)
        acc = torch.zeros_like(seg1)
        saved = []
        for num, (k, a, b) in enumerate(g.chunks(chunk_elements)):
            z = logits[num] if store else g.logits(feat_t, k, a, b)
            if store:
                logits[num] = None
            e_ab, e_ba = g.weights(z, top, k, a, b)
            acc.index_add_(0, b, torch.bmm(seg1.index_select(0, a), e_ab))
            if k:
                acc.index_add_(0, a, torch.bmm(seg1.index_select(0, b), e_ba.transpose(1, 2)))
            if store:
                saved.append((e_ab, e_ba))
            del z, e_ab, e_ba
        inv_total = acc[:, c:].reciprocal()  # T×1×t2; Σ_a E[a, b] ≥ 1 (the max term)
        out_t = acc[:, :c] * inv_total
        ctx.save_for_backward(feat_t, seg1, out_t, top, inv_total)
        ctx.saved_weights = saved if store and any(ctx.needs_input_grad[:2]) else None
        ctx.pairs, ctx.chunk_elements = g, chunk_elements
        return g.untile(out_t)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        feat_t, seg1, out_t, top, inv_total = ctx.saved_tensors
        saved, ctx.saved_weights = ctx.saved_weights, None  # freed with this backward (once_differentiable)
        g = ctx.pairs
        need_seg, need_feat = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        go = g.tile(grad_out.contiguous())  # T×C×t2, zero on the padding
        # W[a, b] = E[a, b] / Σ_a' E[a', b]: the normaliser goes onto the target side's factors, so that the
        # kept E serve as they are. Per target b: dŜ_b | −δ_b (δ_b = dŜ_b·Ŝ_b), so that
        # G[a, b] = W[a, b]·(dŜ_b·S_a − δ_b) = E[a, b]·([S_a, 1]·dual_b)
        dual = torch.cat([go, -(go * out_t).sum(dim=1, keepdim=True)], dim=1).mul_(inv_total)  # T×(C+1)×t2
        go_n = dual[:, :-1]
        grad_seg = torch.zeros_like(go) if need_seg else None
        grad_feat = torch.zeros_like(feat_t) if need_feat else None
        for num, (k, a, b) in enumerate(g.chunks(ctx.chunk_elements)):
            if saved is not None:
                (e_ab, e_ba), saved[num] = saved[num], None
            else:  # the forward's values bit for bit
                e_ab, e_ba = g.weights(g.logits(feat_t, k, a, b), top, k, a, b)
            if need_seg:  # dS_a = Σ_b W[a, b]·dŜ_b
                grad_seg.index_add_(0, a, torch.bmm(go_n.index_select(0, b), e_ab.transpose(1, 2)))
                if k:
                    grad_seg.index_add_(0, b, torch.bmm(go_n.index_select(0, a), e_ba))
            if need_feat:
                # F_a·F_b feeds z[a, b] (column b) and z[b, a] (column a): dF_a = Σ_b (G[a, b] + G[b, a])·F_b
                s_a, d_a = seg1.index_select(0, a), dual.index_select(0, a)
                dz = torch.bmm(s_a.transpose(1, 2), dual.index_select(0, b) if k else d_a).mul_(e_ab)
                if k:
                    dz.addcmul_(torch.bmm(d_a.transpose(1, 2), seg1.index_select(0, b)), e_ba)
                    grad_feat.index_add_(0, a, torch.bmm(feat_t.index_select(0, b), dz.transpose(1, 2)))
                    grad_feat.index_add_(0, b, torch.bmm(feat_t.index_select(0, a), dz))
                else:  # Z_AA: G[a_j, a_i] is the transposed block
                    grad_feat.index_add_(0, a, torch.bmm(feat_t.index_select(0, a), dz + dz.transpose(1, 2)))
                del dz
            del e_ab, e_ba
        grad_seg = g.untile(grad_seg) if need_seg else None
        grad_feat = g.untile(grad_feat) if need_feat else None
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
    tile: int = 8,
    chunk_elements: int = 1 << 20,
    save_elements: int = SAVE_ELEMENTS,
    impl: str = "auto",
) -> Tensor:
    """Functional form of :class:`LAM` (same arguments and result).

    ``impl``: ``"auto"`` computes each pair of tiles once (``_LAMPairsFunction``), except while tracing (ONNX
    export), which takes the per-tile halo path; ``"halo"`` forces the halo path (tests compare the two)."""
    _check_inputs(seg, feat)
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    radius = math.ceil(4 * sigma) if radius is None else int(radius)
    if impl not in ("auto", "halo"):
        raise ValueError(f"impl must be 'auto' or 'halo', got {impl!r}")
    if radius < 0 or tile < 1 or chunk_elements < 1 or save_elements < 0:
        raise ValueError(f"need radius >= 0, tile >= 1, chunk_elements >= 1, save_elements >= 0; got {radius}, {tile}, "
                         f"{chunk_elements}, {save_elements}")
    dtype = _compute_dtype(seg, feat)
    with torch.autocast(device_type=seg.device.type, enabled=False):
        s, f = seg.to(dtype), feat.to(dtype)
        if f.shape[-2:] != s.shape[-2:]:
            f = F.interpolate(f, size=s.shape[-2:], mode="bilinear", align_corners=False)
        fn = _LAMFunction if torch.jit.is_tracing() or impl == "halo" else _LAMPairsFunction
        out = fn.apply(s.contiguous(), f.contiguous(), float(sigma), radius, int(tile), int(chunk_elements),
                       int(save_elements))
    return out.to(seg.dtype)


class LAM(nn.Module):
    """Local aggregation module of BLPSeg (spec §2.4): Ŝ[:, b] = Σ_a S[:, a]·W[a, b], W = windowed column softmax.

    Args:
        sigma: Gaussian σ of the spatial prior, in grid cells (BLPSeg: 6 cells at stride 4 = 24 input pixels).
        radius: half-width of the square window (|Δrow|, |Δcol| ≤ radius); ``None`` → ceil(4σ). Any value
            ≥ max(h, w) − 1 gives the untruncated formula.
        tile: side of the tiles of the blocked computation (a speed knob only; the result does not depend on it).
            Default 8: on the horse network's 48² grid at radius 16 (a multiple of 8, so the farthest tile pairs
            are two tiles apart) the pair path measured 0.25 s forward + backward, against 0.30–0.40 s at tiles 6,
            12 and 16; on the demo's 16² grid at radius 8 all sizes from 4 to 16 are within 0.002 s.
        chunk_elements: number of logits computed at once (bounds the workspace; a memory knob only).
        save_elements: the forward keeps the values its backward needs (the pair path's weights, two per block;
            the halo path's logits) when there are at most this many (default 2^26, 256 MiB in float32; 0 = always
            recompute). A speed/memory knob only: the gradients are the same bit for bit.

    Shapes:
        seg: N×C×h×w float logits. feat: N×D×h'×w' float shallow features (bilinearly resized to h×w,
        align_corners=False, when the sizes differ). Returns N×C×h×w logits, dtype of ``seg``.
    """

    def __init__(self, sigma: float = 6.0, radius: int | None = None, tile: int = 8, chunk_elements: int = 1 << 20,
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
