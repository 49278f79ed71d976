"""Registry entries for Hyena (causal 1D, N-D) and QKVSequenceMixer around Hyena."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from subq._pytree import params_to_flat
from subq.functional import hyena as H
from subq.functional.mixer import init_qkv_projections, qkv_sequence_mixer
from subq.nn.hyena import Hyena
from subq.nn.mixer import QKVSequenceMixer
from subq.testing.registry import LayerCase, register_layer
from subq.testing.strategies import axis_sizes, randn, seeds


def _cfg(draw, ndim: int) -> tuple[H.HyenaConfig, tuple[int, ...]]:
    # ≥ 4 channels: a LayerNorm/RMSNorm over 1–2 channels is a sign function, so bfloat16
    # rounding could flip whole outputs (ill-conditioned, not an error of the layer).
    channels = draw(st.integers(4, 6))
    if ndim == 1:
        spatial, mode = (draw(st.integers(3, 12)),), "causal"
    else:
        spatial = tuple(draw(axis_sizes(5)) for _ in range(ndim))
        mode = tuple(draw(st.sampled_from(["zero", "circular"])) for _ in range(ndim))
    cfg = H.HyenaConfig(
        hidden_dim=channels,
        ndim=ndim,
        mode=mode,
        max_size=spatial,
        short_kernel_size=draw(st.integers(1, 3)),
        qk_norm=draw(st.sampled_from(["none", "rms"])),
        norm=draw(st.sampled_from(["none", "layer"])),
        value_gate=draw(st.sampled_from(["sigmoid", "silu"])),
    )
    return cfg, spatial


def _hyena_case(draw, ndim: int) -> LayerCase:
    cfg, spatial = _cfg(draw, ndim)
    seed = draw(seeds)

    def make_params(s: int):
        return H.init_hyena(cfg, generator=torch.Generator().manual_seed(s), dtype=torch.float64)

    params = make_params(seed)
    x = randn(draw(axis_sizes(2)), *spatial, cfg.hidden_dim, seed=seed + 1)

    def fn(p, t):
        # q, k, v from one input by fixed maps, so the case has one input tensor.
        return H.hyena(p, t, torch.tanh(t), 0.5 * t, cfg=cfg)

    # Shell parity of Hyena (which takes q, k, v) is tested in tests/test_hyena.py; the
    # registry's shell check calls shell(x), which the QKVSequenceMixer entry below covers.
    return LayerCase(fn=fn, params=params, x=x, make_params=make_params)


# vmap of Hyena's params is covered by the mixer entry (its params nest Hyena's) and compile by
# tests/test_hyena.py; both are left out here to keep CI time down.
@register_layer("hyena_causal", {"causal", "grad", "dtype"})
def hyena_causal_case(draw) -> LayerCase:
    return _hyena_case(draw, 1)


@register_layer("hyena_nd", {"vmap", "grad", "dtype"})
def hyena_nd_case(draw) -> LayerCase:
    return _hyena_case(draw, draw(st.sampled_from([2, 3])))


@register_layer("qkv_mixer_hyena", {"causal", "vmap", "grad", "shell", "dtype"})
def qkv_mixer_case(draw) -> LayerCase:
    cfg, spatial = _cfg(draw, 1)
    seed = draw(seeds)
    qkv_bias = draw(st.booleans())
    block = QKVSequenceMixer(
        cfg.hidden_dim,
        lambda hidden_dim, **kw: Hyena(cfg=cfg, **kw),
        qkv_bias=qkv_bias,
        dtype=torch.float64,
    )
    inner_fn = block.mixer_fn()

    def make_params(s: int):
        g = torch.Generator().manual_seed(s)
        inner = H.init_hyena(cfg, generator=g, dtype=torch.float64)
        return init_qkv_projections(
            cfg.hidden_dim,
            inner,
            qkv_bias=qkv_bias,
            generator=g,
            dtype=torch.float64,
        )

    params = make_params(seed)
    block.load_state_dict(params_to_flat(params))
    x = randn(draw(axis_sizes(2)), *spatial, cfg.hidden_dim, seed=seed + 1)
    return LayerCase(
        fn=lambda p, t: qkv_sequence_mixer(p, t, mixer=inner_fn),
        params=params,
        x=x,
        shell=block,
        make_params=make_params,
    )
