"""LAM (spec §2.4, check §6b.3): windowed vs the dense n×n formula, gradients, autocast, statelessness."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from weakseg.modules.lam import _NEG, LAM, _Pairs, lam_dense, lam_windowed


def _inputs(n, c, d, h, w, scale=0.7, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    seg = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    feat = torch.randn(n, d, h, w, generator=g, dtype=dtype) * scale
    return seg, feat


def _spec_column_softmax(seg, feat, sigma):
    """Untruncated formula of §6b.3, written independently: softmax over a of F_a·F_b − ‖p_a − p_b‖²/(2σ²)."""
    n, c, h, w = seg.shape
    f = feat.flatten(2)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten().to(f.dtype), xs.flatten().to(f.dtype)
    d2 = (ys[:, None] - ys[None, :]) ** 2 + (xs[:, None] - xs[None, :]) ** 2
    logits = f.transpose(1, 2) @ f - d2 / (2 * sigma**2)  # [a, b]
    weights = logits.softmax(dim=1)
    return (seg.flatten(2) @ weights).view(n, c, h, w)


@pytest.mark.parametrize(
    "n, c, d, h, w, sigma, radius, tile",
    [
        (2, 3, 5, 7, 9, 1.5, 2, 4),  # several tiles, last ones padded, non-square
        (1, 4, 6, 12, 10, 2.0, 3, 5),
        (1, 2, 3, 6, 5, 1.0, 20, 16),  # radius larger than the grid, single tile
        (1, 2, 4, 1, 7, 1.0, 2, 4),  # one row
        (2, 3, 8, 13, 11, 3.0, 5, 16),  # default tile, radius < grid
    ],
)
def test_windowed_matches_dense_with_same_truncation(n, c, d, h, w, sigma, radius, tile):
    seg, feat = _inputs(n, c, d, h, w)
    out = LAM(sigma, radius, tile=tile)(seg, feat)
    ref = lam_dense(seg.double(), feat.double(), sigma, radius, eps=0.0)
    assert out.shape == seg.shape and out.dtype == seg.dtype
    assert (out.double() - ref).abs().max() < 1e-4
    # the spec's +1e-7 in the column normalisation changes nothing visible
    ref_eps = lam_dense(seg.double(), feat.double(), sigma, radius)
    assert (out.double() - ref_eps).abs().max() < 1e-4
    # the chunk size only bounds memory: one tile per chunk gives the same numbers
    out_small = lam_windowed(seg, feat, sigma, radius, tile=tile, chunk_elements=1)
    assert (out_small - out).abs().max() < 1e-5


def test_weights_are_a_windowed_column_softmax():
    # With S = identity over positions (C = n channels), output channel a at b is W[a, b] itself.
    h, w, radius = 5, 6, 2
    n_pos = h * w
    seg = torch.eye(n_pos, dtype=torch.float64).view(1, n_pos, h, w)
    _, feat = _inputs(1, 1, 4, h, w, dtype=torch.float64)
    weights = LAM(sigma=1.5, radius=radius, tile=4)(seg, feat).view(n_pos, n_pos)  # [a, b]
    assert torch.allclose(weights.sum(dim=0), torch.ones(n_pos, dtype=torch.float64), atol=1e-12)
    assert (weights >= 0).all()
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    cheb = torch.maximum((ys.flatten()[:, None] - ys.flatten()[None, :]).abs(),
                         (xs.flatten()[:, None] - xs.flatten()[None, :]).abs())
    assert (weights[cheb > radius] == 0).all()
    assert (weights[cheb <= radius] > 0).all()


def test_constant_map_stays_constant():
    _, feat = _inputs(2, 1, 8, 10, 13, scale=2.0)
    seg = torch.full((2, 3, 10, 13), 0.0)
    seg[:, 0], seg[:, 1], seg[:, 2] = 2.5, -1.0, 7.0
    out = LAM(sigma=2.0, radius=4, tile=4)(seg, feat)
    assert (out - seg).abs().max() < 1e-5


def test_huge_radius_equals_untruncated_spec_formula():
    seg, feat = _inputs(2, 3, 6, 9, 11, scale=0.8, dtype=torch.float64)
    out = LAM(sigma=6.0, radius=10**6)(seg, feat)
    ref = _spec_column_softmax(seg, feat, 6.0)
    assert (out - ref).abs().max() < 1e-10
    assert (out - lam_dense(seg, feat, 6.0, radius=None)).abs().max() < 1e-4  # spec steps 1–4 incl. +1e-7


def test_default_radius_is_four_sigma():
    assert LAM(6.0).radius == 24 and LAM(1.3).radius == 6 and LAM(6.0, radius=3).radius == 3


def test_feat_is_resized_bilinearly():
    seg, _ = _inputs(1, 2, 1, 8, 10)
    feat = torch.randn(1, 4, 4, 5, generator=torch.Generator().manual_seed(1))
    resized = F.interpolate(feat, size=(8, 10), mode="bilinear", align_corners=False)
    lam = LAM(sigma=1.5, radius=3, tile=4)
    assert torch.allclose(lam(seg, feat), lam(seg, resized), atol=1e-6)


def test_gradcheck_double():
    seg, feat = _inputs(1, 2, 3, 5, 6, dtype=torch.float64)
    seg.requires_grad_()
    feat.requires_grad_()
    # tile 4 on 5×6: four tiles, two of them padded; radius 2 truncates inside the grid; tiny chunks
    assert torch.autograd.gradcheck(lambda s, f: lam_windowed(s, f, 1.0, 2, tile=4, chunk_elements=8), (seg, feat))


@pytest.mark.parametrize("feat_grad", [True, False])
def test_gradients_match_dense_autograd(feat_grad):
    seg, feat = _inputs(2, 3, 5, 11, 9, dtype=torch.float64)
    upstream = torch.randn(2, 3, 11, 9, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grads = []
    for fn in (lambda s, f: lam_windowed(s, f, 2.0, 3, tile=4), lambda s, f: lam_dense(s, f, 2.0, 3, eps=0.0)):
        s, f = seg.clone().requires_grad_(), feat.clone().requires_grad_(feat_grad)
        (fn(s, f) * upstream).sum().backward()
        grads.append((s.grad, f.grad))
    assert (grads[0][0] - grads[1][0]).abs().max() < 1e-10
    if feat_grad:
        assert (grads[0][1] - grads[1][1]).abs().max() < 1e-10
    else:
        assert grads[0][1] is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_autocast_with_large_feature_norms(dtype):
    g = torch.Generator().manual_seed(0)
    seg = torch.randn(1, 3, 10, 12, generator=g)
    # ‖F‖ = 30 around a shared direction: F·F ≈ 900 (exp overflows fp16 and even fp32), while neighbour logits
    # differ by O(1), so the weights are far from one-hot and the test is not the identity map
    u = torch.randn(1, 16, 1, 1, generator=g)
    feat = u / u.norm() + 0.02 * torch.randn(1, 16, 10, 12, generator=g)
    feat = 30.0 * feat / feat.norm(dim=1, keepdim=True)
    seg_lp, feat_lp = seg.to(dtype), feat.to(dtype)
    with torch.autocast(device_type="cpu", dtype=dtype):
        out = LAM(sigma=2.0, radius=4, tile=8)(seg_lp, feat_lp)
    assert out.dtype == dtype and torch.isfinite(out).all()
    ref = lam_dense(seg_lp.double(), feat_lp.double(), 2.0, 4, eps=0.0)  # same rounded inputs, float64
    assert (ref - seg_lp.double()).abs().max() > 0.5  # non-trivial aggregation
    # only the final rounding of the output to 8 (bf16) / 11 (fp16) mantissa bits remains
    tol = 0.02 if dtype == torch.bfloat16 else 0.003
    assert (out.double() - ref).abs().max() < tol
    out32 = LAM(sigma=2.0, radius=4, tile=8)(seg_lp.float(), feat_lp.float())
    assert (out.float() - out32).abs().max() < tol


def test_backward_finite_with_large_norms():
    seg, feat = _inputs(1, 2, 8, 9, 9)
    feat = (30.0 * feat / feat.norm(dim=1, keepdim=True)).requires_grad_()
    seg.requires_grad_()
    LAM(sigma=2.0, radius=3, tile=4)(seg, feat).square().sum().backward()
    assert torch.isfinite(seg.grad).all() and torch.isfinite(feat.grad).all()


def test_no_size_dependent_state():
    lam = LAM()
    assert len(lam.state_dict()) == 0 and not list(lam.parameters()) and not list(lam.buffers())
    for h, w in [(6, 7), (9, 5)]:
        seg, feat = _inputs(1, 2, 3, h, w)
        assert lam(seg, feat).shape == (1, 2, h, w)
        assert len(lam.state_dict()) == 0 and not list(lam.buffers())


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        LAM()(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError):
        LAM()(torch.zeros(2, 3, 4, 4), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError):
        LAM(sigma=0.0)


@pytest.mark.parametrize("chunk_elements", [1, 1 << 20])  # one tile per chunk, all tiles in one chunk
def test_saved_logits_give_the_recomputed_gradients_bit_for_bit(chunk_elements):
    """Keeping the forward's logits for the backward (save_elements) is a speed knob only."""
    g = torch.Generator().manual_seed(3)
    seg = torch.randn(2, 3, 13, 11, generator=g)
    feat = torch.randn(2, 8, 13, 11, generator=g)
    grad = torch.randn(2, 3, 13, 11, generator=g)
    results = []
    for save in (0, 1 << 26):
        s, f = seg.clone().requires_grad_(), feat.clone().requires_grad_()
        out = lam_windowed(s, f, 3.0, 5, tile=4, chunk_elements=chunk_elements, save_elements=save)
        out.backward(grad)
        results.append((out, s.grad, f.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_halo_clamped_into_small_grid_matches_dense():
    # grid smaller than tile + 2·radius along both axes (halo = whole grid) and larger along one only; every tile
    # position of the 9×23 grid at tile 4 sees a halo moved inside the grid near the borders
    for h, w, radius, tile in [(6, 7, 8, 16), (9, 23, 3, 4), (17, 5, 2, 4)]:
        seg, feat = _inputs(2, 3, 4, h, w, scale=0.9)
        out = LAM(sigma=2.0, radius=radius, tile=tile)(seg, feat)
        ref = lam_dense(seg.double(), feat.double(), 2.0, radius, eps=0.0)
        assert (out.double() - ref).abs().max() < 1e-5, (h, w, radius, tile)


class _Pair(torch.nn.Module):
    def __init__(self, lam):
        super().__init__()
        self.lam = lam

    def forward(self, seg, feat):
        return self.lam(seg, feat)


def test_onnx_export_is_dynamic_and_matches(tmp_path):
    """The traced graph follows the input size: traced on a 16×16 grid (radius 24 > grid), run on grids where the
    window, the halo clamp, the tile count and the padding all differ, and on a batch of 2."""
    ort = pytest.importorskip("onnxruntime")
    import warnings

    # several chunks in PyTorch at every size, including the traced one (a trace must not keep their number)
    module = _Pair(LAM(sigma=6.0, chunk_elements=1 << 12)).eval()
    seg, feat = _inputs(1, 3, 8, 16, 16)
    axes = {name: {0: "n", 2: "h", 3: "w"} for name in ("seg", "feat", "out")}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape checks
        torch.onnx.export(module, (seg, feat), str(tmp_path / "lam.onnx"), input_names=["seg", "feat"],
                          output_names=["out"], opset_version=17, dynamic_axes=axes, dynamo=False)
    session = ort.InferenceSession(str(tmp_path / "lam.onnx"), providers=["CPUExecutionProvider"])
    assert {i.name for i in session.get_inputs()} == {"seg", "feat"}  # the features reach the graph
    for n, h, w in [(1, 16, 16), (2, 12, 20), (1, 40, 9), (1, 53, 61)]:
        seg, feat = _inputs(n, 3, 8, h, w, seed=h)
        with torch.no_grad():
            ref = module(seg, feat)
        (out,) = session.run(["out"], {"seg": seg.numpy(), "feat": feat.numpy()})
        assert out.shape == ref.shape and abs(out - ref.numpy()).max() < 1e-4, (n, h, w)
        assert (ref - seg).abs().max() > 0.1  # LAM does something at this size


@pytest.mark.parametrize("save_elements", [0, 1 << 26])  # recomputed / saved logits
def test_default_tiling_loss_and_gradients_match_dense_float32(save_elements):
    """Default tile (8) on a 21×19 grid at radius 6: interior tiles, halos clamped at both borders, a partial last
    tile, several chunks; float32 against the float64 dense reference (same loss, same gradients)."""
    seg, feat = _inputs(2, 3, 16, 21, 19, scale=0.5)
    upstream = torch.randn(2, 3, 21, 19, generator=torch.Generator().manual_seed(5))
    results = []
    for fn, dtype in ((lambda s, f: lam_windowed(s, f, 1.5, 6, chunk_elements=1 << 14, save_elements=save_elements),
                       torch.float32),
                      (lambda s, f: lam_dense(s, f, 1.5, 6, eps=0.0), torch.float64)):
        s, f = seg.to(dtype).detach().requires_grad_(), feat.to(dtype).detach().requires_grad_()
        loss = (fn(s, f) * upstream.to(dtype)).sum()
        loss.backward()
        results.append((loss.double(), s.grad.double(), f.grad.double()))
    (loss, gs, gf), (loss_ref, gs_ref, gf_ref) = results
    assert abs(loss - loss_ref) < 1e-4 * abs(loss_ref)
    assert (gs - gs_ref).abs().max() < 1e-5 and (gf - gf_ref).abs().max() < 1e-4
    assert gf_ref.abs().max() > 0.1  # the feature gradient is not trivially small


@pytest.mark.parametrize(
    "n, c, d, h, w, sigma, radius, tile",
    [
        (2, 3, 5, 7, 9, 1.5, 2, 4),  # last tile row and column padded, non-square grid
        (1, 2, 4, 21, 19, 1.5, 6, 8),  # tile pairs two tiles apart along both axes, padded borders
        (2, 2, 3, 6, 5, 1.0, 20, 16),  # radius beyond the grid: one tile, only the diagonal block
        (1, 2, 4, 1, 7, 1.0, 2, 4),  # one row: tiles of 1×4
        (1, 3, 6, 16, 16, 2.0, 8, 8),  # the demo's case: 2×2 tiles, every pair within reach, no padding
        (1, 2, 4, 17, 12, 2.0, 3, 5),  # radius not a multiple of the tile: the farthest pairs are partly in window
    ],
)
def test_tile_pairs_match_halo_path_and_dense(n, c, d, h, w, sigma, radius, tile):
    """The eager path (each pair of tiles once, both directions) against the per-tile halo path (the one ONNX export
    traces) and the dense reference: outputs and both gradients, float64."""
    seg, feat = _inputs(n, c, d, h, w, dtype=torch.float64, seed=h)
    upstream = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    results = []
    for fn in (lambda s, f: lam_windowed(s, f, sigma, radius, tile=tile),
               lambda s, f: lam_windowed(s, f, sigma, radius, tile=tile, impl="halo"),
               lambda s, f: lam_dense(s, f, sigma, radius, eps=0.0)):
        s, f = seg.clone().requires_grad_(), feat.clone().requires_grad_()
        out = fn(s, f)
        (out * upstream).sum().backward()
        results.append((out, s.grad, f.grad))
    for other in results[1:]:
        for x, y in zip(results[0], other):
            assert (x - y).abs().max() < 1e-12


def test_tile_pairs_cover_each_window_pair_once():
    """Every ordered pair (source, target) of grid positions within the window is served by exactly one block entry
    with its Gaussian bias: an entry [i, j] of an off-diagonal block serves (a_i, b_j) and (b_j, a_i), one of a
    tile's own block Z_AA serves (a_i, a_j) only. Block entries between real positions outside the window are
    _NEG."""
    h, w, radius, tile, sigma = 11, 13, 5, 4, 2.0
    g = _Pairs(1, h, w, tile, radius, sigma, torch.float64, "cpu")
    # tile position → flat grid position (−1: padding completing the last tiles)
    pos = g.tile(torch.arange(h * w).view(1, 1, h, w).double(), fill=-1.0)[:, 0].long()
    count = torch.zeros(h * w, h * w, dtype=torch.long)
    bias = torch.full((h * w, h * w), float("nan"), dtype=torch.float64)
    for k, (a, b) in enumerate(g.pairs):
        for ta, tb in zip(a.tolist(), b.tolist()):
            pa, pb = pos[ta][:, None].expand(-1, g.t2), pos[tb][None, :].expand(g.t2, -1)
            real = (pa >= 0) & (pb >= 0)
            inside = real & (g.bias[k] > _NEG / 2)
            ones = torch.ones(int(inside.sum()), dtype=torch.long)
            count.index_put_((pa[inside], pb[inside]), ones, accumulate=True)
            if k:
                count.index_put_((pb[inside], pa[inside]), ones, accumulate=True)
            bias[pa[real], pb[real]] = g.bias[k][real]
    ys, xs = torch.arange(h * w) // w, torch.arange(h * w) % w
    dy, dx = ys[:, None] - ys[None, :], xs[:, None] - xs[None, :]
    window = (dy.abs() <= radius) & (dx.abs() <= radius)
    assert torch.equal(count, window.long())
    covered = ~torch.isnan(bias)
    gauss = -(dy.square() + dx.square()).double() / (2 * sigma**2)
    assert torch.equal(bias[covered & window], gauss[covered & window])
    assert (bias[covered & ~window] == _NEG).all()
