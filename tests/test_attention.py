"""Softmax attention: every backend against an independent naive oracle, in float64."""

from __future__ import annotations

import math

import pytest
import torch

from subq.functional.attention import (
    AttentionConfig,
    AttentionMixerConfig,
    AttentionMixerParams,
    attention,
    attention_flop_count,
    attention_mixer,
    init_attention,
    multi_head_attention,
    multi_head_attention_flop_count,
)
from subq.nn.attention import Attention, AttentionMixer
from subq.testing import (
    assert_causal,
    assert_close_rel,
    assert_compiles,
    assert_shell_matches_functional,
    assert_vmap_matches_loop,
)
from subq.testing.strategies import randn

BACKENDS = ["standard", "memory_efficient", "flash", "pallas_flash"]
NO_SOFTCAP = ("flash", "pallas_flash")  # SDPA has no soft-capping


def oracle(q, k, v, allowed, bias=None, scale=None, softcap=None):
    """Written independently of subq: repeated K/V, full [B, H, T, S] scores, softmax."""
    heads, kvh = q.shape[1], k.shape[1]
    k = k.repeat_interleave(heads // kvh, dim=1)
    v = v.repeat_interleave(heads // kvh, dim=1)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = torch.einsum("bhtd,bhsd->bhts", q, k) * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    if bias is not None:
        s = s + bias
    s = s.masked_fill(~allowed, float("-inf"))
    w = torch.softmax(s, dim=-1)
    w = torch.where(allowed.any(-1, keepdim=True), w, torch.zeros_like(w))
    return torch.einsum("bhts,bhsd->bhtd", w, v)


def qkv(b=2, h=4, kvh=2, t=11, s=11, d=8, seed=0, dtype=torch.float64):
    return (
        randn(b, h, t, d, seed=seed, dtype=dtype),
        randn(b, kvh, s, d, seed=seed + 1, dtype=dtype),
        randn(b, kvh, s, d, seed=seed + 2, dtype=dtype),
    )


def grid(t, s, offset):
    qp = torch.arange(t)[:, None] + offset
    kp = torch.arange(s)[None, :]
    return qp, kp


def run_all(q, k, v, expected, **opts):
    for backend in BACKENDS:
        out = attention(q, k, v, backend=backend, block_size=4, **opts)
        assert_close_rel(expected, out, 1e-12, what=f"{backend} {sorted(opts)}")


@pytest.mark.parametrize("t,s", [(11, 11), (5, 11), (11, 5)])
@pytest.mark.parametrize("alignment", ["bottom_right", "top_left"])
def test_causal_and_window_alignment(t, s, alignment):
    q, k, v = qkv(t=t, s=s)
    qp, kp = grid(t, s, s - t if alignment == "bottom_right" else 0)
    run_all(
        q, k, v, oracle(q, k, v, (kp <= qp).expand(2, 4, t, s)), causal=True, alignment=alignment
    )
    allowed = (kp <= qp) & (qp - kp < 3)
    run_all(
        q,
        k,
        v,
        oracle(q, k, v, allowed.expand(2, 4, t, s)),
        causal=True,
        window=3,
        alignment=alignment,
    )
    allowed = (qp - kp).abs() < 2
    run_all(q, k, v, oracle(q, k, v, allowed.expand(2, 4, t, s)), window=2, alignment=alignment)


def test_padding_mask_past_one_block():
    # The reference crashes when a (B, 1, 1, S) padding mask spans more than one block.
    q, k, v = qkv(t=13, s=13)
    keep = torch.ones(2, 13, dtype=torch.bool)
    keep[0, 9:] = False
    keep[1, :6] = False
    qp, kp = grid(13, 13, 0)
    allowed = (kp <= qp)[None, None] & keep[:, None, None, :]
    expected = oracle(q, k, v, allowed.expand(2, 4, 13, 13))
    run_all(q, k, v, expected, causal=True, key_padding_mask=keep)
    run_all(q, k, v, expected, causal=True, mask=keep[:, None, None, :])
    # Batch 1 has rows 0..5 with no visible key: exact zeros, not NaN or mean(V), on every
    # backend (also with an additive bias, which takes SDPA's other mask path).
    bias = randn(2, 4, 13, 13, seed=3)
    for backend in BACKENDS:
        for extra in ({}, {"bias": bias}, {"alibi_slopes": torch.full((4,), 0.5).double()}):
            out = attention(
                q, k, v, causal=True, key_padding_mask=keep, backend=backend, block_size=4, **extra
            )
            assert torch.equal(out[1, :, :6], torch.zeros_like(out[1, :, :6])), backend


def test_no_keys_gives_zeros_on_every_backend():
    q, k, v = qkv(t=3, s=0)
    for backend in BACKENDS:
        out = attention(q, k, v, backend=backend)
        assert torch.equal(out, torch.zeros_like(out)), backend


def test_general_mask_per_head_and_kv_segments():
    # A per-head [B, heads, T, S] mask exercises the split of heads into (kv_heads, groups).
    t, s = 7, 10
    q, k, v = qkv(t=t, s=s)
    g = torch.Generator().manual_seed(11)
    mask = torch.rand(2, 4, t, s, generator=g) < 0.6
    mask[0, 3, 2] = False  # one fully masked row in head 3
    run_all(q, k, v, oracle(q, k, v, mask), mask=mask)
    qp, kp = grid(t, s, s - t)
    both = mask & (kp <= qp)
    run_all(q, k, v, oracle(q, k, v, both), mask=mask, causal=True)
    # Per-query-row mask [T, S] broadcast over batch and heads.
    run_all(q, k, v, oracle(q, k, v, mask[1, 1].expand(2, 4, t, s)), mask=mask[1, 1])
    # Segments when query and key lengths differ: kv_segment_ids [B, S].
    q_seg = torch.tensor([[0, 0, 1, 1, 1, 2, 2], [0, 1, 1, 1, 1, 1, 1]])
    k_seg = torch.tensor([[0] * 4 + [1] * 4 + [2] * 2, [1] * 10])
    same = (q_seg[:, :, None] == k_seg[:, None, :])[:, None].expand(2, 4, t, s)
    run_all(q, k, v, oracle(q, k, v, same), segment_ids=q_seg, kv_segment_ids=k_seg)
    # An int prefix with a causal window: keys < 3 stay visible to every query.
    win = (kp <= qp) & (qp - kp < 2) | (kp < 3)
    run_all(
        q, k, v, oracle(q, k, v, win.expand(2, 4, t, s)), causal=True, window=2, prefix_length=3
    )


def test_segments_prefix_bias_alibi_softcap():
    t = 10
    q, k, v = qkv(t=t, s=t)
    qp, kp = grid(t, t, 0)
    seg = torch.tensor([[0] * 4 + [1] * 6, [0] * 7 + [1] * 3])
    same = seg[:, :, None] == seg[:, None, :]
    causal = kp <= qp
    run_all(
        q,
        k,
        v,
        oracle(q, k, v, (causal & same)[:, None].expand(2, 4, t, t)),
        causal=True,
        segment_ids=seg,
    )
    prefix = torch.tensor([3, 6])
    pl = causal | (kp < prefix[:, None, None])
    run_all(
        q, k, v, oracle(q, k, v, pl[:, None].expand(2, 4, t, t)), causal=True, prefix_length=prefix
    )
    bias = randn(1, 4, t, t, seed=5)
    run_all(q, k, v, oracle(q, k, v, causal.expand(2, 4, t, t), bias=bias), causal=True, bias=bias)
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625], dtype=torch.float64)
    alibi = -slopes[:, None, None] * (qp - kp).abs()
    run_all(
        q,
        k,
        v,
        oracle(q, k, v, causal.expand(2, 4, t, t), bias=alibi),
        causal=True,
        alibi_slopes=slopes,
    )
    # Soft-capping is not expressible in SDPA: standard and memory_efficient only.
    expected = oracle(q, k, v, causal.expand(2, 4, t, t), softcap=0.7, scale=2.0)
    for backend in BACKENDS:
        if backend in NO_SOFTCAP:
            with pytest.raises(ValueError, match="flash/pallas_flash backends do not support"):
                attention(q, k, v, causal=True, softcap=0.7, backend=backend)
            continue
        out = attention(q, k, v, causal=True, softcap=0.7, scale=2.0, backend=backend, block_size=3)
        assert_close_rel(expected, out, 1e-12)


def test_explicit_positions_match_implicit():
    q, k, v = qkv(t=4, s=9)
    implicit = attention(q, k, v, causal=True, window=3)
    pos_q = torch.arange(5, 9).expand(2, 4)
    pos_k = torch.arange(9).expand(2, 9)
    for backend in BACKENDS:
        explicit = attention(
            q,
            k,
            v,
            causal=True,
            window=3,
            query_positions=pos_q,
            key_positions=pos_k,
            backend=backend,
            block_size=2,
        )
        assert_close_rel(implicit, explicit, 1e-12)


def _grad_options():
    keep = torch.ones(2, 9, dtype=torch.bool)
    keep[1, :3] = False  # rows 0..2 of batch 1 see no key: zero output and zero gradients
    yield "window-padding-bias", dict(causal=True, window=5, key_padding_mask=keep)
    yield (
        "alibi-prefix",
        dict(
            causal=True, alibi_slopes=torch.tensor([0.5, 0.3, 0.2, 0.1]).double(), prefix_length=4
        ),
    )
    yield (
        "segments-softcap",
        dict(
            causal=True,
            segment_ids=torch.tensor([[0] * 4 + [1] * 5, [0] * 2 + [1] * 7]),
            softcap=1.5,
        ),
    )


@pytest.mark.parametrize(
    "name,opts", list(_grad_options()), ids=lambda x: x if isinstance(x, str) else ""
)
def test_gradients_match_standard(name, opts):
    q, k, v = qkv(t=9, s=9)
    bias = randn(2, 1, 9, 9, seed=9)
    cot = randn(2, 4, 9, 8, seed=10)

    def grads(backend):
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v, bias)]
        out = attention(*leaves[:3], bias=leaves[3], backend=backend, block_size=4, **opts)
        return torch.autograd.grad((out * cot).sum(), leaves)

    ref = grads("standard")
    if "key_padding_mask" in opts:
        assert all(torch.equal(g[1, :, :3], torch.zeros_like(g[1, :, :3])) for g in ref[:1])
    for backend in BACKENDS[1:]:
        if backend in NO_SOFTCAP and "softcap" in opts:
            continue
        got = grads(backend)
        assert_close_rel(ref, got, 1e-11, what=f"{backend} grads")


def test_standard_gradients_equal_finite_differences():
    # The oracle's own gradients, against finite differences (independent of autograd rules),
    # with GQA, a window, a bias, ALiBi and fully masked rows.
    q, k, v = qkv(b=1, h=4, kvh=2, t=5, s=6, d=3)
    keep = torch.tensor([[False, False, True, True, True, True]])
    bias = randn(1, 4, 5, 6, seed=4)
    slopes = torch.tensor([0.5, 0.3, 0.2, 0.1]).double()

    def f(q, k, v, bias):
        return attention(
            q,
            k,
            v,
            causal=True,
            window=3,
            key_padding_mask=keep,
            bias=bias,
            alibi_slopes=slopes,
            softcap=2.0,
            backend="standard",
        )

    leaves = tuple(x.clone().requires_grad_(True) for x in (q, k, v, bias))
    assert torch.autograd.gradcheck(f, leaves)


def test_dropout_reproducible_and_backend_independent():
    q, k, v = qkv(t=12, s=12)
    outs = [
        attention(q, k, v, causal=True, dropout_p=0.3, dropout_seed=123, backend=b, block_size=5)
        for b in ("standard", "memory_efficient")
    ]
    assert_close_rel(outs[0], outs[1], 1e-12)
    again = attention(q, k, v, causal=True, dropout_p=0.3, dropout_seed=123)
    assert torch.equal(outs[0], again)
    other = attention(q, k, v, causal=True, dropout_p=0.3, dropout_seed=124)
    assert not torch.allclose(outs[0], other)
    # The drop fraction: with v = identity rows the weights are observable directly.
    big_q = randn(1, 1, 64, 4, seed=1)
    eye = torch.eye(64, dtype=torch.float64)[None, None]
    w = attention(big_q, big_q, eye, dropout_p=0.25, dropout_seed=7)
    frac = (w == 0).double().mean().item()
    assert abs(frac - 0.25) < 0.02, frac
    with pytest.raises(ValueError, match="dropout_seed"):
        attention(q, k, v, dropout_p=0.1)
    with pytest.raises(ValueError, match="dropout"):
        attention(q, k, v, dropout_p=0.1, dropout_seed=1, backend="flash")


def test_channels_last_layout():
    q, k, v = qkv()
    out = attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True, layout="bthd"
    )
    assert_close_rel(attention(q, k, v, causal=True), out.transpose(1, 2), 1e-14)


def test_causality_by_perturbation_and_gradient():
    k_w = randn(8, 8, seed=3)
    for backend in BACKENDS:

        def f(x, backend=backend):
            # x [B, T, 8] -> heads 2 x 4, q = x, k = x W, v = x
            b, t, _ = x.shape
            q = x.reshape(b, t, 2, 4).transpose(1, 2)
            k = (x @ k_w).reshape(b, t, 2, 4).transpose(1, 2)
            out = attention(q, k, q, causal=True, backend=backend, block_size=3)
            return out.transpose(1, 2).reshape(b, t, 8)

        assert_causal(f, randn(2, 10, 8, seed=4), time_axis=1)


def test_bf16_error_bound():
    q, k, v = qkv(t=64, s=64, d=32)
    ref = attention(q, k, v, causal=True)
    low = [x.bfloat16() for x in (q, k, v)]
    ref_rounded_inputs = attention(*(x.double() for x in low), causal=True)
    for backend in BACKENDS:
        out = attention(*low, causal=True, backend=backend, block_size=16)
        assert out.dtype == torch.bfloat16
        # End to end (inputs and output rounded to bf16): the documented bound, measured 2.9e-3.
        assert_close_rel(ref, out.double(), 5e-3, what=backend)
        # The kernel alone: float32 compute, then one rounding of the output (≤ 2^-9 relative).
        assert_close_rel(ref_rounded_inputs, out.double(), 2.0e-3, what=backend)


def test_bad_input_errors():
    # Each message names the argument, what was expected and what was given.
    q, k, v = qkv()
    with pytest.raises(
        ValueError, match=r"key must be .*kv_heads dividing heads=4, got kv_heads=3"
    ):
        attention(q, randn(2, 3, 11, 8, seed=0), randn(2, 3, 11, 8, seed=0))
    with pytest.raises(ValueError, match=r"key must be head_dim 8 like query, got head_dim 4"):
        attention(q, randn(2, 2, 11, 4, seed=0), v)
    for bad in (0, -2):
        with pytest.raises(ValueError, match=rf"window must be a positive int or None, got {bad}"):
            attention(q, k, v, window=bad)
    with pytest.raises(
        ValueError,
        match=r"key_padding_mask must be a bool tensor of shape \[B, S\] = \[2, 11\], got",
    ):
        attention(q, k, v, key_padding_mask=torch.ones(2, 10, dtype=torch.bool))
    with pytest.raises(
        ValueError,
        match=r"mask must be broadcastable to \[B, heads, T, S\] = \[2, 4, 11, 11\], "
        r"got shape \(2, 3, 11, 11\)",
    ):
        attention(q, k, v, mask=torch.ones(2, 3, 11, 11, dtype=torch.bool))
    # The dtype check of the function itself (SUBQ_TYPECHECK, on in tests, catches it earlier).
    unchecked = getattr(attention, "__wrapped__", attention)
    with pytest.raises(ValueError, match=r"mask must be a bool tensor .* got dtype torch.float64"):
        unchecked(q, k, v, mask=torch.ones(11, 11, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"backend must be one of .*'standard'.* got 'pallas'"):
        attention(q, k, v, backend="pallas")
    with pytest.raises(ValueError, match=r"alibi_slopes must be .*\[heads=4\], got shape \(3,\)"):
        attention(q, k, v, alibi_slopes=torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"value must be \[B, kv_heads, S\] = \[2, 2, 11\]"):
        attention(q, k, v[:, :, :5])
    with pytest.raises(ValueError, match=r"kv_segment_ids must be .*\[2, 5\].*got shape \(2, 11\)"):
        attention(q, k[:, :, :5], v[:, :, :5], segment_ids=torch.zeros(2, 11, dtype=torch.long))
    with pytest.raises(ValueError, match=r"prefix_length must be used with causal=True"):
        attention(q, k, v, prefix_length=2)
    with pytest.raises(
        ValueError, match=r"num_heads \(4\) must be divisible by num_kv_heads, got num_kv_heads=3"
    ):
        AttentionConfig(dim=16, num_heads=4, num_kv_heads=3)
    with pytest.raises(
        ValueError, match=r"AttentionConfig.window: expected a positive int.* got 0"
    ):
        AttentionConfig(dim=16, num_heads=4, window=0)
    with pytest.raises(ValueError, match=r"linear_feature_map: expected one of .* got 'cos'"):
        AttentionConfig(dim=16, num_heads=4, linear_feature_map="cos")
    with pytest.raises(ValueError, match=r"attention_type: expected one of .* got 'fast'"):
        AttentionConfig(dim=16, num_heads=4, attention_type="fast")


def test_compiles_without_graph_breaks():
    q, k, v = qkv(t=9, s=9)
    keep = torch.ones(2, 9, dtype=torch.bool)
    keep[0, 7:] = False
    seg = torch.tensor([[0] * 4 + [1] * 5, [0] * 2 + [1] * 7])
    slopes = torch.tensor([0.5, 0.3, 0.2, 0.1]).double()
    for backend in BACKENDS:

        def f(q, k, v, keep, backend=backend):
            return attention(
                q, k, v, causal=True, window=4, key_padding_mask=keep, backend=backend, block_size=4
            )

        def plain(q, k, v, backend=backend):
            return attention(q, k, v, causal=True, backend=backend, block_size=4)

        def positional(q, k, v, seg, slopes, backend=backend):
            return attention(
                q,
                k,
                v,
                causal=True,
                segment_ids=seg,
                alibi_slopes=slopes,
                prefix_length=3,
                backend=backend,
                block_size=4,
            )

        cases = [(f, (q, k, v, keep)), (plain, (q, k, v)), (positional, (q, k, v, seg, slopes))]
        if backend not in NO_SOFTCAP:

            def capped(q, k, v, backend=backend):
                return attention(
                    q,
                    k,
                    v,
                    causal=True,
                    softcap=2.0,
                    dropout_p=0.2,
                    dropout_seed=5,
                    backend=backend,
                    block_size=4,
                )

            cases.append((capped, (q, k, v)))
        for fn, args in cases:
            # Zero graph breaks, and the compiled graph computes what eager does (float64).
            assert_close_rel(fn(*args), assert_compiles(fn, *args), 1e-12, what=backend)


def test_vmap_over_an_ensemble_equals_loop():
    q, k, v = qkv(t=6, s=6)
    qs = torch.stack([q, q * 0.5, q * 2.0])
    ks, vs = torch.stack([k, k.flip(2), -k]), torch.stack([v, v * 3.0, v.flip(-1)])
    keep = torch.ones(3, 2, 6, dtype=torch.bool)
    keep[1, 0, :2] = False
    keep[2, 1, 4:] = False
    for backend in BACKENDS:

        def f(q, k, v, backend=backend):
            return attention(q, k, v, causal=True, backend=backend, block_size=4)

        assert_vmap_matches_loop(f, (qs, k, v), (0, None, None), rtol=1e-12)

        def g(q, k, v, keep, backend=backend):
            return attention(
                q, k, v, causal=True, window=3, key_padding_mask=keep, backend=backend, block_size=4
            )

        assert_vmap_matches_loop(g, (qs, ks, vs, keep), (0, 0, 0, 0), rtol=1e-12)


def _layer_cfgs():
    yield AttentionConfig(dim=16, num_heads=4, causal=True)
    yield AttentionConfig(
        dim=16,
        num_heads=4,
        num_kv_heads=2,
        causal=True,
        pos_emb="rope",
        qk_norm="rms",
        fused_qkv=False,
        qkv_bias=True,
        out_bias=True,
    )
    yield AttentionConfig(
        dim=16,
        num_heads=4,
        num_kv_heads=1,
        causal=True,
        window=3,
        qk_norm="l2",
        attention_type="memory_efficient",
        attention_block_size=3,
    )
    yield AttentionConfig(
        dim=16,
        num_heads=2,
        qk_norm="l2",
        learnable_qk_scale=False,
        pos_emb="rope",
        attention_type="flash",
    )


@pytest.mark.parametrize("cfg", list(_layer_cfgs()), ids=lambda c: f"{c.qk_norm}-{c.pos_emb}")
def test_attention_shell_matches_functional(cfg):
    shell = Attention(cfg, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = randn(2, 7, 16, seed=1)
    assert_shell_matches_functional(shell, multi_head_attention, x, rtol=1e-12, cfg=cfg)
    if cfg.causal:
        assert_causal(lambda x: shell(x), x, time_axis=1)


def test_multi_head_attention_matches_manual_composition():
    cfg = AttentionConfig(dim=12, num_heads=3, causal=True)
    p = init_attention(cfg, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = randn(2, 5, 12, seed=2)
    q, k, v = (x @ p.qkv_weight.T).split(12, dim=-1)
    heads = lambda t: t.reshape(2, 5, 3, 4).transpose(1, 2)  # noqa: E731
    qp, kp = grid(5, 5, 0)
    o = oracle(heads(q), heads(k), heads(v), (kp <= qp).expand(2, 3, 5, 5))
    expected = o.transpose(1, 2).reshape(2, 5, 12) @ p.out_weight.T
    assert_close_rel(expected, multi_head_attention(p, x, cfg=cfg), 1e-12)


def test_flop_counts():
    assert attention_flop_count(2, 4, 3) == 2 * 2 * 9 * 8
    assert attention_flop_count(2, 4, 3, causal=True) == 2 * 2 * 6 * 8
    assert attention_flop_count(1, 1, 4, causal=True, window=2) == 2 * 7 * 2
    cfg = AttentionConfig(dim=8, num_heads=2)
    assert multi_head_attention_flop_count(cfg, (5,)) == 8 * 5 * 64 + attention_flop_count(2, 4, 5)
    assert Attention(cfg).flop_count((5,)) == multi_head_attention_flop_count(cfg, (5,))
    # A causal layer over a 2-D grid is causal in row-major order: only visible pairs count.
    nd = AttentionConfig(dim=8, num_heads=2, causal=True)
    proj = 8 * 6 * 64
    assert multi_head_attention_flop_count(nd, (2, 3)) == proj + attention_flop_count(
        2, 4, 6, causal=True
    )


def test_attention_mixer_protocol_and_nd_rope():
    mixer = AttentionMixer(hidden_dim=16, num_heads=2, pos_emb="rope", dtype=torch.float64)
    q, k, v = (randn(2, 3, 4, 16, seed=s) for s in range(3))
    y = mixer(q, k, v, None, conditioning=torch.ones(2, 5))
    assert y.shape == q.shape
    assert_close_rel(attention_mixer(mixer.params(), q, k, v, cfg=mixer.cfg), y, 0.0)
    with pytest.raises(NotImplementedError, match="context parallelism"):
        mixer(q, k, v, object())
    # Without RoPE, attention over the flattened grid is permutation-equivariant.
    plain = AttentionMixerConfig(hidden_dim=16, num_heads=2)
    out = attention_mixer(AttentionMixerParams(), q, k, v, cfg=plain)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))

    def shuffle(t):
        return t.reshape(2, 12, 16)[:, perm].reshape(2, 3, 4, 16)

    assert_close_rel(
        shuffle(out),
        attention_mixer(AttentionMixerParams(), shuffle(q), shuffle(k), shuffle(v), cfg=plain),
        1e-12,
    )
    # The causal 1-D mixer (with RoPE) is causal, by perturbation and by gradients.
    causal = AttentionMixer(
        hidden_dim=16, num_heads=2, causal=True, pos_emb="rope", dtype=torch.float64
    )
    x = randn(2, 9, 16, seed=5)
    assert_causal(lambda x: causal(x, x, x), x, time_axis=1)
    assert causal.flop_count((9,)) == attention_flop_count(2, 8, 9, causal=True)


def test_attention_mixer_in_a_qkv_mixer_style_composition():
    # The protocol QKVSequenceMixer relies on: hidden_dim keyword, (q, k, v, cp_group, **kw).
    mixer = AttentionMixer(hidden_dim=8, num_heads=2, qk_norm="rms", dtype=torch.float64)
    names = {name for name, _ in mixer.named_parameters()}
    assert names == {"q_norm_weight", "k_norm_weight"}
    q, k, v = (randn(1, 5, 8, seed=s) for s in range(3))
    assert_shell_matches_functional(
        mixer, lambda p, q, k, v: attention_mixer(p, q, k, v, cfg=mixer.cfg), q, k, v, rtol=1e-12
    )


def test_memory_efficient_saves_linear_activations_for_backward():
    def saved_bytes(t, backend):
        q = randn(1, 2, t, 16, seed=0).requires_grad_(True)
        seen = {}

        def pack(x):
            seen[(x.data_ptr(), x.numel(), x.dtype)] = x.numel() * x.element_size()
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            attention(q, q, q, causal=True, backend=backend, block_size=32)
        return sum(seen.values())

    eff = [saved_bytes(t, "memory_efficient") for t in (128, 256, 512)]
    assert eff[1] <= 2.2 * eff[0] and eff[2] <= 2.2 * eff[1], eff  # O(T)
    naive = [saved_bytes(t, "standard") for t in (128, 256)]
    assert naive[1] >= 3.5 * naive[0], naive  # the oracle keeps O(T²) scores


def test_alibi_layer_matches_positional_alibi_bias():
    from subq.functional.positional import alibi_bias, alibi_slopes

    cfg = AttentionConfig(dim=12, num_heads=3, causal=True, pos_emb="alibi")
    p = init_attention(cfg, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = randn(2, 6, 12, seed=4)
    q, k, v = (x @ p.qkv_weight.T).split(12, dim=-1)
    heads = lambda t: t.reshape(2, 6, 3, 4).transpose(1, 2)  # noqa: E731
    pos = torch.arange(6)
    bias = alibi_bias(alibi_slopes(3, dtype=torch.float64), pos, pos)
    qp, kp = grid(6, 6, 0)
    o = oracle(heads(q), heads(k), heads(v), (kp <= qp).expand(2, 3, 6, 6), bias=bias)
    expected = o.transpose(1, 2).reshape(2, 6, 12) @ p.out_weight.T
    assert_close_rel(expected, multi_head_attention(p, x, cfg=cfg), 1e-12)


def test_explain_shows_the_choice():
    from subq.ops import explain, strict

    text = explain("attention", device="cpu", dtype=torch.float32)
    assert "using 'standard'" in text and "not 'flash': targets cuda" in text
    assert "using 'math'" in explain("sdpa", device="cpu", dtype=torch.float32, head_dim=64)
    # On CPU there is no fused backend to fall back from, so strict mode runs as usual.
    q, k, v = qkv()
    with strict():
        out = attention(q, k, v, causal=True, softcap=1.0)
    assert torch.isfinite(out).all()


def test_attention_mixer_inside_qkv_sequence_mixer():
    from subq.lazy_config import LazyConfig
    from subq.nn.mixer import QKVSequenceMixer

    spec = LazyConfig(AttentionMixer)(num_heads=4, pos_emb="rope", dtype=torch.float64)
    block = QKVSequenceMixer(hidden_dim=32, mixer_cfg=spec).double()
    x = randn(2, 4, 4, 32, seed=0)
    y = block(x, conditioning=torch.ones(2, 3))  # kwargs meant for other mixers are ignored
    assert y.shape == x.shape
    q, k, v = torch.nn.functional.linear(x, block.qkv_proj.weight).split(32, dim=-1)
    inner = attention_mixer(AttentionMixerParams(), q, k, v, cfg=block.mixer.cfg)
    assert_close_rel(torch.nn.functional.linear(inner, block.out_proj.weight), y, 1e-12)
    # Projections 8·N·C² plus the attention over N = 16 tokens.
    assert block.flop_count((4, 4)) == 8 * 16 * 32**2 + attention_flop_count(4, 8, 16)


def test_unmasked_cross_attention_passes_no_mask_to_sdpa(monkeypatch):
    # T != S without causal needs no attn_mask (which would keep SDPA off its flash kernel).
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, is_causal=False, **kw):
        seen.append((attn_mask, is_causal))
        return real(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    q, k, v = qkv(t=4, s=9)
    allowed = torch.ones(2, 4, 4, 9, dtype=torch.bool)
    assert_close_rel(oracle(q, k, v, allowed), attention(q, k, v, backend="flash"), 1e-12)
    assert seen == [(None, False)]


def test_sdpa_kernels_without_native_gqa_get_repeated_kv():
    from subq.ops.attention import _select_kernel

    _, k, v = qkv()
    facts = {"device": "cuda", "dtype": torch.float32, "head_dim": 8, "has_mask": True}
    _, k2, v2, gqa = _select_kernel(facts, None, k, v, heads=4)  # picks "efficient"
    assert torch.equal(v2[:, 3], v[:, 1])
    assert not gqa and k2.shape[1] == 4 and torch.equal(k2[:, 1], k[:, 0])
    facts = {"device": "cpu", "dtype": torch.float32, "head_dim": 8, "has_mask": True}
    _, k3, _, gqa = _select_kernel(facts, None, k, v, heads=4)  # 'math': grouped natively
    assert gqa and k3 is k
