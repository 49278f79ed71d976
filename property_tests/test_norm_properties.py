"""Norm properties over hypothesis-drawn shapes, scales and seeds.

Identities that hold for every input: RMSNorm output has mean square ms/(ms+eps), LayerNorm output
has zero mean and variance var/(var+eps), both are invariant to positive scaling (and LayerNorm to
shifts), per-head norms act on each head alone, L2 normalisation gives unit vectors and bounded
dot products, and bf16 results are the exactly rounded float64 results to within one ulp.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from subq.functional.norm import (
    LayerNormParams,
    RMSNormParams,
    apply_qk_norm,
    l2_norm,
    layer_norm,
    rms_norm,
)
from subq.testing import compute_relative_error
from subq.testing.strategies import axis_sizes, randn, seeds

batch_shapes = st.lists(axis_sizes(5), min_size=1, max_size=2).map(tuple)
epsilons = st.sampled_from([1e-12, 1e-6, 1e-3])


def _bf16_ulps(got: torch.Tensor, exact: torch.Tensor) -> float:
    rounded = exact.to(torch.bfloat16).double()
    ulp = torch.exp2(torch.floor(torch.log2(rounded.abs().clamp_min(1e-30))) - 7)
    return ((got.double() - rounded).abs() / ulp).max().item()


@settings(max_examples=10)
@given(batch=batch_shapes, dim=axis_sizes(33), eps=epsilons, scale=st.floats(0.01, 100), seed=seeds)
def test_rms_norm_mean_square_identity(batch, dim, eps, scale, seed):
    x = randn(*batch, dim, seed=seed) * scale
    y = rms_norm(RMSNormParams(), x, eps=eps)
    ms = x.square().mean(-1)
    torch.testing.assert_close(y.square().mean(-1), ms / (ms + eps), rtol=1e-12, atol=1e-15)
    assert torch.equal(rms_norm(RMSNormParams(), -x, eps=eps), -y)


@settings(max_examples=10)
@given(batch=batch_shapes, dim=axis_sizes(33), c=st.floats(0.1, 10), seed=seeds)
def test_rms_norm_scale_invariance(batch, dim, c, seed):
    x = randn(*batch, dim, seed=seed)
    params = RMSNormParams(randn(dim, seed=seed + 1))
    # eps = 1e-30 is negligible against mean squares of order 1: invariance up to rounding.
    a, b = rms_norm(params, x, eps=1e-30), rms_norm(params, c * x, eps=1e-30)
    assert compute_relative_error(a, b) < 1e-13


@settings(max_examples=10)
@given(
    batch=batch_shapes,
    dim=st.integers(2, 33),
    eps=epsilons,
    shift=st.floats(-50, 50),
    scale=st.floats(0.1, 10),
    seed=seeds,
)
def test_layer_norm_moments_and_shift_invariance(batch, dim, eps, shift, scale, seed):
    x = randn(*batch, dim, seed=seed) * scale
    y = layer_norm(LayerNormParams(), x, eps=eps)
    var = x.var(-1, unbiased=False)
    torch.testing.assert_close(y.mean(-1), torch.zeros_like(var), rtol=0, atol=1e-12)
    torch.testing.assert_close(y.var(-1, unbiased=False), var / (var + eps), rtol=1e-10, atol=0)
    shifted = layer_norm(LayerNormParams(), x + shift, eps=eps)
    # Shifting by s loses about log10(s / std) digits to cancellation in float64.
    assert compute_relative_error(y, shifted) < 1e-10


@settings(max_examples=10)
@given(batch=batch_shapes, seed=seeds)
def test_layer_norm_of_one_channel_is_its_bias(batch, seed):
    x, b = randn(*batch, 1, seed=seed), randn(1, seed=seed + 1)
    y = layer_norm(LayerNormParams(torch.ones(1, dtype=torch.float64), b), x)
    assert torch.equal(y, b.expand_as(y))


@settings(max_examples=10)
@given(
    family=st.sampled_from(["rms", "layer"]),
    batch=batch_shapes,
    heads=st.integers(1, 4),
    head_dim=axis_sizes(9),
    seed=seeds,
)
def test_per_head_norm_acts_on_each_head_alone(family, batch, heads, head_dim, seed):
    x = randn(*batch, heads, head_dim, seed=seed)
    w, b = randn(heads, head_dim, seed=seed + 1), randn(heads, head_dim, seed=seed + 2)
    if family == "rms":
        out = rms_norm(RMSNormParams(w), x)
        alone = [rms_norm(RMSNormParams(w[h]), x[..., h, :]) for h in range(heads)]
    else:
        out = layer_norm(LayerNormParams(w, b), x)
        alone = [layer_norm(LayerNormParams(w[h], b[h]), x[..., h, :]) for h in range(heads)]
    for h in range(heads):
        assert compute_relative_error(alone[h], out[..., h, :]) < 1e-14


@settings(max_examples=10)
@given(
    family=st.sampled_from(["rms", "layer"]),
    channels=axis_sizes(9),
    spatial=st.lists(axis_sizes(5), min_size=1, max_size=3).map(tuple),
    seed=seeds,
)
def test_channels_first_normalises_axis_one(family, channels, spatial, seed):
    x = randn(2, channels, *spatial, seed=seed)
    w = randn(channels, seed=seed + 1)
    view = (channels,) + (1,) * len(spatial)
    if family == "rms":
        out = rms_norm(RMSNormParams(w), x, eps=1e-6, channels_first=True)
        expected = x * torch.rsqrt(x.square().mean(1, keepdim=True) + 1e-6) * w.view(view)
    else:
        out = layer_norm(LayerNormParams(w, w), x, eps=1e-5, channels_first=True)
        centred = x - x.mean(1, keepdim=True)
        std = torch.sqrt(centred.square().mean(1, keepdim=True) + 1e-5)
        expected = centred / std * w.view(view) + w.view(view)
    assert out.shape == x.shape
    assert compute_relative_error(expected, out) < 1e-13


@settings(max_examples=10)
@given(
    shape=st.lists(axis_sizes(6), min_size=1, max_size=4).map(tuple),
    data=st.data(),
    scale=st.floats(1e-3, 1e3),
    seed=seeds,
)
def test_l2_norm_unit_idempotent_scale_invariant(shape, data, scale, seed):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = randn(*shape, seed=seed, dtype=torch.float32)
    y = l2_norm(x, dim=dim)
    norms = torch.linalg.vector_norm(y.double(), dim=dim)
    torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-6)
    torch.testing.assert_close(l2_norm(y, dim=dim), y, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(l2_norm(scale * x, dim=dim), y, rtol=1e-6, atol=1e-7)


@settings(max_examples=10)
@given(
    heads=axis_sizes(3),
    tq=axis_sizes(7),
    tk=axis_sizes(7),
    head_dim=axis_sizes(16),
    scale=st.floats(1e-3, 1e3),
    seed=seeds,
)
def test_qk_norm_scores_lie_in_unit_interval(heads, tq, tk, head_dim, scale, seed):
    q = randn(heads, tq, head_dim, seed=seed) * scale
    k = randn(heads, tk, head_dim, seed=seed + 1) / scale
    qn, kn = apply_qk_norm(q, k)
    scores = qn.double() @ kn.double().transpose(-1, -2)
    assert scores.abs().max().item() <= 1 + 1e-6


@settings(max_examples=10)
@given(
    family=st.sampled_from(["rms", "layer", "l2"]),
    batch=batch_shapes,
    dim=axis_sizes(64),
    seed=seeds,
)
def test_bfloat16_is_rounded_float64_within_one_ulp(family, batch, dim, seed):
    x = randn(*batch, dim, seed=seed, dtype=torch.float32).to(torch.bfloat16)
    w = (1 + 0.2 * randn(dim, seed=seed + 1, dtype=torch.float32)).to(torch.bfloat16)
    x64, w64 = x.double(), w.double()
    if family == "rms":
        got = rms_norm(RMSNormParams(w), x, eps=1e-6)
        exact = x64 * torch.rsqrt(x64.square().mean(-1, keepdim=True) + 1e-6) * w64
    elif family == "layer":
        got = layer_norm(LayerNormParams(w, w), x, eps=1e-5)
        centred = x64 - x64.mean(-1, keepdim=True)
        exact = centred * torch.rsqrt(centred.square().mean(-1, keepdim=True) + 1e-5) * w64 + w64
    else:
        got = l2_norm(x)
        exact = x64 / torch.linalg.vector_norm(x64, dim=-1, keepdim=True).clamp_min(1e-12)
    assert got.dtype == torch.bfloat16
    assert _bf16_ulps(got, exact) <= 1.0


@settings(max_examples=5)
@given(batch=axis_sizes(4), t=axis_sizes(5), dim=axis_sizes(9), seed=seeds)
def test_vmap_over_inputs_equals_loop(batch, t, dim, seed):
    x = randn(batch, t, dim, seed=seed)
    params = RMSNormParams(randn(dim, seed=seed + 1))
    batched = torch.func.vmap(lambda inp: rms_norm(params, inp), in_dims=0)(x)
    looped = torch.stack([rms_norm(params, x[i]) for i in range(batch)])
    assert compute_relative_error(looped, batched) < 1e-15
