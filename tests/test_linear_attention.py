"""Linear attention: chunked and recurrent forms against a quadratic oracle, in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from subq.functional.attention import AttentionConfig, init_attention, multi_head_attention
from subq.functional.linear_attention import (
    FEATURE_MAPS,
    init_linear_attention_state,
    linear_attention,
    linear_attention_step,
)
from subq.testing import (
    assert_causal,
    assert_close_rel,
    assert_compiles,
    assert_vmap_matches_loop,
)
from subq.testing.strategies import randn


def phi(x, name):
    return {
        "elu": lambda x: F.elu(x) + 1,
        "relu": F.relu,
        "softmax": lambda x: x.softmax(-1),
        "identity": lambda x: x,
    }[name](x)


def oracle(q, k, v, name, causal, keep=None, normalize=True):
    """The quadratic form: weights φ(q)·φ(k) over visible keys, normalised by their sum."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    w = torch.einsum("bhtd,bhsd->bhts", phi(q, name), phi(k, name))
    t, s = w.shape[-2:]
    if causal:
        w = w * torch.ones(t, s, dtype=torch.bool).tril()
    if keep is not None:
        w = w * keep[:, None, None, :]
    num = w @ v
    if not normalize:
        return num
    den = w.sum(-1, keepdim=True)
    return torch.where(den != 0, num / torch.where(den != 0, den, 1.0), 0.0)


def qkv(b=2, h=4, kvh=2, t=13, d=6, seed=0):
    return (
        randn(b, h, t, d, seed=seed),
        randn(b, kvh, t, d, seed=seed + 1),
        randn(b, kvh, t, 5, seed=seed + 2),
    )


@pytest.mark.parametrize("name", FEATURE_MAPS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("chunk", [1, 4, 13, 64])
def test_matches_quadratic_oracle(name, causal, chunk):
    q, k, v = qkv()
    normalize = name != "identity"
    expected = oracle(q, k, v, name, causal, normalize=normalize)
    got = linear_attention(
        q, k, v, causal=causal, feature_map=name, chunk_size=chunk, normalize=normalize
    )
    assert_close_rel(expected, got, 1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_padding_mask_is_honoured(causal):
    # The reference's causal linear attention with a mask attends only to token 0.
    q, k, v = qkv()
    keep = torch.ones(2, 13, dtype=torch.bool)
    keep[0, 8:] = False
    keep[1, :5] = False
    expected = oracle(q, k, v, "elu", causal, keep)
    got = linear_attention(q, k, v, causal=causal, chunk_size=4, key_padding_mask=keep)
    assert_close_rel(expected, got, 1e-12)
    if causal:  # rows before the first real key see nothing: zeros
        assert got[1, :, :5].abs().max() == 0


def test_recurrent_decode_equals_chunked():
    q, k, v = qkv(t=11)
    full = linear_attention(q, k, v, causal=True, chunk_size=4)
    prompt = 5
    out, state = linear_attention(
        q[:, :, :prompt],
        k[:, :, :prompt],
        v[:, :, :prompt],
        causal=True,
        chunk_size=4,
        return_state=True,
    )
    outs = [out]
    for i in range(prompt, 11):
        sl = slice(i, i + 1)
        y, state = linear_attention_step(state, q[:, :, sl], k[:, :, sl], v[:, :, sl])
        outs.append(y)
    assert_close_rel(full, torch.cat(outs, 2), 1e-12)
    # From an empty state, a long sequence in two pieces equals one call.
    empty = init_linear_attention_state(2, 2, 6, 5, dtype=torch.float64)
    a, st = linear_attention(
        q[:, :, :6],
        k[:, :, :6],
        v[:, :, :6],
        causal=True,
        chunk_size=4,
        initial_state=empty,
        return_state=True,
    )
    b_ = linear_attention(
        q[:, :, 6:], k[:, :, 6:], v[:, :, 6:], causal=True, chunk_size=3, initial_state=st
    )
    assert_close_rel(full, torch.cat([a, b_], 2), 1e-12)


def test_causal_by_perturbation_and_gradient():
    def f(x):
        q = x.reshape(2, 9, 2, 3).transpose(1, 2)
        return (
            linear_attention(q, q * 0.5, q.flip(-1), causal=True, chunk_size=4)
            .transpose(1, 2)
            .reshape(2, 9, 6)
        )

    assert_causal(f, randn(2, 9, 6, seed=3), time_axis=1)


def test_gradients_match_oracle():
    q, k, v = qkv(t=10)
    cot = randn(2, 4, 10, 5, seed=8)

    def grads(fn):
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
        return torch.autograd.grad((fn(*leaves) * cot).sum(), leaves)

    expected = grads(lambda q, k, v: oracle(q, k, v, "elu", True))
    got = grads(lambda q, k, v: linear_attention(q, k, v, causal=True, chunk_size=3))
    assert_close_rel(expected, got, 1e-11)


@pytest.mark.parametrize("causal", [True, False])
def test_compiles_and_vmaps(causal):
    q, k, v = qkv(t=9)
    keep = torch.ones(2, 9, dtype=torch.bool)
    keep[1, 2:5] = False

    def f(q, k, v, keep):
        return linear_attention(q, k, v, causal=causal, chunk_size=4, key_padding_mask=keep)

    assert_compiles(f, q, k, v, keep)
    stacked = torch.stack([q, 2 * q])
    assert_vmap_matches_loop(f, (stacked, k, v, keep), (0, None, None, None), rtol=1e-12)
    ks, vs = torch.stack([k, k.flip(2)]), torch.stack([v, -v])
    keeps = torch.stack([keep, keep.flip(1)])
    assert_vmap_matches_loop(f, (stacked, ks, vs, keeps), (0, 0, 0, 0), rtol=1e-12)


def test_bf16_error_bound():
    q, k, v = qkv(t=64, d=16)
    ref = linear_attention(q, k, v, causal=True, chunk_size=16)
    out = linear_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), causal=True, chunk_size=16)
    assert out.dtype == torch.bfloat16
    # The documented bound (docs/attention.md, Numerics); measured 2.7e-3.
    assert_close_rel(ref, out.double(), 5e-3)


def test_layer_with_linear_backend():
    cfg = AttentionConfig(
        dim=12,
        num_heads=2,
        num_kv_heads=1,
        causal=True,
        attention_type="linear",
        linear_attention_chunk_size=3,
    )
    p = init_attention(cfg, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = randn(2, 7, 12, seed=1)
    assert_causal(lambda x: multi_head_attention(p, x, cfg=cfg), x, time_axis=1)
    # The layer is projections around the quadratic form of linear attention.
    keep = torch.ones(2, 7, dtype=torch.bool)
    keep[0, 5:] = False
    q, k, v = (x @ p.qkv_weight.T).split((12, 6, 6), dim=-1)
    q = q.reshape(2, 7, 2, 6).transpose(1, 2)
    k, v = (t.reshape(2, 7, 1, 6).transpose(1, 2) for t in (k, v))
    o = oracle(q, k, v, "elu", True, keep)
    expected = o.transpose(1, 2).reshape(2, 7, 12) @ p.out_weight.T
    got = multi_head_attention(p, x, cfg=cfg, key_padding_mask=keep)
    assert_close_rel(expected, got, 1e-12)


def test_linear_backend_fixed_l2_scale_equals_learnable_scale_at_init():
    # Both forms of the L2 QK-norm logit scale give one function at init (q is scaled).
    common = dict(dim=12, num_heads=2, causal=True, attention_type="linear", qk_norm="l2")
    learn = AttentionConfig(**common, qk_scale_init=1.7)
    fixed = AttentionConfig(**common, qk_scale_init=1.7, learnable_qk_scale=False)
    p = init_attention(learn, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    p_fixed = init_attention(fixed, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert p_fixed.qk_scale is None
    x = randn(2, 7, 12, seed=1)
    assert_close_rel(
        multi_head_attention(p, x, cfg=learn), multi_head_attention(p_fixed, x, cfg=fixed), 1e-14
    )


def test_bad_input_errors():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"feature_map must be one of .* got 'cos'"):
        linear_attention(q, k, v, feature_map="cos")
    with pytest.raises(ValueError, match="chunk_size must be a positive int, got 0"):
        linear_attention(q, k, v, causal=True, chunk_size=0)
    with pytest.raises(ValueError, match="kv_heads must divide heads=4, got kv_heads=3"):
        linear_attention(q, randn(2, 3, 13, 6, seed=0), randn(2, 3, 13, 5, seed=0))
    with pytest.raises(ValueError, match="key head_dim must equal query's \\(6\\), got 4"):
        linear_attention(q, randn(2, 2, 13, 4, seed=0), v)
    with pytest.raises(
        ValueError, match=r"key_padding_mask must be .*\[2, 13\], got torch.bool of shape \(2, 12\)"
    ):
        linear_attention(q, k, v, key_padding_mask=torch.ones(2, 12, dtype=torch.bool))
    with pytest.raises(ValueError, match="causal needs as many queries as keys, got T=13, S=5"):
        linear_attention(q, k[:, :, :5], v[:, :, :5], causal=True)
    # A state of another batch size would broadcast silently; it is an error.
    unchecked = getattr(linear_attention, "__wrapped__", linear_attention)  # below SUBQ_TYPECHECK
    wrong = init_linear_attention_state(1, 2, 6, 5, dtype=torch.float64)
    with pytest.raises(
        ValueError, match=r"initial_state must have kv .* = \[2, 2, 6, 5\].*got \[1, 2, 6, 5\]"
    ):
        unchecked(q, k, v, causal=True, initial_state=wrong)
    unchecked_step = getattr(linear_attention_step, "__wrapped__", linear_attention_step)
    with pytest.raises(
        ValueError, match=r"state must have kv .* = \[2, 2, 6, 5\].*got \[1, 2, 6, 5\]"
    ):
        unchecked_step(wrong, q[:, :, :1], k[:, :, :1], v[:, :, :1])
    with pytest.raises(ValueError, match="window"):
        AttentionConfig(dim=8, num_heads=2, causal=True, window=3, attention_type="linear")
    with pytest.raises(ValueError, match="softcap"):
        AttentionConfig(dim=8, num_heads=2, softcap=5.0, attention_type="linear")
    with pytest.raises(ValueError, match="alibi"):
        AttentionConfig(dim=8, num_heads=2, pos_emb="alibi", attention_type="linear")
    cfg = AttentionConfig(dim=8, num_heads=2, causal=True, attention_type="linear")
    with pytest.raises(ValueError, match="segment_ids"):
        multi_head_attention(
            init_attention(cfg),
            torch.randn(1, 4, 8),
            cfg=cfg,
            segment_ids=torch.zeros(1, 4, dtype=torch.long),
        )


@pytest.mark.parametrize("causal", [True, False])
def test_compiled_backend_with_inductor_matches_reference_forward_and_gradients(causal):
    """The ``compiled`` backend built by Inductor (on CPU here; CUDA in the GPU benchmark), with
    grouped heads, a ragged last chunk, a padding mask and, when causal, an initial state."""
    from subq.ops import linear_attention as ops

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 11, 8, generator=g, requires_grad=True)
    k = torch.randn(2, 2, 11, 8, generator=g, requires_grad=True)
    v = torch.randn(2, 2, 11, 5, generator=g, requires_grad=True)
    mask = torch.rand(2, 11, generator=g) > 0.3
    init = (torch.rand(2, 2, 8, 5, generator=g), torch.rand(2, 2, 8, generator=g))
    init = init if causal else (None, None)
    args = (q, k, v, mask, *init, causal, "elu", 4, True, 0.0)
    want = ops.linear_attention_reference(*args)
    got = ops._linear_attention_compiled(*args)
    for w, o in zip(want, got, strict=True):
        assert (w is None) == (o is None)
        if w is not None:
            assert_close_rel(w, o, 1e-5)
    assert_close_rel(
        torch.autograd.grad(want[0].square().sum(), (q, k, v)),
        torch.autograd.grad(got[0].square().sum(), (q, k, v)),
        1e-5,
    )


def test_backend_choice_is_explained_and_forced():
    from subq import ops

    assert "reference" in ops.explain("linear_attention", device="cpu", dtype=torch.float32)
    q = torch.randn(1, 1, 3, 2)
    with pytest.raises(ops.BackendUnavailableError, match=r"compiled.*targets cuda"):
        linear_attention(q, q, q, causal=True, backend="compiled")


@pytest.mark.parametrize(("causal", "t", "chunk"), [(True, 11, 4), (True, 8, 8), (False, 11, 4)])
def test_flop_count_equals_the_matrix_products_torch_counts(causal, t, chunk):
    """``linear_attention_flop_count`` against ``FlopCounterMode`` over the reference backend
    (which counts exactly the matmuls/einsums executed), with grouped heads and E != D."""
    from torch.utils.flop_counter import FlopCounterMode

    from subq import linear_attention_flop_count

    q = torch.randn(2, 4, t, 8)
    k = torch.randn(2, 2, t, 8)
    v = torch.randn(2, 2, t, 5)
    with FlopCounterMode(display=False) as counter:
        linear_attention(q, k, v, causal=causal, chunk_size=chunk, backend="reference")
    per_batch = linear_attention_flop_count(
        4, 8, t, causal=causal, chunk_size=chunk, kv_heads=2, value_dim=5
    )
    assert counter.get_total_flops() == 2 * per_batch


def test_linear_layer_flop_count_uses_the_linear_formula():
    from subq import linear_attention_flop_count

    cfg = AttentionConfig(dim=16, num_heads=4, num_kv_heads=2, causal=True, attention_type="linear")
    proj = 2 * 9 * 16 * (16 + 2 * 8) + 2 * 9 * 16 * 16
    want = proj + linear_attention_flop_count(4, 4, 9, causal=True, chunk_size=64, kv_heads=2)
    from subq.functional.attention import multi_head_attention_flop_count

    assert multi_head_attention_flop_count(cfg, (9,)) == want
