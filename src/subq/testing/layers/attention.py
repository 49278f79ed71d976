"""Registry entries for softmax attention: the multi-head layer and the inner mixer."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from subq._pytree import params_to_flat
from subq.functional import attention as F
from subq.nn.attention import Attention, AttentionMixer
from subq.testing.registry import LayerCase, register_layer
from subq.testing.strategies import axis_sizes, randn, seeds

_BACKENDS = ("standard", "memory_efficient", "flash", "pallas_flash")


def _perturbed(params, seed: int):
    # Move QK-norm weights and scales off their constant init so the tests see them act.
    return torch.utils._pytree.tree_map(lambda t: t + 0.1 * randn(*t.shape, seed=seed), params)


@register_layer("multi_head_attention", {"causal", "vmap", "grad", "shell", "compile", "dtype"})
def multi_head_attention_case(draw) -> LayerCase:
    kv_heads = draw(st.integers(1, 2))
    heads = kv_heads * draw(st.integers(1, 3))
    head_dim = draw(st.sampled_from([2, 4]))
    cfg = F.AttentionConfig(
        dim=heads * head_dim,
        num_heads=heads,
        num_kv_heads=kv_heads,
        causal=True,
        window=draw(st.one_of(st.none(), st.integers(1, 6))),
        fused_qkv=draw(st.booleans()),
        qkv_bias=draw(st.booleans()),
        # Normalising a 2-channel head is ill-conditioned: a q or k near zero changes direction
        # under bf16 rounding of the input alone (error 3.4e-2 in float64 from rounded inputs).
        qk_norm=draw(st.sampled_from([None, "l2", "rms"] if head_dim >= 4 else [None])),
        pos_emb=draw(st.sampled_from(["none", "rope", "alibi"])),
        attention_type=draw(st.sampled_from(_BACKENDS)),
        attention_block_size=draw(st.integers(2, 5)),
    )
    seed = draw(seeds)

    def make_params(s: int):
        g = torch.Generator().manual_seed(s)
        return _perturbed(F.init_attention(cfg, generator=g, dtype=torch.float64), s)

    params = make_params(seed)
    x = randn(draw(axis_sizes(3)), draw(st.integers(2, 9)), cfg.dim, seed=seed + 1)
    shell = Attention(cfg, dtype=torch.float64)
    shell.load_state_dict(params_to_flat(params))

    def fn(p, inp):
        return F.multi_head_attention(p, inp, cfg=cfg)

    return LayerCase(fn=fn, params=params, x=x, shell=shell, make_params=make_params, time_axis=1)


def _mixer_inputs(x):
    # Distinct q, k, v from one input, so the mixer is not tested on q = k only.
    return x, x.flip(-1), x * 0.5


class _SelfMixer(AttentionMixer):
    """The registry's single-input form of the inner mixer: ``x -> mixer(*_mixer_inputs(x))``."""

    def forward(self, x):  # type: ignore[override]
        return super().forward(*_mixer_inputs(x))


@register_layer("attention_mixer", {"causal", "vmap", "grad", "shell", "compile", "dtype"})
def attention_mixer_case(draw) -> LayerCase:
    heads = draw(st.integers(1, 3))
    cfg = F.AttentionMixerConfig(
        hidden_dim=heads * 4,
        num_heads=heads,
        causal=True,
        qk_norm=draw(st.sampled_from(["l2", "rms"])),
        pos_emb=draw(st.sampled_from(["none", "rope"])),
        attention_type=draw(st.sampled_from(_BACKENDS)),
        attention_block_size=draw(st.integers(2, 5)),
    )
    seed = draw(seeds)

    def make_params(s: int):
        return _perturbed(F.init_attention_mixer(cfg, dtype=torch.float64), s)

    params = make_params(seed)
    x = randn(draw(axis_sizes(3)), draw(st.integers(2, 9)), cfg.hidden_dim, seed=seed + 1)
    shell = _SelfMixer(cfg=cfg, dtype=torch.float64)
    shell.load_state_dict(params_to_flat(params))

    def fn(p, inp):
        return F.attention_mixer(p, *_mixer_inputs(inp), cfg=cfg)

    return LayerCase(fn=fn, params=params, x=x, shell=shell, make_params=make_params, time_axis=1)
