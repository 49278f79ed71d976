"""RoPE: the engine against independent oracles, the reference API, the fused path, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from subq.functional import rope as R
from subq.ops import rope as ops
from subq.testing import assert_close_rel, assert_compiles
from subq.testing.strategies import randn

F64 = torch.float64
CUDA = torch.cuda.is_available()


def _complex_oracle(x: torch.Tensor, pos: torch.Tensor, base: float, pairing: str):
    """RoPE as multiplication by e^{i p θ_j} of complex numbers built from each pair."""
    d = x.shape[-1]
    theta = base ** (-torch.arange(0, d, 2, dtype=F64) / d)
    if pairing == "interleaved":
        z = torch.complex(x[..., 0::2], x[..., 1::2])
    else:
        z = torch.complex(x[..., : d // 2], x[..., d // 2 :])
    z = z * torch.polar(torch.ones_like(theta), pos[:, None].to(F64) * theta)
    if pairing == "interleaved":
        return torch.stack((z.real, z.imag), dim=-1).flatten(-2)
    return torch.cat((z.real, z.imag), dim=-1)


def _nv_oracle(x: torch.Tensor, pos: torch.Tensor, base: float):
    """The reference library's numerics, written from its description (ANCHORS.md)."""
    d = x.shape[-1]
    theta = base ** (-torch.arange(0, d, 2, dtype=F64) / d)
    ang = pos[:, None].to(F64) * theta.repeat_interleave(2)
    rotated = torch.cat((-x[..., d // 2 :], x[..., : d // 2]), dim=-1)
    return x * torch.cos(ang) + rotated * torch.sin(ang)


# ------------------------------------------------------------------------------------------
# Engine
# ------------------------------------------------------------------------------------------


def test_golden_small_example():
    # d = 4, base 100: θ = (1, 0.1). Position 1 turns pair 0 by 1 rad, pair 1 by 0.1 rad.
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]] * 2, dtype=F64)
    cache = R.rope_cache((2,), 4, base=100.0, dtype=F64)
    c0, s0, c1, s1 = math.cos(1), math.sin(1), math.cos(0.1), math.sin(0.1)
    split = R.apply_rope(x, cache, pairing="split_half")
    # split_half pairs (x0, x2) and (x1, x3).
    expected = [1 * c0 - 3 * s0, 2 * c1 - 4 * s1, 3 * c0 + 1 * s0, 4 * c1 + 2 * s1]
    torch.testing.assert_close(split[0], x[0])
    torch.testing.assert_close(split[1], torch.tensor(expected, dtype=F64))
    inter = R.apply_rope(x, cache, pairing="interleaved")
    # interleaved pairs (x0, x1) and (x2, x3).
    expected = [1 * c0 - 2 * s0, 2 * c0 + 1 * s0, 3 * c1 - 4 * s1, 4 * c1 + 3 * s1]
    torch.testing.assert_close(inter[1], torch.tensor(expected, dtype=F64))


@pytest.mark.parametrize("pairing", ["split_half", "interleaved"])
def test_matches_complex_oracle(pairing):
    x = randn(2, 3, 7, 16, seed=1)
    cache = R.rope_cache((7,), 16, base=500.0, offset=3, dtype=F64)
    y = R.apply_rope(x, cache, pairing=pairing)
    expected = _complex_oracle(x, torch.arange(3, 10), 500.0, pairing)
    assert_close_rel(expected, y, 1e-13)


def test_nvsubquadratic_compat_matches_reference_numerics_and_is_not_a_rotation():
    x = randn(2, 5, 8, seed=2)
    cache = R.rope_cache((5,), 8, pairing="nvsubquadratic", dtype=F64)
    assert cache.cos.shape == (5, 8)  # one column per channel
    y = R.apply_rope(x, cache, pairing="nvsubquadratic")
    assert_close_rel(_nv_oracle(x, torch.arange(5), 10000.0), y, 1e-13)
    # Not a rotation: norms change at positions > 0.
    change = (y.norm(dim=-1) - x.norm(dim=-1)).abs()[:, 1:].max()
    assert change > 1e-3


def test_cache_from_positions_equals_grid_cache():
    grid = R.rope_cache((3, 4), 12, sections=(8, 4), offset=(2, 5), dtype=F64)
    hh, ww = torch.meshgrid(torch.arange(2, 5), torch.arange(5, 9), indexing="ij")
    pos = torch.stack((hh, ww), dim=-1)
    free = R.rope_cache_from_positions(pos, 12, sections=(8, 4), dtype=F64)
    assert grid.sections == free.sections == (8, 4)
    torch.testing.assert_close(grid.cos, free.cos)
    torch.testing.assert_close(grid.sin, free.sin)


def test_per_batch_decode_positions():
    # Each batch row decodes one token at its own position.
    x = randn(3, 2, 1, 8, seed=3)  # [B, heads, T=1, D]
    pos = torch.tensor([[4], [0], [9]])
    cache = R.rope_cache_from_positions(pos, 8, dtype=F64)  # [B, 1, W]
    y = R.apply_rope(x, R.RopeCache(cache.cos[:, None], cache.sin[:, None]))
    full = R.rope_cache((10,), 8, dtype=F64)
    for b, p in enumerate([4, 0, 9]):
        one = R.RopeCache(full.cos[p : p + 1], full.sin[p : p + 1])
        torch.testing.assert_close(y[b], R.apply_rope(x[b], one))


def test_partial_rotary_passes_the_tail_through():
    x = randn(2, 5, 10, seed=4)
    cache = R.rope_cache((5,), 10, rotary_dim=6, dtype=F64)
    y = R.apply_rope(x, cache, partial=True)
    torch.testing.assert_close(y[..., 6:], x[..., 6:], rtol=0, atol=0)
    torch.testing.assert_close(y[..., :6], R.apply_rope(x[..., :6], cache))


def test_float32_math_and_dtype_preserved():
    x = randn(2, 9, 8, seed=5).to(torch.bfloat16)
    cache = R.rope_cache((9,), 8)
    y = R.apply_rope(x, cache)
    assert y.dtype == torch.bfloat16
    # The result is the float32 rotation rounded once to bfloat16.
    expected = R.apply_rope(x.float(), cache).to(torch.bfloat16)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


def test_does_not_mutate_inputs():
    x = randn(2, 3, 8, seed=6)
    cache = R.rope_cache((3,), 8, dtype=F64)
    before = (x.clone(), cache.cos.clone(), cache.sin.clone())
    R.apply_rope_qk(x, x, cache)
    R.apply_rope_1d_blh(x, R.construct_rope_1d_cache_blh(3, 8, dtype=F64))
    for a, b in zip(before, (x, cache.cos, cache.sin)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_apply_rope_qk_with_fewer_key_heads():
    q, k = randn(2, 8, 5, 16, seed=7), randn(2, 2, 5, 16, seed=8)
    cache = R.rope_cache((5,), 16, dtype=F64)
    rq, rk = R.apply_rope_qk(q, k, cache)
    pos = torch.arange(5)
    assert_close_rel(_complex_oracle(q, pos, 10000.0, "split_half"), rq, 1e-13)
    assert_close_rel(_complex_oracle(k, pos, 10000.0, "split_half"), rk, 1e-13)
    torch.testing.assert_close(rq, R.apply_rope(q, cache), rtol=0, atol=0)
    torch.testing.assert_close(rk, R.apply_rope(k, cache), rtol=0, atol=0)


def test_cache_pytree_keeps_sections_as_structure():
    cache = R.rope_cache((2, 3), 8, sections=(4, 4))
    leaves, spec = torch.utils._pytree.tree_flatten(cache)
    assert len(leaves) == 2
    rebuilt = torch.utils._pytree.tree_unflatten([t * 1 for t in leaves], spec)
    assert rebuilt.sections == (4, 4)


def test_vmap_over_caches_and_grad_and_compile():
    x = randn(2, 4, 6, 8, seed=9)
    caches = [R.rope_cache((6,), 8, offset=o, dtype=F64) for o in (0, 3, 7)]
    stacked = R.RopeCache(
        torch.stack([c.cos for c in caches]), torch.stack([c.sin for c in caches])
    )
    out = torch.func.vmap(lambda c: R.apply_rope(x, c), in_dims=(0,))(stacked)
    for i, c in enumerate(caches):
        torch.testing.assert_close(out[i], R.apply_rope(x, c))
    grad = torch.func.grad(lambda x: R.apply_rope(x, caches[1]).square().sum())(x)
    torch.testing.assert_close(grad, 2 * x)  # a rotation preserves the squared norm
    assert_compiles(lambda x: R.apply_rope(x, R.rope_cache((6,), 8, dtype=F64)), x)


# ------------------------------------------------------------------------------------------
# The reference API
# ------------------------------------------------------------------------------------------


def test_reference_cache_shapes():
    c1 = R.construct_rope_1d_cache_bhl(7, 8)
    assert c1[0].shape == (8, 7) and c1[1].shape == (8, 7)
    assert R.construct_rope_1d_cache_blh(7, 8)[0].shape == (7, 8)
    c2 = R.construct_rope_2d_cache_blh(3, 5, 4)
    assert [c[0].shape for c in c2] == [(3, 4), (5, 4)]
    c3 = R.construct_rope_3d_cache_bhl(2, 3, 4, 6)
    assert [c[0].shape for c in c3] == [(6, 2), (6, 3), (6, 4)]


@pytest.mark.parametrize(
    ("pairing", "compat"),
    [("split_half", None), ("interleaved", None), ("split_half", "nvsubquadratic")],
)
def test_reference_1d_equals_engine_and_layouts_agree(pairing, compat):
    x = randn(2, 6, 8, seed=10)
    blh = R.apply_rope_1d_blh(
        x, R.construct_rope_1d_cache_blh(6, 8, pairing=pairing, compat=compat, dtype=F64),
        pairing=pairing, compat=compat,
    )  # fmt: skip
    bhl = R.apply_rope_1d_bhl(
        x.transpose(1, 2),
        R.construct_rope_1d_cache_bhl(6, 8, pairing=pairing, compat=compat, dtype=F64),
        pairing=pairing, compat=compat,
    )  # fmt: skip
    torch.testing.assert_close(bhl.transpose(1, 2), blh)
    engine = "nvsubquadratic" if compat else pairing
    cache = R.rope_cache((6,), 8, pairing=engine, dtype=F64)
    torch.testing.assert_close(blh, R.apply_rope(x, cache, pairing=engine))
    if compat:
        torch.testing.assert_close(blh, _nv_oracle(x, torch.arange(6), 10000.0))


def test_reference_2d_and_3d_equal_engine_with_sections():
    x2 = randn(2, 3, 5, 8, seed=11)
    y2 = R.apply_rope_2d_blh(x2, R.construct_rope_2d_cache_blh(3, 5, 4, dtype=F64))
    e2 = R.rope_cache((3, 5), 8, sections=(4, 4), dtype=F64)
    torch.testing.assert_close(y2, R.apply_rope(x2, e2))
    x3 = randn(1, 2, 3, 4, 12, seed=12)
    y3 = R.apply_rope_3d_blh(x3, R.construct_rope_3d_cache_blh(2, 3, 4, 4, dtype=F64))
    e3 = R.rope_cache((2, 3, 4), 12, dtype=F64)
    torch.testing.assert_close(y3, R.apply_rope(x3, e3))
    y3b = R.apply_rope_3d_bhl(
        x3.movedim(-1, 1), R.construct_rope_3d_cache_bhl(2, 3, 4, 4, dtype=F64)
    )
    torch.testing.assert_close(y3b.movedim(1, -1), y3)


def test_reference_2d_rotates_first_half_along_height():
    # A tensor constant along width: its first-half channels vary with height only.
    x = randn(1, 4, 1, 8, seed=13).expand(1, 4, 3, 8)
    y = R.apply_rope_2d_blh(x, R.construct_rope_2d_cache_blh(4, 3, 4, dtype=F64))
    torch.testing.assert_close(y[..., :4], y[:, :, :1, :4].expand(1, 4, 3, 4))
    assert (y[:, :, 0, 4:] - y[:, :, 1, 4:]).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------


def test_bad_input_errors():
    with pytest.raises(ValueError, match=r"C must be a multiple of 4.*got 6"):
        R.apply_rope_2d_blh(randn(1, 2, 2, 6, seed=0), R.construct_rope_2d_cache_blh(2, 2, 2))
    with pytest.raises(ValueError, match=r"C must be a multiple of 6.*got 8"):
        R.apply_rope_3d_bhl(randn(1, 8, 1, 1, 1, seed=0), R.construct_rope_3d_cache_bhl(1, 1, 1, 2))
    with pytest.raises(ValueError, match=r"multiple of 4 .*got 6"):
        R.rope_cache((2, 2), 6)
    with pytest.raises(ValueError, match=r"covers 4 positions.*x has 8.*smaller"):
        R.apply_rope(randn(8, 4, seed=0), R.rope_cache((4,), 4))
    with pytest.raises(ValueError, match=r"covers 8 positions.*x has 1.*offset="):
        R.apply_rope(randn(1, 4, seed=0), R.rope_cache((8,), 4))
    with pytest.raises(ValueError, match=r"pairing must be one of \['split_half', 'interleaved'"):
        R.apply_rope(randn(2, 4, seed=0), R.rope_cache((2,), 4), pairing="neox")
    with pytest.raises(ValueError, match=r"x has 8 channels but the cache rotates 4"):
        R.apply_rope(randn(2, 8, seed=0), R.rope_cache((2,), 4))
    with pytest.raises(ValueError, match=r"sections must sum to the rotated channels \(8\)"):
        R.rope_cache((2, 2), 8, sections=(4, 2))
    with pytest.raises(ValueError, match=r"positions must be \[\.\.\., 2\]"):
        R.rope_cache_from_positions(torch.zeros(5, 3), 8, n_axes=2)
    with pytest.raises(ValueError, match=r"compat='nvsubquadratic' uses pairing='split_half'"):
        R.construct_rope_1d_cache_blh(4, 8, pairing="interleaved", compat="nvsubquadratic")
    with pytest.raises(ValueError, match=r"compat must be one of"):
        R.construct_rope_1d_cache_blh(4, 8, compat="reference")
    with pytest.raises(ValueError, match=r"dim .* must be a positive multiple of 2, got 5"):
        R.construct_rope_1d_cache_blh(4, 5)


def test_reference_api_cache_size_errors_name_both_sizes_in_the_callers_layout():
    # bhl: x [B, C, T] with a cache of fewer positions; the message names x's own axis 2.
    with pytest.raises(
        ValueError,
        match=r"apply_rope_1d_bhl: the cache of spatial axis 0 covers 10 positions but x has 16 "
        r"along it \(x axis 2; the cache is smaller",
    ):
        R.apply_rope_1d_bhl(randn(2, 8, 16, seed=0), R.construct_rope_1d_cache_bhl(10, 8))
    # blh, 2D: the width cache is longer than x's width (never silently sliced).
    with pytest.raises(
        ValueError,
        match=r"apply_rope_2d_blh: the cache of spatial axis 1 covers 7 positions but x has 6 "
        r"along it \(x axis 2; the cache is larger",
    ):
        R.apply_rope_2d_blh(randn(1, 5, 6, 8, seed=0), R.construct_rope_2d_cache_blh(5, 7, 4))
    # A one-position cache is not broadcast over a longer axis either.
    with pytest.raises(ValueError, match=r"covers 1 positions but x has 3"):
        R.apply_rope_3d_bhl(randn(1, 6, 2, 3, 4, seed=0), R.construct_rope_3d_cache_bhl(2, 1, 4, 2))
    # A bhl cache's channel mismatch is reported in the bhl orientation [dim, N].
    with pytest.raises(ValueError, match=r"must be \[8, N\] \(C/1 channels\), got \(4, 16\)"):
        R.apply_rope_1d_bhl(randn(2, 8, 16, seed=0), R.construct_rope_1d_cache_bhl(16, 4))


# ------------------------------------------------------------------------------------------
# The fused path's plumbing, on CPU (the CPU emulation uses the kernel's strided addressing)
# ------------------------------------------------------------------------------------------

LAYOUTS = {
    # name: (x shape, cache leading shape, sections)
    "b h t d": ((2, 3, 6, 8), (6,), (8,)),
    "b t h d": ((2, 6, 3, 8), (6, 1), (8,)),
    "per-batch": ((2, 3, 6, 8), (2, 1, 6), (8,)),
    "2d sections": ((2, 3, 4, 12), (3, 4), (8, 4)),
    "many axes": ((2, 2, 2, 2, 2, 6, 8), (6,), (8,)),
    # Six independent leading axes: more than the kernel addresses, so the reference runs.
    "alternating axes": ((2, 2, 2, 2, 2, 6, 8), (2, 1, 2, 1, 6), (8,)),
}


def _fused_vs_reference(x, cos, sin, sections, pairing, rtol):
    def run(fn):
        xs = x.detach().clone().requires_grad_(True)
        cs = cos.detach().clone().requires_grad_(True)
        ss = sin.detach().clone().requires_grad_(True)
        y = fn(xs, cs, ss, sections, pairing)
        g = torch.autograd.grad(y, (xs, cs, ss), torch.ones_like(y) + y.detach())
        return (y, *g)

    assert_close_rel(run(ops.rope_reference), run(ops.rope_fused), rtol, what="fused vs reference")


@pytest.mark.parametrize("pairing", ["split_half", "interleaved"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_fused_plumbing_matches_reference(layout, pairing):
    shape, cache_lead, sections = LAYOUTS[layout]
    x = randn(*shape, seed=14)
    cos = randn(*cache_lead, sum(sections) // 2, seed=15)
    sin = randn(*cache_lead, sum(sections) // 2, seed=16)
    _fused_vs_reference(x, cos, sin, sections, pairing, 1e-12)


def test_fused_plumbing_strided_input_vmap_grad_compile():
    qkv = randn(2, 6, 3, 3, 8, seed=17)
    q = qkv[:, :, 0]  # a non-contiguous slice of a fused projection
    c = R.rope_cache((6,), 8, dtype=F64)
    cos, sin = c.cos[:, None], c.sin[:, None]
    torch.testing.assert_close(
        ops.rope_fused(q, cos, sin, (8,), "split_half"),
        ops.rope_reference(q, cos, sin, (8,), "split_half"),
    )

    def fused(x, cc=cos, ss=sin):
        return ops.rope_fused(x, cc, ss, (8,), "split_half")

    def plain(x, cc=cos, ss=sin):
        return ops.rope_reference(x, cc, ss, (8,), "split_half")

    xs = randn(4, 2, 6, 3, 8, seed=18)
    torch.testing.assert_close(torch.func.vmap(fused)(xs), plain(xs))
    caches = randn(4, 6, 1, 4, seed=19)
    torch.testing.assert_close(
        torch.func.vmap(lambda cc: fused(xs[0], cc))(caches),
        torch.stack([plain(xs[0], cc) for cc in caches]),
    )
    g = torch.func.vmap(torch.func.grad(lambda x: (fused(x) ** 3).sum()))(xs)
    torch.testing.assert_close(
        g, torch.func.vmap(torch.func.grad(lambda x: (plain(x) ** 3).sum()))(xs)
    )
    assert_compiles(fused, xs[0])
    compiled_grad = torch.compile(
        torch.func.grad(lambda x: (fused(x) ** 3).sum()), fullgraph=True, backend="aot_eager"
    )
    torch.testing.assert_close(
        compiled_grad(xs[0]), torch.func.grad(lambda x: (plain(x) ** 3).sum())(xs[0])
    )


def test_triton_kernel_in_interpreter(monkeypatch):
    pytest.importorskip("triton")
    # Run the real kernel through Triton's CPU interpreter (set before the kernel is built).
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    ops._triton_kernel.cache_clear()
    try:
        for layout in ("b t h d", "2d sections", "per-batch"):
            shape, cache_lead, sections = LAYOUTS[layout]
            x = randn(*shape, seed=20, dtype=torch.float32)
            cos = randn(*cache_lead, sum(sections) // 2, seed=21, dtype=torch.float32)
            sin = randn(*cache_lead, sum(sections) // 2, seed=22, dtype=torch.float32)
            for pairing in ("split_half", "interleaved"):
                _fused_vs_reference(x, cos, sin, sections, pairing, 1e-6)
        assert ops._triton_kernel.cache_info().currsize == 1  # the kernel really ran
    finally:
        ops._triton_kernel.cache_clear()


def test_dispatch_choices_and_reasons(monkeypatch):
    facts = {"device": "cpu", "dtype": torch.float32, "pairing": "split_half"}
    assert ops.rope_op.decide(facts).chosen == "reference"
    # Pretend triton imports, so that the check's own reasons are what is tested here.
    monkeypatch.setattr(ops, "module_available", lambda name: None)
    base = {"dtype": torch.bfloat16, "pairing": "split_half", "head_dim": 8, "rot_dim": 8}
    assert ops._triton_check(base) is None
    for change, words in [
        ({"pairing": "nvsubquadratic"}, "no fused kernel"),
        ({"rot_dim": 4}, "partial rotary"),
        ({"dtype": torch.float64}, "dtype torch.float64"),
        ({"x_shape": (2, 2, 2, 2, 2, 6, 8), "cache_shape": (2, 1, 2, 1, 6, 4)}, "leading axes"),
    ]:
        reason = ops._triton_check(base | change)
        assert reason is not None and words in reason, reason
    monkeypatch.setattr(ops, "module_available", lambda name: f"{name} is not installed")
    assert ops._triton_check(base) == "triton is not installed"


# ------------------------------------------------------------------------------------------
# CUDA: the Triton kernel against the reference (runs on the lent GPU)
# ------------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("pairing", ["split_half", "interleaved"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_cuda_kernel_matches_reference(layout, pairing, dtype):
    shape, cache_lead, sections = LAYOUTS[layout]
    dev = "cuda"
    x = randn(*shape, seed=23).to(dev, dtype)
    cos = randn(*cache_lead, sum(sections) // 2, seed=24).to(dev, torch.float32)
    sin = randn(*cache_lead, sum(sections) // 2, seed=25).to(dev, torch.float32)
    facts = {
        "device": x.device, "dtype": dtype, "pairing": pairing, "head_dim": shape[-1],
        "rot_dim": sum(sections), "x_shape": shape, "cache_shape": tuple(cos.shape),
    }  # fmt: skip
    too_many = ops._contiguous_lead_dims(shape, tuple(cos.shape)) > ops.MAX_LEAD_DIMS
    assert ops.rope_op.decide(facts).chosen == ("reference" if too_many else "triton")
    # The kernel computes in float32 and rounds once, as the reference does.
    _fused_vs_reference(x, cos, sin, sections, pairing, 1e-6 if dtype == torch.float32 else 1e-2)


@cuda
def test_cuda_dispatch_vmap_compile():
    dev = "cuda"
    q = randn(2, 64, 4, 32, seed=26).to(dev, torch.bfloat16)
    k = randn(2, 64, 2, 32, seed=27).to(dev, torch.bfloat16)
    c = R.rope_cache((64,), 32, device=dev)
    cache = R.RopeCache(c.cos[:, None], c.sin[:, None])
    rq, rk = R.apply_rope_qk(q, k, cache)
    # The kernel and the formula both round a float32 result once; they may differ by one
    # bfloat16 ulp where fused multiply-adds round differently.
    assert_close_rel(R.apply_rope(q, cache, backend="reference"), rq, 1e-3)
    assert_close_rel(R.apply_rope(k, cache, backend="reference"), rk, 1e-3)
    v = torch.func.vmap(lambda x: R.apply_rope(x, cache))(q[None].expand(3, *q.shape))
    torch.testing.assert_close(v[1], rq, rtol=0, atol=0)
    # Under torch.compile the formula is emitted for Inductor; float32 keeps the comparison
    # with the eager kernel tight.
    q32 = q.float()
    out = assert_compiles(lambda x: R.apply_rope(x, cache), q32, backend="inductor")
    assert_close_rel(R.apply_rope(q32, cache), out, 1e-6)


def test_fused_plumbing_compiled_backward_and_double_backward():
    c = R.rope_cache((6,), 8, dtype=F64)
    x = randn(2, 3, 6, 8, seed=28)

    def fused(t):
        return ops.rope_fused(t, c.cos, c.sin, (8,), "interleaved")

    def plain(t):
        return ops.rope_reference(t, c.cos, c.sin, (8,), "interleaved")

    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    (compiled(xa) * x).sum().backward()
    (plain(xb) * x).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)

    def second(fn):
        t = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((fn(t) ** 3).sum(), t, create_graph=True)
        return torch.autograd.grad(g.sum(), t)[0]

    torch.testing.assert_close(second(fused), second(plain))


def test_benchmark_quick_on_cpu(tmp_path):
    from subq.bench.harness import run_benchmarks

    rows = run_benchmarks(["rope", "rope_tune"], device="cpu", out_dir=tmp_path, quick=True)
    impls = {r["impl"] for r in rows}
    assert impls == {"subq [reference]", "eager formula"}
    assert {(r["layout"], r["mode"]) for r in rows} == {
        (layout, mode) for layout in ("bthd", "bhtd") for mode in ("fwd", "fwd+bwd")
    }
    assert all(r["rel_err"] < 1e-6 and r["ms"] > 0 for r in rows)
    assert (tmp_path / "rope.json").exists()
