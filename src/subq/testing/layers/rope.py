"""Registry entries for position encodings: RoPE (the cache as the "params") and learned
absolute embeddings."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from subq._pytree import params_to_flat
from subq.functional import positional as P
from subq.functional import rope as R
from subq.nn.positional import LearnedPositionalEmbedding
from subq.testing.registry import LayerCase, register_layer
from subq.testing.strategies import axis_sizes, randn, seeds


@register_layer("rope", {"causal", "vmap", "grad", "compile", "dtype"})
def rope_case(draw) -> LayerCase:
    # RoPE has no trainable parameters; its cache plays the params' role, so vmap runs over
    # stacked caches (an ensemble of position offsets) and grad differentiates cos/sin.
    pairing = draw(st.sampled_from(["split_half", "interleaved", "nvsubquadratic"]))
    half = draw(st.integers(1, 4))
    head_dim = 2 * half
    # length ≥ 2: assert_causal needs a past and a future.
    batch, heads, length = draw(axis_sizes(2)), draw(axis_sizes(3)), draw(st.integers(2, 7))
    base = draw(st.sampled_from([100.0, 10000.0]))
    seed = draw(seeds)

    def make_params(s: int) -> R.RopeCache:
        return R.rope_cache(
            (length,), head_dim, base=base, pairing=pairing, offset=s % 97, dtype=torch.float64
        )

    def fn(cache, x):
        return R.apply_rope(x, cache, pairing=pairing)

    x = randn(batch, heads, length, head_dim, seed=seed)
    return LayerCase(fn=fn, params=make_params(seed), x=x, make_params=make_params, time_axis=2)


@register_layer("learned_positional", {"causal", "vmap", "grad", "shell", "compile", "dtype"})
def learned_positional_case(draw) -> LayerCase:
    dim, length = draw(axis_sizes(6)), draw(st.integers(3, 6))
    max_len = length + draw(st.integers(0, 3))
    seed = draw(seeds)
    cfg = P.LearnedPositionalConfig(max_len=max_len, dim=dim, init_std=1.0)

    def make_params(s: int) -> P.LearnedPositionalParams:
        gen = torch.Generator().manual_seed(s)
        return P.init_learned_positional(cfg, generator=gen, dtype=torch.float64)

    params = make_params(seed)
    shell = LearnedPositionalEmbedding(cfg, dtype=torch.float64)
    shell.load_state_dict(params_to_flat(params))

    def fn(p, x):
        # Offset 0, as the shell's default (offsets are covered by tests/test_positional.py).
        return x + P.learned_positional(p, x.shape[-2])

    x = randn(draw(axis_sizes(3)), length, dim, seed=seed + 1)
    return LayerCase(fn=fn, params=params, x=x, shell=shell, make_params=make_params, time_axis=1)
