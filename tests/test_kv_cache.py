"""KV cache: decoding token by token (and chunk by chunk) equals the full causal forward."""

from __future__ import annotations

import pytest
import torch

from subq.functional.attention import AttentionConfig, init_attention, multi_head_attention
from subq.functional.kv_cache import cached_attention, init_kv_cache
from subq.testing import assert_close_rel
from subq.testing.strategies import randn

CONFIGS = [
    dict(pos_emb="rope"),
    dict(pos_emb="rope", num_kv_heads=2, qk_norm="rms"),
    dict(pos_emb="alibi", window=3),
    dict(pos_emb="rope", num_kv_heads=1, window=4, qk_norm="l2"),
    dict(pos_emb="none", attention_type="memory_efficient", attention_block_size=3),
    dict(pos_emb="rope", attention_type="flash", window=5),
    dict(pos_emb="alibi", num_kv_heads=2, attention_type="pallas_flash", window=4),
    dict(
        pos_emb="alibi",
        num_kv_heads=1,
        qk_norm="l2",
        attention_type="memory_efficient",
        attention_block_size=2,
    ),
]


def _full_reference(p, cfg, x, real):
    positions = real.long().cumsum(-1) - real.long()
    return multi_head_attention(p, x, cfg=cfg, key_padding_mask=real, positions=positions)


@pytest.mark.parametrize("opts", CONFIGS, ids=lambda o: "-".join(f"{v}" for v in o.values()))
def test_decode_equals_full(opts):
    cfg = AttentionConfig(dim=16, num_heads=4, causal=True, **opts)
    p = init_attention(cfg, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    b, t = 2, 10
    x = randn(b, t, 16, seed=1)
    real = torch.ones(b, t, dtype=torch.bool)
    real[1, :3] = False  # a left-padded prompt in batch element 1
    full = _full_reference(p, cfg, x, real)
    prompt = 4
    cache = init_kv_cache(cfg, b, 16, dtype=torch.float64)
    y, cache = cached_attention(p, x[:, :prompt], cache, cfg=cfg, key_padding_mask=real[:, :prompt])
    outs = [y]
    for i in range(prompt, t):
        y, cache = cached_attention(
            p, x[:, i : i + 1], cache, cfg=cfg, key_padding_mask=real[:, i : i + 1]
        )
        outs.append(y)
    got = torch.cat(outs, dim=1)
    keep = real[..., None]
    assert_close_rel(full * keep, got * keep, 1e-11)
    assert torch.equal(cache.next_position, real.long().sum(-1))


def test_chunked_prefill_equals_full():
    cfg = AttentionConfig(dim=16, num_heads=4, num_kv_heads=2, causal=True, pos_emb="rope")
    p = init_attention(cfg, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = randn(2, 9, 16, seed=2)
    full = multi_head_attention(p, x, cfg=cfg)
    cache = init_kv_cache(cfg, 2, 9, dtype=torch.float64)
    outs = []
    for lo, hi in ((0, 4), (4, 7), (7, 9)):
        y, cache = cached_attention(p, x[:, lo:hi], cache, cfg=cfg)
        outs.append(y)
    assert_close_rel(full, torch.cat(outs, 1), 1e-11)


def _decode_in_chunks(p, cfg, x, cache_len, chunk):
    cache = init_kv_cache(cfg, x.shape[0], cache_len, dtype=torch.float64)
    outs = []
    for i in range(0, x.shape[1], chunk):
        y, cache = cached_attention(p, x[:, i : i + chunk], cache, cfg=cfg)
        outs.append(y)
    return torch.cat(outs, 1)


def test_ring_buffer_with_sliding_window():
    # A cache as long as the window holds every key a query can see: still exact.
    cfg = AttentionConfig(dim=8, num_heads=2, causal=True, window=3, pos_emb="rope")
    p = init_attention(cfg, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = randn(1, 12, 8, seed=3)
    full = multi_head_attention(p, x, cfg=cfg)
    assert_close_rel(full, _decode_in_chunks(p, cfg, x, cache_len=3, chunk=1), 1e-11)
    # Chunks of n tokens need w + n - 1 slots: n = 2 in a cache of 4 is exact, ...
    assert_close_rel(full, _decode_in_chunks(p, cfg, x, cache_len=4, chunk=2), 1e-11)
    # ... and a cache of 3 is not (the documented limit is real, so the test above can fail).
    with pytest.raises(AssertionError):
        assert_close_rel(full, _decode_in_chunks(p, cfg, x, cache_len=3, chunk=2), 1e-6)


def test_cache_is_not_mutated():
    cfg = AttentionConfig(dim=8, num_heads=2, causal=True)
    p = init_attention(cfg, dtype=torch.float64)
    cache = init_kv_cache(cfg, 1, 4, dtype=torch.float64)
    before = [t.clone() for t in torch.utils._pytree.tree_leaves(cache)]
    cached_attention(p, randn(1, 2, 8, seed=0), cache, cfg=cfg)
    assert all(torch.equal(a, b) for a, b in zip(before, torch.utils._pytree.tree_leaves(cache)))


def test_compiled_step_compiles_once():
    cfg = AttentionConfig(dim=8, num_heads=2, causal=True, pos_emb="rope", window=4)
    p = init_attention(cfg, generator=torch.Generator().manual_seed(0))
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def step(p, x, cache):
        return cached_attention(p, x, cache, cfg=cfg)

    torch._dynamo.reset()
    compiled = torch.compile(step, backend=counting_backend, fullgraph=True, dynamic=False)
    x = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(1))
    cache = init_kv_cache(cfg, 2, 8)
    eager_cache = cache
    for i in range(6):
        y, cache = compiled(p, x[:, i : i + 1], cache)
        y_eager, eager_cache = step(p, x[:, i : i + 1], eager_cache)
        assert_close_rel(y_eager, y, 1e-5)
    assert len(graphs) == 1, f"{len(graphs)} graphs compiled for 6 steps"


def test_bad_cache_errors():
    cfg = AttentionConfig(dim=8, num_heads=2, causal=True)
    p = init_attention(cfg)
    with pytest.raises(ValueError, match=r"max_len=4\) is too short .* expected max_len ≥ 5"):
        cached_attention(p, torch.randn(1, 5, 8), init_kv_cache(cfg, 1, 4), cfg=cfg)
    other = AttentionConfig(dim=8, num_heads=2, num_kv_heads=1, causal=True)
    with pytest.raises(ValueError, match=r"kv_heads, head_dim\] = \[1, 2, 4\], got \[1, 1, 4\]"):
        cached_attention(p, torch.randn(1, 1, 8), init_kv_cache(other, 1, 4), cfg=cfg)
    with pytest.raises(ValueError, match="max_len must be a positive int, got 0"):
        init_kv_cache(cfg, 1, 0)
    with pytest.raises(ValueError, match="batch must be a positive int, got 0"):
        init_kv_cache(cfg, 0, 4)
    unchecked = getattr(cached_attention, "__wrapped__", cached_attention)  # below SUBQ_TYPECHECK
    with pytest.raises(ValueError, match="x must have 8 channels, got 6"):
        unchecked(p, torch.randn(1, 1, 6), init_kv_cache(cfg, 1, 4), cfg=cfg)
    with pytest.raises(ValueError, match="expected a causal config"):
        nc = AttentionConfig(dim=8, num_heads=2)
        cached_attention(init_attention(nc), torch.randn(1, 1, 8), init_kv_cache(nc, 1, 4), cfg=nc)
