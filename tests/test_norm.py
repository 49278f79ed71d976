"""Norms (functional and shells) against float64 formula oracles; QK-norm; configs."""

from __future__ import annotations

import pytest
import torch

from subq.functional.norm import (
    LayerNormConfig,
    LayerNormParams,
    RMSNormConfig,
    RMSNormParams,
    apply_qk_norm,
    init_layer_norm,
    init_rms_norm,
    l2_norm,
    layer_norm,
    rms_norm,
)
from subq.nn.norm import L2Norm, LayerNorm, RMSNorm
from subq.testing import assert_compiles, assert_shell_matches_functional, compute_relative_error
from subq.testing.strategies import randn

# --- float64 oracles, written from the formulas (reduction axis explicit, no movedim) ---------


def rms_oracle(x, weight, eps, axis=-1):
    x = x.double()
    y = x / torch.sqrt((x * x).mean(axis, keepdim=True) + eps)
    return y if weight is None else y * weight.double()


def layer_oracle(x, weight, bias, eps, axis=-1):
    x = x.double()
    mean = x.mean(axis, keepdim=True)
    var = ((x - mean) ** 2).mean(axis, keepdim=True)  # biased, as LayerNorm defines it
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight.double()
    return y if bias is None else y + bias.double()


def _channels_first_weight(w, ndim):
    # [C] -> [C, 1, ..., 1] so it broadcasts against [B, C, *spatial].
    return None if w is None else w.reshape(w.shape + (1,) * (ndim - 2))


# --- RMSNorm / LayerNorm vs oracles ---------------------------------------------------------


@pytest.mark.parametrize("affine", [True, False])
def test_rms_norm_channels_last_matches_oracle(affine):
    x = randn(2, 5, 7, seed=0)
    w = randn(7, seed=1) if affine else None
    out = rms_norm(RMSNormParams(w), x, eps=1e-6)
    assert compute_relative_error(rms_oracle(x, w, 1e-6), out) < 1e-14


def test_rms_norm_per_head_matches_oracle():
    x, w = randn(2, 5, 3, 4, seed=2), randn(3, 4, seed=3)
    params = RMSNormParams(w)
    out = rms_norm(params, x, eps=1e-5)
    assert compute_relative_error(rms_oracle(x, w, 1e-5), out) < 1e-14
    # Each head is normalised on its own: heads do not share statistics.
    for h in range(3):
        alone = rms_oracle(x[..., h, :], w[h], 1e-5)
        assert compute_relative_error(alone, out[..., h, :]) < 1e-14


@pytest.mark.parametrize("spatial", [(6,), (3, 4), (2, 3, 2)])
def test_rms_norm_channels_first_matches_oracle(spatial):
    x, w = randn(2, 5, *spatial, seed=4), randn(5, seed=5)
    out = rms_norm(RMSNormParams(w), x, eps=1e-6, channels_first=True)
    expected = rms_oracle(x, _channels_first_weight(w, x.ndim), 1e-6, axis=1)
    assert out.shape == x.shape
    assert compute_relative_error(expected, out) < 1e-14


@pytest.mark.parametrize(("affine", "bias"), [(True, True), (True, False), (False, False)])
def test_layer_norm_channels_last_matches_oracle(affine, bias):
    x = randn(3, 4, 9, seed=6) * 3 + 1.5
    w = randn(9, seed=7) if affine else None
    b = randn(9, seed=8) if bias else None
    out = layer_norm(LayerNormParams(w, b), x, eps=1e-5)
    assert compute_relative_error(layer_oracle(x, w, b, 1e-5), out) < 1e-13


def test_layer_norm_per_head_matches_oracle():
    x, w, b = randn(2, 3, 2, 5, seed=9), randn(2, 5, seed=10), randn(2, 5, seed=11)
    out = layer_norm(LayerNormParams(w, b), x, eps=1e-5)
    assert compute_relative_error(layer_oracle(x, w, b, 1e-5), out) < 1e-13


@pytest.mark.parametrize("spatial", [(7,), (2, 3)])
def test_layer_norm_channels_first_matches_oracle(spatial):
    x, w, b = randn(2, 6, *spatial, seed=12), randn(6, seed=13), randn(6, seed=14)
    out = layer_norm(LayerNormParams(w, b), x, eps=1e-5, channels_first=True)
    cw, cb = (_channels_first_weight(t, x.ndim) for t in (w, b))
    assert compute_relative_error(layer_oracle(x, cw, cb, 1e-5, axis=1), out) < 1e-13


def test_eps_enters_as_in_the_formula():
    # A tiny input: the result depends on eps exactly as the oracle says.
    x = randn(4, 8, seed=15) * 1e-4
    for eps in (1e-12, 1e-8, 1e-6):
        out = rms_norm(RMSNormParams(), x, eps=eps)
        assert compute_relative_error(rms_oracle(x, None, eps), out) < 1e-14
        out = layer_norm(LayerNormParams(), x, eps=eps)
        assert compute_relative_error(layer_oracle(x, None, None, eps), out) < 1e-13


def _grads(fn, leaves, dy):
    live = [t.detach().clone().requires_grad_(True) for t in leaves]
    return torch.autograd.grad((fn(*live) * dy).sum(), live)


def test_gradients_match_the_oracle():
    x, w, b, dy = (randn(3, 6, seed=s) for s in (16, 17, 18, 19))
    pairs = [
        (
            lambda x, w: rms_norm(RMSNormParams(w), x, eps=1e-6),
            lambda x, w: rms_oracle(x, w, 1e-6),
            (x, w),
        ),
        (
            lambda x, w, b: layer_norm(LayerNormParams(w, b), x, eps=1e-5),
            lambda x, w, b: layer_oracle(x, w, b, 1e-5),
            (x, w, b),
        ),
        (
            lambda x: rms_norm(RMSNormParams(), x, eps=1e-6, channels_first=True),
            lambda x: rms_oracle(x, None, 1e-6, axis=1),
            (x,),
        ),
    ]
    for fn, oracle, leaves in pairs:
        for got, want in zip(_grads(fn, leaves, dy), _grads(oracle, leaves, dy), strict=True):
            assert compute_relative_error(want, got) < 1e-12


# --- dtype policy: bf16 in, bf16 out, fp32 math ---------------------------------------------


def _ulps_bf16(a, b):
    # Distance in bf16 units in the last place: 2^(exponent - 7) for bf16's 8-bit significand.
    ulp = torch.exp2(torch.floor(torch.log2(b.double().abs().clamp_min(1e-30))) - 7)
    return ((a.double() - b.double()).abs() / ulp).max().item()


@pytest.mark.parametrize("family", ["rms", "layer"])
def test_bfloat16_in_bfloat16_out_with_float32_math(family):
    x = randn(16, 512, seed=20, dtype=torch.float32).to(torch.bfloat16)
    w = (1 + 0.1 * randn(512, seed=21, dtype=torch.float32)).to(torch.bfloat16)
    b = (0.1 * randn(512, seed=22, dtype=torch.float32)).to(torch.bfloat16)
    if family == "rms":
        out = rms_norm(RMSNormParams(w), x, eps=1e-6)
        exact = rms_oracle(x, w, 1e-6)
    else:
        out = layer_norm(LayerNormParams(w, b), x, eps=1e-5)
        exact = layer_oracle(x, w, b, 1e-5)
    assert out.dtype == torch.bfloat16
    rounded = exact.to(torch.bfloat16)
    # Float32 statistics and one rounding at the end: within one bf16 ulp of the exactly rounded
    # result, and equal to it almost everywhere (bf16 arithmetic would be off in many places).
    assert _ulps_bf16(out, rounded) <= 1.0
    assert (out == rounded).double().mean().item() > 0.99


def test_float16_and_float32_keep_their_dtype():
    for dtype in (torch.float16, torch.float32):
        x = randn(4, 8, seed=23, dtype=torch.float32).to(dtype)
        assert rms_norm(init_rms_norm(RMSNormConfig(dim=8), dtype=dtype), x).dtype == dtype
        assert layer_norm(init_layer_norm(LayerNormConfig(dim=8), dtype=dtype), x).dtype == dtype
        assert l2_norm(x).dtype == dtype


def test_inputs_are_not_mutated():
    x, w = randn(3, 4, seed=24), randn(4, seed=25)
    x0, w0 = x.clone(), w.clone()
    rms_norm(RMSNormParams(w), x)
    layer_norm(LayerNormParams(w, w), x, channels_first=False)
    l2_norm(x)
    assert torch.equal(x, x0) and torch.equal(w, w0)


# --- QK-norm ---------------------------------------------------------------------------------


def test_l2_norm_gives_unit_vectors_and_bounded_dot_products():
    q, k = randn(2, 3, 5, 8, seed=26) * 10, randn(2, 3, 7, 8, seed=27) * 0.01
    qn, kn = apply_qk_norm(q, k)
    for t in (qn, kn):
        torch.testing.assert_close(
            torch.linalg.vector_norm(t, dim=-1), torch.ones(t.shape[:-1], dtype=t.dtype)
        )
    scores = qn @ kn.transpose(-1, -2)
    assert scores.abs().max().item() <= 1 + 1e-12
    # The extremes are reached: a vector with itself and with its negation.
    sq, _ = apply_qk_norm(q, -q)
    assert torch.allclose((sq * l2_norm(-q)).sum(-1), -torch.ones(2, 3, 5, dtype=q.dtype))


def test_l2_norm_matches_formula_and_reference_defaults():
    # l2_norm's documented math is float32: compare a float32 input with the float64 formula,
    # to float32 precision (a couple of ulps).
    x = randn(4, 6, seed=28, dtype=torch.float32)
    exact = x.double() / torch.linalg.vector_norm(x.double(), dim=-1, keepdim=True)
    torch.testing.assert_close(l2_norm(x).double(), exact, rtol=3e-7, atol=0)
    qn, kn = apply_qk_norm(x, 2 * x)
    torch.testing.assert_close(qn, kn, rtol=0, atol=0)


def test_l2_norm_float64_is_exact():
    x = randn(4, 6, seed=28)
    expected = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    assert compute_relative_error(expected, l2_norm(x)) < 1e-14


def test_l2_norm_other_dim():
    x = randn(3, 5, 4, seed=29)
    out = l2_norm(x, dim=1)
    torch.testing.assert_close(
        torch.linalg.vector_norm(out, dim=1), torch.ones(3, 4, dtype=x.dtype)
    )
    qn, _ = apply_qk_norm(x, x, dim=1)
    torch.testing.assert_close(qn, out, rtol=0, atol=0)


def test_l2_norm_eps_on_zero_and_tiny_vectors():
    x = torch.zeros(2, 4, dtype=torch.float64, requires_grad=True)
    out = l2_norm(x)
    assert torch.equal(out, torch.zeros(2, 4, dtype=torch.float64))  # zeros, not NaN
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(grad).all()
    # norm 2e-14 < eps: divided by eps, not by the norm (float32 math: a couple of ulps).
    tiny = torch.full((4,), 1e-14, dtype=torch.float32)
    torch.testing.assert_close(l2_norm(tiny, eps=1e-12), tiny / 1e-12, rtol=3e-7, atol=0)
    qn, kn = apply_qk_norm(tiny, torch.zeros(4), eps=1e-10)
    torch.testing.assert_close(qn, tiny / 1e-10, rtol=3e-7, atol=0)
    assert torch.equal(kn, torch.zeros(4))
    # Just above eps the norm is used: a unit vector.
    above = torch.full((4,), 1e-9)
    torch.testing.assert_close(l2_norm(above, eps=1e-12), torch.full((4,), 0.5), rtol=3e-7, atol=0)


def test_l2_norm_bfloat16_uses_float32_math():
    x = randn(8, 256, seed=30, dtype=torch.float32).to(torch.bfloat16)
    out = l2_norm(x)
    assert out.dtype == torch.bfloat16
    exact = x.double() / torch.linalg.vector_norm(x.double(), dim=-1, keepdim=True)
    assert _ulps_bf16(out, exact.to(torch.bfloat16)) <= 1.0


def test_l2norm_module():
    module = L2Norm()
    assert (module.dim, module.eps) == (-1, 1e-12)
    assert list(module.parameters()) == [] and module.state_dict() == {}
    x = randn(2, 3, 4, seed=31)
    torch.testing.assert_close(module(x), l2_norm(x), rtol=0, atol=0)
    other = L2Norm(dim=1, eps=1e-3)
    torch.testing.assert_close(other(x), l2_norm(x, dim=1, eps=1e-3), rtol=0, atol=0)
    assert repr(other) == "L2Norm(dim=1, eps=0.001)"


def test_apply_qk_norm_compiles_without_graph_breaks():
    q, k = randn(2, 3, 4, seed=32), randn(2, 5, 4, seed=33)
    assert_compiles(apply_qk_norm, q, k)


def test_per_head_rms_norm_compiles_without_graph_breaks():
    params = RMSNormParams(randn(3, 4, seed=34))
    assert_compiles(lambda p, x: rms_norm(p, x, eps=1e-6), params, randn(2, 5, 3, 4, seed=35))


# --- init, shells ---------------------------------------------------------------------------


def test_init_gives_identity_scale():
    p = init_rms_norm(RMSNormConfig(dim=4, num_heads=2), dtype=torch.float64)
    assert torch.equal(p.weight, torch.ones(2, 4, dtype=torch.float64))
    assert init_rms_norm(RMSNormConfig(dim=4, affine=False)).weight is None
    lp = init_layer_norm(LayerNormConfig(dim=4))
    assert torch.equal(lp.weight, torch.ones(4)) and torch.equal(lp.bias, torch.zeros(4))
    assert init_layer_norm(LayerNormConfig(dim=4, bias=False)).bias is None
    empty = init_layer_norm(LayerNormConfig(dim=4, affine=False))
    assert empty.weight is None and empty.bias is None


@pytest.mark.parametrize(
    ("shell", "fn", "x"),
    [
        (RMSNorm(dim=6, eps=1e-5, dtype=torch.float64), rms_norm, randn(2, 3, 6, seed=36)),
        (
            RMSNorm(RMSNormConfig(dim=4, channels_first=True), dtype=torch.float64),
            rms_norm,
            randn(2, 4, 5, seed=37),
        ),
        (
            LayerNorm(dim=3, num_heads=2, dtype=torch.float64),
            layer_norm,
            randn(2, 5, 2, 3, seed=38),
        ),
    ],
)
def test_shells_match_functional(shell, fn, x):
    cfg = shell.cfg
    assert_shell_matches_functional(
        shell, fn, x, rtol=0.0, eps=cfg.eps, channels_first=cfg.channels_first
    )


def test_shell_state_dict_keys():
    assert list(RMSNorm(dim=4).state_dict()) == ["weight"]
    assert list(LayerNorm(dim=4).state_dict()) == ["weight", "bias"]
    assert list(LayerNorm(dim=4, bias=False).state_dict()) == ["weight"]
    assert list(RMSNorm(dim=4, affine=False).state_dict()) == []


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [RMSNormConfig, LayerNormConfig])
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"dim": 0}, ValueError, r"Config\.dim: expected a positive number, got 0"),
        ({"dim": -3}, ValueError, r"Config\.dim: expected a positive number, got -3"),
        ({"dim": "8"}, TypeError, "'dim' must be <class 'int'>"),
        ({"dim": 4, "eps": 0.0}, ValueError, r"Config\.eps: expected a positive number, got 0\.0"),
        ({"dim": 4, "affine": "yes"}, TypeError, "'affine' must be <class 'bool'>"),
        (
            {"dim": 4, "num_heads": 0},
            ValueError,
            r"num_heads: expected a positive int, got .* \(None is allowed too\)",
        ),
        (
            {"dim": 4, "num_heads": 2.0},
            ValueError,
            r"num_heads: expected a positive int, got .* \(None is allowed too\)",
        ),
        (
            {"dim": 4, "num_heads": 2, "channels_first": True},
            ValueError,
            "num_heads .* needs channels_first=False, got channels_first=True",
        ),
    ],
)
def test_config_errors_name_the_field(cls, kwargs, error, message):
    with pytest.raises(error, match=message):
        cls(**kwargs)


def test_config_error_for_non_numeric_eps_names_the_field():
    with pytest.raises(ValueError, match="eps"):
        RMSNormConfig(dim=4, eps="small")


def test_weight_shape_mismatch_names_both_shapes():
    with pytest.raises(
        ValueError,
        match=r"rms_norm: x's trailing axes must equal the weight shape \(4,\) .*got x of shape "
        r"\(2, 5\)",
    ):
        rms_norm(RMSNormParams(torch.ones(4)), torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"layer_norm: .*weight shape \(2, 4\)"):
        layer_norm(LayerNormParams(torch.ones(2, 4)), torch.ones(3, 3, 4))


@pytest.mark.parametrize("cls", [RMSNormConfig, LayerNormConfig])
def test_config_rejects_bool_for_numbers(cls):
    with pytest.raises(ValueError, match=r"Config\.dim: expected a positive number, got True"):
        cls(dim=True)
    with pytest.raises(ValueError, match=r"Config\.eps: expected a positive number, got True"):
        cls(dim=4, eps=True)
