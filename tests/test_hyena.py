"""Hyena: independent oracle, causality, decode == full, N-D, dtypes, compile, vmap, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from subq._pytree import stack_params
from subq.functional.hyena import (
    HyenaConfig,
    hyena,
    hyena_flop_count,
    hyena_step,
    init_hyena,
    init_hyena_state,
)
from subq.functional.implicit import KernelNetConfig, implicit_kernel
from subq.nn.hyena import Hyena
from subq.testing import (
    assert_causal,
    assert_close_rel,
    assert_compiles,
    assert_shell_matches_functional,
    assert_vmap_matches_loop,
    compute_relative_error,
)

DT = torch.float64


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _qkv(shape, seed=0, dtype=DT):
    g = _g(seed)
    return [torch.randn(shape, generator=g, dtype=dtype) for _ in range(3)]


def _oracle_1d_causal(p, cfg, q, k, v):
    """Plain loops: short conv by nn.functional.conv1d, long conv by a Toeplitz matrix."""
    c, length = cfg.hidden_dim, q.shape[1]
    u = torch.cat([q, k, v], -1).transpose(1, 2)
    w = p.short_conv.weight.unsqueeze(1)
    u = F.conv1d(u, w, padding=w.shape[-1] - 1, groups=3 * c)[..., :length].transpose(1, 2)
    q, k, v = u.split(c, -1)
    z = q * torch.sigmoid(k)
    kern = implicit_kernel(p.filter, (length,), ("causal",), cfg=cfg.filter)  # [C, L]
    t = torch.arange(length)
    lag = t[:, None] - t[None, :]
    toeplitz = torch.where(lag >= 0, kern[:, lag.clamp(min=0)], 0.0)  # [C, L, L]
    h = torch.einsum("cts,bsc->btc", toeplitz, z) + z * p.skip
    return h * torch.sigmoid(v)


def test_causal_1d_matches_oracle_and_is_causal():
    cfg = HyenaConfig(hidden_dim=5, max_size=16)
    p = init_hyena(cfg, generator=_g(0), dtype=DT)
    q, k, v = _qkv((2, 13, 5))
    assert_close_rel(_oracle_1d_causal(p, cfg, q, k, v), hyena(p, q, k, v, cfg=cfg), 1e-12)
    assert_causal(lambda x: hyena(p, x, torch.tanh(x), x.flip(-1), cfg=cfg), q, atol=1e-12)


def test_2d_zero_matches_conv2d_oracle():
    cfg = HyenaConfig(hidden_dim=3, ndim=2, max_size=(5, 6), short_kernel_size=3)
    p = init_hyena(cfg, generator=_g(0), dtype=DT)
    q, k, v = _qkv((2, 5, 6, 3))
    c = 3
    u = torch.cat([q, k, v], -1).movedim(-1, 1)
    u = F.conv2d(u, p.short_conv.weight.unsqueeze(1), padding="same", groups=3 * c)
    qq, kk, vv = u.movedim(1, -1).split(c, -1)
    z = (qq * torch.sigmoid(kk)).movedim(-1, 1)
    kern = implicit_kernel(p.filter, (5, 6), ("zero", "zero"), cfg=cfg.filter)  # [C, 9, 11]
    h = F.conv2d(z, kern.flip(-1, -2).unsqueeze(1), padding="same", groups=c)
    h = h + z * p.skip.reshape(-1, 1, 1)
    want = h.movedim(1, -1) * torch.sigmoid(vv)
    assert_close_rel(want, hyena(p, q, k, v, cfg=cfg), 1e-12)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"qk_norm": "rms", "norm": "rms", "out_norm": "layer", "value_gate": "silu"},
        {"short_kernel_size": 1, "value_gate": "identity", "chunk_size": 2},
    ],
)
def test_decode_equals_full(fields):
    cfg = HyenaConfig(hidden_dim=5, max_size=24, **fields)
    p = init_hyena(cfg, generator=_g(1), dtype=DT)
    q, k, v = _qkv((2, 17, 5), seed=2)
    full = hyena(p, q, k, v, cfg=cfg)
    state = init_hyena_state(p, cfg, 2, max_len=24)
    outs = []
    for t in range(17):
        y, state = hyena_step(p, q[:, t], k[:, t], v[:, t], state, cfg=cfg)
        outs.append(y)
    assert_close_rel(full, torch.stack(outs, 1), 1e-12)
    assert int(state.position) == 17


@pytest.mark.parametrize("ndim", [2, 3])
def test_nd_shapes_modes_and_bfloat16(ndim):
    spatial = (4, 5, 3)[:ndim]
    mode = ("circular", "zero", "circular")[:ndim]
    shell = Hyena(hidden_dim=4, ndim=ndim, max_size=spatial, mode=mode, norm="rms")
    q, k, v = _qkv((2, *spatial, 4), dtype=torch.float32)
    y = shell(q, k, v, None, conditioning=torch.ones(2, 3))  # unknown kwargs are ignored
    assert y.shape == q.shape
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_auto = shell(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert y_auto.dtype == torch.bfloat16
    # A handful of bfloat16 roundings (inputs, short conv, gates, output; 2^-9 each), FFTs in
    # float32: measured ≤ 6.3e-3 over 15 seeds (documented in docs/hyena.md).
    assert compute_relative_error(y, y_auto) < 1e-2
    y_half = shell.to(torch.bfloat16)(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert y_half.dtype == torch.bfloat16
    assert compute_relative_error(y, y_half) < 1e-2


def test_shell_parity_vmap_grad_and_compile():
    cfg = HyenaConfig(hidden_dim=4, max_size=12, qk_norm="l2")
    shell = Hyena(cfg=cfg, dtype=DT)
    q, k, v = _qkv((2, 9, 4))
    assert_shell_matches_functional(shell, lambda p, a, b, c: hyena(p, a, b, c, cfg=cfg), q, k, v)
    stacked = stack_params([init_hyena(cfg, generator=_g(s), dtype=DT) for s in range(3)])
    assert_vmap_matches_loop(
        lambda p, a: hyena(p, a, a.flip(1), a * 2, cfg=cfg), (stacked, q), (0, None), rtol=1e-10
    )
    grads = torch.func.grad(lambda p: hyena(p, q, k, v, cfg=cfg).square().sum())(shell.params())
    assert grads.filter.layers[0].weight.abs().sum() > 0
    qf, kf, vf = (t.float() for t in (q, k, v))
    p32 = init_hyena(cfg, generator=_g(0))
    assert_compiles(lambda p, a, b, c: hyena(p, a, b, c, cfg=cfg), p32, qf, kf, vf)


def test_cp_group_and_config_errors():
    shell = Hyena(hidden_dim=4, max_size=8)
    q, k, v = _qkv((1, 8, 4), dtype=torch.float32)
    with pytest.raises(NotImplementedError, match="context parallelism"):
        shell(q, k, v, object())
    with pytest.raises(ValueError, match="mode must be one of"):
        HyenaConfig(hidden_dim=4, mode="same")
    with pytest.raises(ValueError, match="'causal' needs exactly one spatial axis"):
        HyenaConfig(hidden_dim=4, ndim=2, mode="causal")
    with pytest.raises(ValueError, match="contradicts"):
        HyenaConfig(hidden_dim=4, causal=False, mode="causal")
    with pytest.raises(ValueError, match="filter: channels and ndim"):
        HyenaConfig(hidden_dim=4, filter=KernelNetConfig(channels=3, construction_size=8))
    with pytest.raises(ValueError, match="2 spatial axes"):
        Hyena(hidden_dim=4, ndim=2, max_size=8, mode="zero")(q, k, v)
    # A channel mismatch: the shape checker (tests run with SUBQ_TYPECHECK=1) or the
    # function's own ValueError, whichever sees it first.
    with pytest.raises((TypeError, ValueError), match=r"hidden_dim=4|consistent"):
        shell(q[..., :3], k[..., :3], v[..., :3])
    with pytest.raises(ValueError, match="decoding needs a causal 1D Hyena"):
        init_hyena_state(shell.params(), HyenaConfig(hidden_dim=4, causal=False, max_size=8), 1, 8)


def test_flop_count_convention():
    cfg = HyenaConfig(hidden_dim=64, max_size=1024)
    f1k, f4k = hyena_flop_count(cfg, (1024,)), hyena_flop_count(cfg, (4096,))
    # Dominated by O(T log T · C) FFTs: 4× the tokens costs a bit more than 4×, far below 16×.
    assert 4 < f4k / f1k < 6
    # A decoding step costs O(T · C): the direct sum over the history.
    step = hyena_flop_count(cfg, (1024,), inference=True)
    assert 2 * 64 * 1024 < step < f1k / 100
    assert Hyena(cfg=cfg).flop_count((1024,)) == f1k


def test_film_conditioning_per_sample_kernels_and_decoding():
    cfg = HyenaConfig(hidden_dim=4, max_size=12, cond_dim=3)
    p = init_hyena(cfg, generator=_g(0), dtype=DT)
    q, k, v = _qkv((2, 12, 4), seed=1)
    q, k, v = (t[:1].expand(2, -1, -1).clone() for t in (q, k, v))  # same input twice
    cond = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]], dtype=DT)
    plain = hyena(p, q, k, v, cfg=cfg)
    assert_close_rel(plain, hyena(p, q, k, v, cfg=cfg, conditioning=cond), 0.0)  # zero init
    p.film.weight = torch.randn(p.film.weight.shape, generator=_g(2), dtype=DT)
    y = hyena(p, q, k, v, cfg=cfg, conditioning=cond)
    assert (y[0] - y[1]).abs().max() > 1e-6
    assert_close_rel(y[1:], hyena(p, q[1:], k[1:], v[1:], cfg=cfg, conditioning=cond[1:]), 1e-13)
    state = init_hyena_state(p, cfg, 2, 12, conditioning=cond)
    outs = []
    for t in range(12):
        out, state = hyena_step(p, q[:, t], k[:, t], v[:, t], state, cfg=cfg)
        outs.append(out)
    assert_close_rel(y, torch.stack(outs, 1), 1e-12)


def test_film_runs_in_float64_with_float64_params():
    """The FiLM projection stays in the params' float64 (it once ran in float32): gradcheck."""
    cfg = HyenaConfig(hidden_dim=4, max_size=8, cond_dim=3)
    p = init_hyena(cfg, generator=_g(0), dtype=DT)
    p.film.weight = torch.randn(p.film.weight.shape, generator=_g(1), dtype=DT)
    q, k, v = _qkv((2, 8, 4), seed=2)
    cond = torch.randn(2, 3, generator=_g(3), dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: hyena(p, q, k, v, cfg=cfg, conditioning=c), (cond,))
    with pytest.raises(ValueError, match=r"cond_dim\] = \[B, 3\], got shape \(2, 2\)"):
        hyena(p, q, k, v, cfg=cfg, conditioning=torch.ones(2, 2, dtype=DT))


def test_rff_filter_frequencies_are_a_buffer_of_the_shell():
    filt = KernelNetConfig(channels=4, kind="rff", rff_features=8, construction_size=8)
    shell = Hyena(hidden_dim=4, max_size=8, filter=filt, generator=_g(0), dtype=DT)
    assert "rff_freqs" in dict(shell.named_buffers())
    assert not any("rff" in name for name, _ in shell.named_parameters())
    q, k, v = _qkv((2, 8, 4))
    assert_shell_matches_functional(
        shell,
        lambda p, a, b, c: hyena(p, a, b, c, cfg=shell.cfg, buffers=shell.buffers_pytree()),
        q,
        k,
        v,
    )


@pytest.mark.parametrize("mode", ["circular", ("circular", "zero")])
def test_circular_hyena_is_shift_equivariant_along_the_circular_axes(mode):
    """The short convolution wraps where the long convolution does, so rolling the input along a
    circular axis rolls the output (with zero padding there it would not)."""
    cfg = HyenaConfig(hidden_dim=4, ndim=2, max_size=(6, 5), mode=mode, short_kernel_size=3)
    p = init_hyena(cfg, generator=_g(0), dtype=DT)
    q, k, v = _qkv((2, 6, 5, 4))
    y = hyena(p, q, k, v, cfg=cfg)
    dims = (1, 2) if mode == "circular" else (1,)
    shifts = (2, 3)[: len(dims)]
    rolled = [torch.roll(t, shifts, dims) for t in (q, k, v)]
    assert_close_rel(torch.roll(y, shifts, dims), hyena(p, *rolled, cfg=cfg), 1e-12)
