"""Attention under torch.func.vmap keeps SDPA's batched (fused) call and equals a loop."""

from __future__ import annotations

import torch

from subq.functional.attention import attention
from subq.testing import assert_close_rel, assert_vmap_matches_loop
from subq.testing.strategies import randn


def _qkv(n=3, b=2, t=6, seed=0):
    return (
        randn(n, b, 4, t, 8, seed=seed),
        randn(n, b, 2, t, 8, seed=seed + 1),
        randn(n, b, 2, t, 8, seed=seed + 2),
    )


def test_sdpa_sees_plain_folded_tensors_under_vmap(monkeypatch):
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append((torch._C._functorch.is_functorch_wrapped_tensor(q), tuple(q.shape)))
        return real(q, k, v, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    q, k, v = _qkv()
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[1, 4:] = False
    for opts in ({"causal": True}, {"causal": True, "key_padding_mask": keep}):
        seen.clear()
        torch.func.vmap(lambda q, k, v, o=opts: attention(q, k, v, backend="flash", **o))(q, k, v)
        # One call on the folded batch 3 x 2 = 6, with unwrapped tensors: no per-example loop
        # and no functorch fallback inside SDPA.
        assert seen == [(False, (6, 4, 6, 8))], seen


def test_vmap_with_masks_and_bias_equals_loop():
    q, k, v = _qkv()
    keep = torch.ones(3, 2, 6, dtype=torch.bool)
    keep[0, 1, 3:] = False
    keep[2, 0, :2] = False
    bias = randn(3, 1, 4, 6, 6, seed=9)

    def f(q, k, v, keep, bias):
        return attention(q, k, v, causal=True, key_padding_mask=keep, bias=bias, backend="flash")

    assert_vmap_matches_loop(f, (q, k, v, keep, bias), (0, 0, 0, 0, 0), rtol=1e-12)
    # An unbatched mask shared by the ensemble.
    assert_vmap_matches_loop(f, (q, k, v, keep[0], bias[0]), (0, 0, 0, None, None), rtol=1e-12)


def test_per_example_gradients_equal_loop():
    q, k, v = _qkv(n=1)
    q, k, v = q[0], k[0], v[0]
    bias = randn(2, 4, 6, 6, seed=4)
    cot = randn(2, 4, 6, 8, seed=5)

    def loss(q, k, v, bias, cot):
        out = attention(q[None], k[None], v[None], causal=True, bias=bias[None], backend="flash")
        return (out[0] * cot).sum()

    per_example = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1, 2, 3)))(q, k, v, bias, cot)

    def standard_loss(q, k, v, bias, cot):
        out = attention(q[None], k[None], v[None], causal=True, bias=bias[None])
        return (out[0] * cot).sum()

    for i in range(2):
        expected = torch.func.grad(standard_loss, argnums=(0, 1, 2, 3))(
            q[i], k[i], v[i], bias[i], cot[i]
        )
        got = tuple(g[i] for g in per_example)
        assert_close_rel(expected, got, 1e-11, what=f"example {i}")
