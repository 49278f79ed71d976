"""Registry entries for the norms."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from subq._pytree import params_to_flat
from subq.functional import norm as F
from subq.nn.norm import LayerNorm, RMSNorm
from subq.testing.registry import LayerCase, register_layer
from subq.testing.strategies import axis_sizes, randn, seeds

_PROPS = {"vmap", "grad", "shell", "compile", "dtype"}


def _perturbed(params, seed: int):
    # Non-trivial weights so the tests see more than the identity init.
    return torch.utils._pytree.tree_map(lambda t: t + 0.1 * randn(*t.shape, seed=seed), params)


def _case(draw, family: str) -> LayerCase:
    dim = draw(axis_sizes(9))
    heads = draw(st.one_of(st.none(), st.integers(1, 3)))
    channels_first = heads is None and draw(st.booleans())
    affine = draw(st.booleans())
    seed = draw(seeds)
    if family == "rms":
        cfg = F.RMSNormConfig(
            dim=dim, num_heads=heads, channels_first=channels_first, affine=affine
        )
        init, apply, shell_cls = F.init_rms_norm, F.rms_norm, RMSNorm
    else:
        cfg = F.LayerNormConfig(
            dim=dim, num_heads=heads, channels_first=channels_first, affine=affine
        )
        init, apply, shell_cls = F.init_layer_norm, F.layer_norm, LayerNorm

    def make_params(s: int):
        return _perturbed(init(cfg, dtype=torch.float64), s)

    params = make_params(seed)
    batch, length = draw(axis_sizes(3)), draw(axis_sizes(5))
    if channels_first:
        x = randn(batch, dim, length, seed=seed + 1)
    elif heads is not None:
        x = randn(batch, length, heads, dim, seed=seed + 1)
    else:
        x = randn(batch, length, dim, seed=seed + 1)
    shell = shell_cls(cfg, dtype=torch.float64)
    shell.load_state_dict(params_to_flat(params))

    def fn(p, inp):
        return apply(p, inp, eps=cfg.eps, channels_first=cfg.channels_first)

    return LayerCase(fn=fn, params=params, x=x, shell=shell, make_params=make_params, time_axis=-1)


@register_layer("rms_norm", _PROPS)
def rms_norm_case(draw) -> LayerCase:
    return _case(draw, "rms")


@register_layer("layer_norm", _PROPS)
def layer_norm_case(draw) -> LayerCase:
    return _case(draw, "layer")
