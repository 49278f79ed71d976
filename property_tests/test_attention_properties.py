"""Hypothesis: every attention backend equals a naive oracle (float64) over drawn options."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from subq.functional.attention import AttentionConfig, attention, init_attention
from subq.functional.attention import multi_head_attention as mha
from subq.functional.kv_cache import cached_attention, init_kv_cache
from subq.functional.linear_attention import linear_attention
from subq.testing import assert_close_rel
from subq.testing.strategies import randn, seeds


def _oracle(q, k, v, allowed, bias, scale, softcap):
    """Naive softmax attention over the full [B, H, T, S] matrix; empty rows give zeros."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = torch.einsum("bhtd,bhsd->bhts", q, k) * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    s = (s + bias).masked_fill(~allowed, float("-inf"))
    w = torch.softmax(s, -1)
    w = torch.where(allowed.any(-1, keepdim=True), w, torch.zeros_like(w))
    return w @ v


@st.composite
def problems(draw):
    kvh = draw(st.integers(1, 2))
    heads = kvh * draw(st.integers(1, 3))
    b, t, d = draw(st.integers(1, 2)), draw(st.integers(1, 9)), draw(st.sampled_from([2, 4, 8]))
    s = draw(st.one_of(st.just(t), st.integers(1, 9)))
    seed = draw(seeds)
    return {
        "shape": (b, heads, kvh, t, s, d),
        "seed": seed,
        "causal": draw(st.booleans()),
        "alignment": draw(st.sampled_from(["bottom_right", "top_left"])),
        "window": draw(st.one_of(st.none(), st.integers(1, 6))),
        "padding": draw(st.booleans()),
        "mask": draw(st.booleans()),
        "prefix": draw(st.one_of(st.none(), st.integers(0, 4))),
        "segments": draw(st.booleans()) and s == t,
        "bias": draw(st.booleans()),
        "alibi": draw(st.booleans()),
        "softcap": draw(st.one_of(st.none(), st.floats(0.5, 3.0))),
        "scale": draw(st.one_of(st.none(), st.floats(0.1, 2.0))),
        "backend": draw(st.sampled_from(["standard", "memory_efficient", "flash", "pallas_flash"])),
        "block": draw(st.integers(1, 5)),
    }


@settings(max_examples=40, deadline=None)
@given(problems())
def test_backend_equals_oracle(p):
    b, heads, kvh, t, s, d = p["shape"]
    seed = p["seed"]
    q, k, v = (
        randn(b, heads, t, d, seed=seed),
        randn(b, kvh, s, d, seed=seed + 1),
        randn(b, kvh, s, d, seed=seed + 2),
    )
    g = torch.Generator().manual_seed(seed)
    offset = s - t if p["alignment"] == "bottom_right" else 0
    qp = torch.arange(t)[:, None] + offset
    kp = torch.arange(s)[None, :]
    bias = torch.zeros(b, heads, t, s, dtype=torch.float64)
    opts = dict(causal=p["causal"], alignment=p["alignment"], window=p["window"])
    pos_ok = torch.ones(t, s, dtype=torch.bool)
    if p["causal"]:
        pos_ok &= kp <= qp
    if p["window"] is not None:
        w = p["window"]
        pos_ok &= (qp - kp < w) if p["causal"] else ((qp - kp).abs() < w)
    if p["prefix"] is not None and (p["causal"] or p["window"] is not None):
        # Prefix-LM: keys before the prefix are visible to every query.
        opts["prefix_length"] = p["prefix"]
        pos_ok |= kp < p["prefix"]
    allowed = pos_ok.expand(b, heads, t, s).clone()
    if p["padding"]:
        keep = torch.rand(b, s, generator=g) < 0.7
        opts["key_padding_mask"] = keep
        allowed &= keep[:, None, None, :]
    if p["mask"]:
        # Per head and query: the backends split heads into (kv_heads, groups).
        mask = torch.rand(b, heads, t, s, generator=g) < 0.7
        opts["mask"] = mask
        allowed &= mask
    if p["segments"]:
        seg = torch.randint(0, 2, (b, t), generator=g).cumsum(-1)
        opts["segment_ids"] = seg
        allowed &= (seg[:, :, None] == seg[:, None, :])[:, None]
    if p["bias"]:
        extra = randn(b, 1, t, s, seed=seed + 3)
        opts["bias"] = extra
        bias = bias + extra
    if p["alibi"]:
        slopes = torch.linspace(0.1, 1.0, heads, dtype=torch.float64)
        opts["alibi_slopes"] = slopes
        bias = bias - slopes[:, None, None] * (qp - kp).abs()
    scale = p["scale"] if p["scale"] is not None else 1 / math.sqrt(d)
    expected = _oracle(q, k, v, allowed, bias, scale, p["softcap"])
    call = dict(
        opts, softcap=p["softcap"], scale=p["scale"], backend=p["backend"], block_size=p["block"]
    )
    if p["softcap"] is not None and p["backend"] in ("flash", "pallas_flash"):
        with pytest.raises(ValueError, match="softcap"):
            attention(q, k, v, **call)
        return
    assert_close_rel(expected, attention(q, k, v, **call), 1e-11)


@settings(max_examples=15, deadline=None)
@given(
    seed=seeds,
    t=st.integers(1, 20),
    chunk=st.integers(1, 8),
    causal=st.booleans(),
    padding=st.booleans(),
    fmap=st.sampled_from(["elu", "relu", "softmax"]),
)
def test_linear_attention_equals_quadratic_form(seed, t, chunk, causal, padding, fmap):
    q, k, v = (
        randn(1, 2, t, 3, seed=seed),
        randn(1, 1, t, 3, seed=seed + 1),
        randn(1, 1, t, 2, seed=seed + 2),
    )
    phi = {
        "elu": lambda x: torch.nn.functional.elu(x) + 1,
        "relu": torch.relu,
        "softmax": lambda x: x.softmax(-1),
    }[fmap]
    w = torch.einsum("bhtd,bhsd->bhts", phi(q), phi(k).expand(1, 2, t, 3))
    if causal:
        w = w.tril()
    keep = None
    if padding:
        keep = torch.rand(1, t, generator=torch.Generator().manual_seed(seed)) < 0.6
        w = w * keep[:, None, None, :]
    den = w.sum(-1, keepdim=True)
    num = w @ v.expand(1, 2, t, 2)
    expected = num / torch.where(den != 0, den, torch.ones_like(den))
    got = linear_attention(
        q, k, v, causal=causal, chunk_size=chunk, feature_map=fmap, key_padding_mask=keep
    )
    assert_close_rel(expected, got, 1e-11)


@settings(max_examples=10, deadline=None)
@given(
    seed=seeds,
    kv_heads=st.sampled_from([1, 2, 4]),
    window=st.one_of(st.none(), st.integers(1, 5)),
    pos_emb=st.sampled_from(["none", "rope", "alibi"]),
    qk_norm=st.sampled_from([None, "l2", "rms"]),
    backend=st.sampled_from(["standard", "memory_efficient", "flash", "pallas_flash"]),
    prompt=st.integers(1, 5),
    left_pad=st.integers(0, 3),
)
def test_decode_equals_full(seed, kv_heads, window, pos_emb, qk_norm, backend, prompt, left_pad):
    cfg = AttentionConfig(
        dim=16,
        num_heads=4,
        num_kv_heads=kv_heads,
        causal=True,
        window=window,
        pos_emb=pos_emb,
        qk_norm=qk_norm,
        attention_type=backend,
        attention_block_size=3,
    )
    p = init_attention(cfg, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = randn(2, 8, 16, seed=seed)
    # Batch element 1 is left-padded: padding neither advances positions nor is attended to.
    real = torch.ones(2, 8, dtype=torch.bool)
    real[1, :left_pad] = False
    positions = real.long().cumsum(-1) - real.long()
    full = mha(p, x, cfg=cfg, key_padding_mask=real, positions=positions)
    cache = init_kv_cache(cfg, 2, 8, dtype=torch.float64)
    y, cache = cached_attention(p, x[:, :prompt], cache, cfg=cfg, key_padding_mask=real[:, :prompt])
    outs = [y]
    for i in range(prompt, 8):
        step = slice(i, i + 1)
        y, cache = cached_attention(p, x[:, step], cache, cfg=cfg, key_padding_mask=real[:, step])
        outs.append(y)
    keep = real[..., None]
    assert_close_rel(full * keep, torch.cat(outs, 1) * keep, 1e-11)
