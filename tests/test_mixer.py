"""QKVSequenceMixer with Hyena, CKConvND and attention inner mixers."""

from __future__ import annotations

import functools

import pytest
import torch

from subq import init
from subq.functional.hyena import HyenaConfig, hyena, init_hyena
from subq.functional.mixer import init_qkv_projections, qkv_sequence_mixer
from subq.lazy_config import LazyConfig, from_json, to_json
from subq.nn.hyena import Hyena
from subq.nn.mixer import QKVSequenceMixer
from subq.testing import (
    assert_causal,
    assert_close_rel,
    assert_compiles,
    assert_init_stats,
    assert_shell_matches_functional,
    compute_relative_error,
)

DT = torch.float64


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_hyena_mixer_structure_parity_and_causality():
    block = QKVSequenceMixer(
        8, LazyConfig(Hyena)(max_size=16), qkv_bias=True, generator=_g(0), dtype=DT
    )
    assert set(block.state_dict()) >= {"qkv_proj.weight", "qkv_proj.bias", "out_proj.weight"}
    assert "out_proj.bias" not in block.state_dict()
    assert any(k.startswith("mixer.filter.") for k in block.state_dict())
    x = torch.randn(2, 11, 8, generator=_g(1), dtype=DT)
    assert_shell_matches_functional(
        block, lambda p, t: qkv_sequence_mixer(p, t, mixer=block.mixer_fn()), x
    )
    assert_causal(block, x, atol=1e-12)


def test_functional_equals_manual_composition():
    cfg = HyenaConfig(hidden_dim=6, max_size=10)
    inner = init_hyena(cfg, generator=_g(0), dtype=DT)
    p = init_qkv_projections(6, inner, qkv_bias=True, out_proj_bias=True, generator=_g(1), dtype=DT)
    x = torch.randn(2, 10, 6, generator=_g(2), dtype=DT)
    got = qkv_sequence_mixer(p, x, mixer=functools.partial(hyena, cfg=cfg))
    q, k, v = (x @ p.qkv_proj.weight.T + p.qkv_proj.bias).chunk(3, -1)
    want = hyena(inner, q, k, v, cfg=cfg) @ p.out_proj.weight.T + p.out_proj.bias
    assert_close_rel(want, got, 1e-14)
    # torch.func.grad through the whole pytree (projections and inner params).
    grads = torch.func.grad(
        lambda pp: qkv_sequence_mixer(pp, x, mixer=functools.partial(hyena, cfg=cfg)).sum()
    )(p)
    assert grads.mixer.skip.shape == (6,)


def test_mixer_cfg_forms_and_init_methods():
    spec = from_json(to_json(LazyConfig(Hyena)(max_size=8, norm="rms")))
    for mixer_cfg in (spec, functools.partial(Hyena, max_size=8), Hyena(hidden_dim=4, max_size=8)):
        block = QKVSequenceMixer(4, mixer_cfg)
        assert block(torch.randn(1, 8, 4)).shape == (1, 8, 4)

    def build():
        return QKVSequenceMixer(
            64,
            LazyConfig(Hyena)(max_size=8),
            qkv_bias=True,
            init_method_in=init.small_init,
            init_method_out=init.partial_wang_init_fn_with_num_layers(4),
            generator=_g(0),
        )

    block = build()
    assert torch.all(block.qkv_proj.bias == 0)
    assert_init_stats(block.qkv_proj.weight, std=(2 / (5 * 64)) ** 0.5)
    assert_init_stats(block.out_proj.weight, std=2 / (4 * 64**0.5))
    # The generator reaches subq.init's initialisers: the same seed, the same weights.
    again = build()
    assert torch.equal(again.qkv_proj.weight, block.qkv_proj.weight)
    assert torch.equal(again.out_proj.weight, block.out_proj.weight)
    # A reference-style initialiser fn(tensor) without a generator keyword still works.
    ones = QKVSequenceMixer(
        4,
        LazyConfig(Hyena)(max_size=8),
        init_method_out=lambda d: torch.nn.init.ones_,
        generator=_g(0),
    )
    assert torch.all(ones.out_proj.weight == 1)
    with pytest.raises(TypeError, match="mixer_cfg must be"):
        QKVSequenceMixer(4, 3)
    with pytest.raises(ValueError, match="hidden_dim=4"):
        QKVSequenceMixer(4, LazyConfig(Hyena)(max_size=8))(torch.randn(1, 8, 5))


def test_flop_count_adds_projections():
    block = QKVSequenceMixer(32, LazyConfig(Hyena)(ndim=2, max_size=8, mode="zero"))
    inner = block.mixer.flop_count((8, 8))
    assert block.flop_count((8, 8)) == 8 * 64 * 32 * 32 + inner


def test_attention_inner_mixer():
    from subq.nn.attention import AttentionMixer

    block = QKVSequenceMixer(8, LazyConfig(AttentionMixer)(num_heads=2, causal=True), dtype=DT)
    x = torch.randn(2, 7, 8, generator=_g(0), dtype=DT)
    assert_causal(block, x, atol=1e-12)
    inner = block.mixer.flop_count((7,))
    assert inner > 0 and block.flop_count((7,)) == 8 * 7 * 64 + inner


def test_bfloat16_autocast_and_cast_module():
    block = QKVSequenceMixer(8, LazyConfig(Hyena)(max_size=16))
    x = torch.randn(2, 16, 8, generator=_g(0))
    y = block(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_auto = block(x)
    assert y_auto.dtype == torch.bfloat16
    # As for Hyena alone (tests/test_hyena.py): measured ≤ 6.3e-3 over 15 seeds.
    assert compute_relative_error(y, y_auto) < 1e-2
    y_half = block.to(torch.bfloat16)(x.bfloat16())
    assert y_half.dtype == torch.bfloat16
    assert compute_relative_error(y, y_half) < 1e-2


def test_compiles_without_graph_breaks_pure_and_shell():
    cfg = HyenaConfig(hidden_dim=4, max_size=8)
    p = init_qkv_projections(4, init_hyena(cfg, generator=_g(0)), qkv_bias=True, generator=_g(1))
    x = torch.randn(2, 8, 4, generator=_g(2))
    mixer = functools.partial(hyena, cfg=cfg)
    assert_compiles(lambda pp, t: qkv_sequence_mixer(pp, t, mixer=mixer), p, x)
    assert_compiles(QKVSequenceMixer(4, LazyConfig(Hyena)(max_size=8), generator=_g(3)), x)
