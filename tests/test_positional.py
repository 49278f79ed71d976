"""Sinusoidal, learned and ALiBi position encodings, and the position-encoding shells."""

from __future__ import annotations

import math

import pytest
import torch

from subq._pytree import params_to_flat
from subq.functional import positional as P
from subq.functional import rope as R
from subq.init import TRUNC_STD_RATIO
from subq.nn.positional import ALiBi, LearnedPositionalEmbedding, SinusoidalPositionalEmbedding
from subq.nn.rope import RotaryEmbedding
from subq.testing import assert_compiles, assert_init_stats, assert_shell_matches_functional
from subq.testing.strategies import randn

F64 = torch.float64


# ------------------------------------------------------------------------------------------
# Sinusoidal
# ------------------------------------------------------------------------------------------


def test_sinusoidal_matches_the_paper_formula():
    pe = P.sinusoidal_positions(5, 6, offset=3, dtype=F64)
    for p in range(5):
        for i in range(3):
            w = 10000.0 ** (-2 * i / 6)
            assert pe[p, 2 * i].item() == pytest.approx(math.sin((p + 3) * w), abs=1e-15)
            assert pe[p, 2 * i + 1].item() == pytest.approx(math.cos((p + 3) * w), abs=1e-15)


def test_sinusoidal_offset_equals_slice_and_tensor_positions():
    full = P.sinusoidal_positions(10, 8, dtype=F64)
    torch.testing.assert_close(P.sinusoidal_positions(3, 8, offset=7, dtype=F64), full[7:])
    pos = torch.tensor([[2, 9], [0, 4]])
    torch.testing.assert_close(P.sinusoidal_embedding(pos, 8, dtype=F64), full[pos])


def test_sinusoidal_shell_adds_in_float32_and_keeps_dtype():
    x = randn(2, 4, 8, seed=0).to(torch.bfloat16)
    y = SinusoidalPositionalEmbedding(8)(x, offset=2)
    assert y.dtype == torch.bfloat16
    expected = (x.float() + P.sinusoidal_positions(4, 8, offset=2)).to(torch.bfloat16)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    # float64 stays float64 (no detour through float32).
    x64 = randn(2, 4, 8, seed=1)
    y64 = SinusoidalPositionalEmbedding(8)(x64, offset=2)
    assert y64.dtype == F64
    torch.testing.assert_close(y64, x64 + P.sinusoidal_positions(4, 8, offset=2, dtype=F64))
    assert (y64 - x64 - P.sinusoidal_positions(4, 8, offset=2, dtype=F64)).abs().max() < 1e-14


# ------------------------------------------------------------------------------------------
# Learned
# ------------------------------------------------------------------------------------------


def test_learned_positional_slices_and_errors_past_the_table():
    cfg = P.LearnedPositionalConfig(max_len=6, dim=4)
    params = P.init_learned_positional(cfg, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(P.learned_positional(params, 2, offset=4), params.weight[4:6])
    with pytest.raises(ValueError, match=r"positions 5\.\.6 run past the table of max_len=6"):
        P.learned_positional(params, 2, offset=5)
    with pytest.raises(ValueError, match=r"max_len=6"):
        P.learned_positional(params, 7)
    pos = torch.tensor([[0, 5], [3, 3]])
    torch.testing.assert_close(P.learned_positional_at(params, pos), params.weight[pos])
    P.check_positions_in_table(pos, 6)
    with pytest.raises(ValueError, match=r"\[0, 6\).*got position 6"):
        P.check_positions_in_table(torch.tensor([1, 6]), 6)


def test_learned_init_is_deterministic_truncated_normal():
    cfg = P.LearnedPositionalConfig(max_len=256, dim=64, init_std=0.02)
    a = P.init_learned_positional(cfg, generator=torch.Generator().manual_seed(1)).weight
    b = P.init_learned_positional(cfg, generator=torch.Generator().manual_seed(1)).weight
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # A normal truncated at ±2σ has std TRUNC_STD_RATIO·σ ≈ 0.88σ.
    assert_init_stats(a, std=0.02 * TRUNC_STD_RATIO, bound=0.04)


def test_learned_shell_matches_functional_and_compiles():
    shell = LearnedPositionalEmbedding(max_len=8, dim=4, dtype=F64)
    x = randn(2, 5, 4, seed=2)

    def fn(params, x):
        return x + P.learned_positional(params, x.shape[-2])

    assert_shell_matches_functional(shell, fn, x, rtol=1e-15)
    assert set(params_to_flat(shell.params())) == {"weight"}
    assert_compiles(lambda x: fn(shell.params(), x), x)
    with pytest.raises(ValueError, match="max_len"):
        LearnedPositionalEmbedding(max_len=0, dim=4)


def test_learned_shell_adds_a_float32_table_to_bfloat16_input_with_one_rounding():
    shell = LearnedPositionalEmbedding(max_len=8, dim=16, init_std=1.0)
    x = randn(2, 5, 16, seed=3).to(torch.bfloat16)
    y = shell(x, offset=2)
    assert y.dtype == torch.bfloat16
    expected = (x.float() + shell.weight.detach()[2:7]).to(torch.bfloat16)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"positions 4\.\.8 run past the table of max_len=8"):
        shell(x, offset=4)


# ------------------------------------------------------------------------------------------
# ALiBi
# ------------------------------------------------------------------------------------------


def _paper_slopes(n: int) -> list[float]:
    """The ALiBi paper's reference code (Press et al. 2022), as published."""

    def power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + _paper_slopes(2 * closest)[0::2][: n - closest]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 7, 8, 12, 16, 24, 40, 64])
def test_alibi_slopes_equal_the_papers_code(n):
    # The paper forms start·ratio^i; 2^(−8(h+1)/n) differs from it by rounding only.
    torch.testing.assert_close(
        P.alibi_slopes(n, dtype=F64), torch.tensor(_paper_slopes(n), dtype=F64), rtol=1e-14, atol=0
    )


def test_alibi_slopes_power_of_two_and_other_counts():
    torch.testing.assert_close(
        P.alibi_slopes(8, dtype=F64), torch.tensor([2.0 ** -(h + 1) for h in range(8)], dtype=F64)
    )
    # 6 heads: the 4-head slopes, then slopes 1 and 3 (0-based 0, 2) of the 8-head schedule.
    four = [2.0 ** (-8 * (h + 1) / 4) for h in range(4)]
    eight = [2.0 ** (-8 * (h + 1) / 8) for h in range(8)]
    torch.testing.assert_close(
        P.alibi_slopes(6, dtype=F64), torch.tensor([*four, eight[0], eight[2]], dtype=F64)
    )
    assert P.alibi_slopes(1).tolist() == [2.0**-8]
    for n in (3, 5, 12, 24, 40):
        s = P.alibi_slopes(n, dtype=F64)
        assert s.shape == (n,) and len(set(s.tolist())) == n and (s > 0).all() and (s < 1).all()
    with pytest.raises(ValueError, match="num_heads must be a positive int, got 0"):
        P.alibi_slopes(0)


def test_alibi_bias_uses_global_positions_for_decoding():
    slopes = P.alibi_slopes(4, dtype=F64)
    full = P.alibi_bias(slopes, torch.arange(10), torch.arange(10))
    assert full.shape == (4, 10, 10)
    torch.testing.assert_close(full[2, 7, 3], slopes[2] * (3 - 7))
    # A decode step: query at global position 9 against keys 0..9 equals row 9 of the full bias.
    step = P.alibi_bias(slopes, torch.tensor([9]), torch.arange(10))
    torch.testing.assert_close(step[:, 0], full[:, 9])
    # Per-batch positions (left-padded batches) give a batched bias.
    batched = P.alibi_bias(slopes, torch.tensor([[4], [9]]), torch.arange(10).expand(2, 10))
    assert batched.shape == (2, 4, 1, 10)
    torch.testing.assert_close(batched[1, :, 0], full[:, 9])
    sym = P.alibi_bias(slopes, torch.arange(3), torch.arange(3), symmetric=True)
    torch.testing.assert_close(sym, sym.transpose(-1, -2))
    assert (sym <= 0).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_alibi_bias_in_reduced_precision_uses_exact_distances(dtype):
    # Positions past 256 (bfloat16) or 2048 (float16) are not integers in those dtypes: the
    # distances are formed in float32, and only the final bias is rounded.
    slopes = P.alibi_slopes(4, dtype=F64)
    q_pos, k_pos = torch.tensor([4097, 4099]), torch.arange(4090, 4100)
    exact = P.alibi_bias(slopes, q_pos, k_pos)
    got = P.alibi_bias(slopes.to(dtype), q_pos, k_pos)
    assert got.dtype == dtype
    torch.testing.assert_close(got, exact.to(dtype), rtol=0, atol=0)
    assert (got[:, 0, 6] < 0).all()  # k = 4096 is one step before q = 4097, not the same place


def test_alibi_shell_and_bad_input():
    bias = ALiBi(3)(torch.arange(4), torch.arange(4))
    torch.testing.assert_close(
        bias, P.alibi_bias(P.alibi_slopes(3), torch.arange(4), torch.arange(4))
    )
    with pytest.raises(ValueError, match=r"q_pos and k_pos must be \[T\] or \[B, T\]"):
        P.alibi_bias(P.alibi_slopes(2), torch.zeros(1, 1, 3), torch.arange(3))


# ------------------------------------------------------------------------------------------
# RotaryEmbedding shell
# ------------------------------------------------------------------------------------------


def test_rotary_embedding_shell_layouts_offsets_and_positions():
    q, k = randn(2, 3, 5, 8, seed=3), randn(2, 3, 5, 8, seed=4)
    rope = RotaryEmbedding(8)
    assert list(rope.parameters()) == [] and list(rope.buffers()) == []
    rq, rk = rope(q, k, offset=4)
    c = R.rope_cache((5,), 8, offset=4)
    torch.testing.assert_close(rq, R.apply_rope(q, c))
    torch.testing.assert_close(rk, R.apply_rope(k, c))
    # bthd layout gives the same result up to the transpose.
    rope_t = RotaryEmbedding(8, layout="bthd")
    torch.testing.assert_close(rope_t(q.transpose(1, 2), offset=4).transpose(1, 2), rq)
    # Explicit per-batch positions equal grid positions.
    pos = torch.arange(4, 9).expand(2, 5)
    torch.testing.assert_close(rope(q, positions=pos), rq)
    torch.testing.assert_close(rope_t(q.transpose(1, 2), positions=pos).transpose(1, 2), rq)


def test_rotary_embedding_2d_and_errors():
    x = randn(1, 2, 3, 4, 8, seed=5)  # [B, heads, H, W, D]
    rope = RotaryEmbedding(8, n_axes=2)
    torch.testing.assert_close(rope(x), R.apply_rope(x, R.rope_cache((3, 4), 8)))
    with pytest.raises(ValueError, match=r"multiple of 4 .*got 6"):
        RotaryEmbedding(6, n_axes=2)
    with pytest.raises(ValueError, match="layout must be one of"):
        RotaryEmbedding(8, layout="bhld")
    with pytest.raises(ValueError, match="at least 5 axes"):
        rope(randn(2, 3, 8, seed=0))
    with pytest.raises(ValueError, match=r"either offset .* or positions, not both"):
        RotaryEmbedding(8)(randn(1, 2, 3, 8, seed=0), offset=2, positions=torch.arange(3))


def test_rotary_embedding_compiles():
    rope = RotaryEmbedding(8)
    q = randn(2, 3, 5, 8, seed=6)
    assert_compiles(lambda x: rope(x, offset=2), q)
