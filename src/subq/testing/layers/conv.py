"""Registry entries for the convolutions: short conv, CKConvND (causal and N-D)."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from subq._pytree import params_to_flat
from subq.functional import ckconv as CK
from subq.functional import conv as SC
from subq.nn.ckconv import CKConvND
from subq.nn.conv import ShortConv
from subq.testing.registry import LayerCase, register_layer
from subq.testing.strategies import axis_sizes, randn, seeds


def _perturbed(params, seed: int):
    return torch.utils._pytree.tree_map(lambda t: t + 0.1 * randn(*t.shape, seed=seed), params)


@register_layer("short_conv_causal", {"causal", "vmap", "grad", "shell", "compile", "dtype"})
def short_conv_case(draw) -> LayerCase:
    channels, k = draw(axis_sizes(6)), draw(st.integers(1, 4))
    cfg = SC.ShortConvConfig(channels=channels, kernel_size=k, bias=draw(st.booleans()))
    seed = draw(seeds)

    def make_params(s: int):
        return _perturbed(
            SC.init_short_conv(
                cfg, generator=torch.Generator().manual_seed(s), dtype=torch.float64
            ),
            s,
        )

    params = make_params(seed)
    x = randn(draw(axis_sizes(3)), draw(st.integers(3, 12)), channels, seed=seed + 1)
    shell = ShortConv(cfg, dtype=torch.float64)
    shell.load_state_dict(params_to_flat(params))
    return LayerCase(
        fn=lambda p, t: SC.short_conv(p, t),
        params=params,
        x=x,
        shell=shell,
        make_params=make_params,
    )


def _ckconv_case(draw, ndim: int) -> LayerCase:
    channels = draw(axis_sizes(4))
    if ndim == 1:
        mode = "causal"
        spatial = (draw(st.integers(3, 12)),)
    else:
        mode = tuple(draw(st.sampled_from(["zero", "circular"])) for _ in range(ndim))
        spatial = tuple(draw(axis_sizes(6)) for _ in range(ndim))
    cfg = CK.CKConvConfig(hidden_dim=channels, ndim=ndim, mode=mode, max_size=spatial)
    seed = draw(seeds)

    def make_params(s: int):
        g = torch.Generator().manual_seed(s)
        return CK.init_ckconv(cfg, generator=g, dtype=torch.float64)

    params = make_params(seed)
    x = randn(draw(axis_sizes(2)), *spatial, channels, seed=seed + 1)
    shell = CKConvND(cfg=cfg, dtype=torch.float64)
    shell.load_state_dict(params_to_flat(params))
    return LayerCase(
        fn=lambda p, t: CK.ckconv(p, t, cfg=cfg),
        params=params,
        x=x,
        shell=shell,
        make_params=make_params,
    )


# No "dtype" property for CKConv: its default SIREN kernel multiplies first-layer pre-activations
# by ω₀ = 10, so rounding the kernel network's params to bfloat16 moves the kernel by ~10%
# (documented in docs/hyena.md). bfloat16 activations under autocast, with float32 params, are
# tested in tests/test_ckconv.py.
@register_layer("ckconv_causal", {"causal", "vmap", "grad", "shell", "compile"})
def ckconv_causal_case(draw) -> LayerCase:
    return _ckconv_case(draw, 1)


@register_layer("ckconv_nd", {"vmap", "grad", "shell"})
def ckconv_nd_case(draw) -> LayerCase:
    return _ckconv_case(draw, draw(st.sampled_from([2, 3])))
