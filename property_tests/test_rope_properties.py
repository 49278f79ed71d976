"""RoPE properties over hypothesis-drawn shapes, sections, pairings and positions (float64)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from subq.functional import rope as R
from subq.ops import rope as ops
from subq.testing import assert_close_rel
from subq.testing.strategies import randn, seeds

F64 = torch.float64
TRUE_PAIRINGS = ["split_half", "interleaved"]


@st.composite
def engines(draw, max_axes: int = 3):
    """(n_axes, sections, pairing, base): per-axis channel counts, some possibly zero."""
    n_axes = draw(st.integers(1, max_axes))
    sections = tuple(2 * draw(st.integers(0 if n_axes > 1 else 1, 3)) for _ in range(n_axes))
    if sum(sections) == 0:
        sections = (2, *sections[1:])
    pairing = draw(st.sampled_from(TRUE_PAIRINGS))
    base = draw(st.sampled_from([10.0, 100.0, 10000.0]))
    return n_axes, sections, pairing, base


def _positions(seed: int, shape: tuple[int, ...], n_axes: int, scale: float = 20.0):
    """Continuous coordinates ``[*shape, n_axes]`` (or ``[*shape]`` for one axis)."""
    pos = randn(*shape, n_axes, seed=seed) * scale
    return pos[..., 0] if n_axes == 1 else pos


def _cache(pos, sections, pairing, base, n_axes):
    return R.rope_cache_from_positions(
        pos, sum(sections), base=base, sections=sections, n_axes=n_axes, pairing=pairing,
        dtype=F64,
    )  # fmt: skip


@given(engine=engines(), seed=seeds, n=st.integers(1, 6))
def test_norm_preserved_per_vector(engine, seed, n):
    n_axes, sections, pairing, base = engine
    x = randn(2, n, sum(sections), seed=seed)
    cache = _cache(_positions(seed + 1, (n,), n_axes), sections, pairing, base, n_axes)
    y = R.apply_rope(x, cache, pairing=pairing)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-12, atol=1e-12)


@given(engine=engines(), seed=seeds)
def test_scores_depend_only_on_relative_position(engine, seed):
    # <R(p) q, R(p') k> = <R(p + s) q, R(p' + s) k> for any shift s of all axes.
    n_axes, sections, pairing, base = engine
    d = sum(sections)
    q, k = randn(d, seed=seed), randn(d, seed=seed + 1)
    p, pk, shift = (randn(n_axes, seed=seed + i) * 30 for i in (2, 3, 4))

    def score(a, b):
        pos = torch.stack((a, b)) if n_axes > 1 else torch.stack((a, b))[:, 0]
        cache = _cache(pos, sections, pairing, base, n_axes)
        rq = R.apply_rope(
            q[None], R.RopeCache(cache.cos[:1], cache.sin[:1], cache.sections), pairing=pairing
        )
        rk = R.apply_rope(
            k[None], R.RopeCache(cache.cos[1:], cache.sin[1:], cache.sections), pairing=pairing
        )
        return (rq * rk).sum()

    torch.testing.assert_close(score(p, pk), score(p + shift, pk + shift), rtol=1e-10, atol=1e-10)


@given(engine=engines(), seed=seeds)
def test_composition(engine, seed):
    # R(a) R(b) = R(a + b).
    n_axes, sections, pairing, base = engine
    x = randn(3, sum(sections), seed=seed)
    a, b = _positions(seed + 1, (3,), n_axes), _positions(seed + 2, (3,), n_axes)
    ca, cb, cab = (_cache(p, sections, pairing, base, n_axes) for p in (a, b, a + b))
    twice = R.apply_rope(R.apply_rope(x, cb, pairing=pairing), ca, pairing=pairing)
    assert_close_rel(R.apply_rope(x, cab, pairing=pairing), twice, 1e-11)


@given(engine=engines(), seed=seeds, offset=st.integers(0, 50), length=st.integers(1, 6))
def test_decode_step_equals_full_sequence(engine, seed, offset, length):
    n_axes, sections, pairing, base = engine
    shape = (length,) + (2,) * (n_axes - 1)
    x = randn(2, *shape, sum(sections), seed=seed)
    full = R.apply_rope(
        x, R.rope_cache(shape, sum(sections), base=base, sections=sections, offset=offset, dtype=F64),
        pairing=pairing,
    )  # fmt: skip
    # The last position of the first axis, computed alone at its global offset.
    last = offset + length - 1
    step_cache = R.rope_cache(
        (1, *shape[1:]), sum(sections), base=base, sections=sections,
        offset=(last,) + (offset,) * (n_axes - 1), dtype=F64,
    )  # fmt: skip
    step = R.apply_rope(x[:, -1:], step_cache, pairing=pairing)
    torch.testing.assert_close(step, full[:, -1:], rtol=1e-13, atol=1e-13)


@given(engine=engines(), seed=seeds, extra=st.integers(1, 4))
def test_unrotated_channels_unchanged(engine, seed, extra):
    # Channels past the rotary dim, channels of a zero-size section and position 0 are fixed.
    n_axes, sections, pairing, base = engine
    rot = sum(sections)
    x = randn(4, rot + 2 * extra, seed=seed)
    pos = _positions(seed + 1, (4,), n_axes)
    cache = R.rope_cache_from_positions(
        pos, rot + 2 * extra, base=base, sections=sections, n_axes=n_axes, rotary_dim=rot,
        dtype=F64,
    )  # fmt: skip
    y = R.apply_rope(x, cache, pairing=pairing, partial=True)
    torch.testing.assert_close(y[..., rot:], x[..., rot:], rtol=0, atol=0)
    zero = R.rope_cache_from_positions(
        torch.zeros_like(pos), rot, base=base, sections=sections, n_axes=n_axes, dtype=F64
    )
    torch.testing.assert_close(R.apply_rope(x[..., :rot], zero, pairing=pairing), x[..., :rot])
    if n_axes > 1:
        # Moving along an axis changes only that axis' channels.
        moved = pos.clone()
        moved[..., 0] += 5.0
        y2 = R.apply_rope(
            x[..., :rot], _cache(moved, sections, pairing, base, n_axes), pairing=pairing
        )
        y1 = R.apply_rope(
            x[..., :rot], _cache(pos, sections, pairing, base, n_axes), pairing=pairing
        )
        torch.testing.assert_close(y2[..., sections[0] :], y1[..., sections[0] :])


@given(seed=seeds, n_axes=st.integers(1, 3), size=st.integers(1, 4), per_axis=st.integers(1, 3))
def test_reference_layouts_agree_and_equal_the_engine(seed, n_axes, size, per_axis):
    d = 2 * per_axis
    grid = (size,) + (3,) * (n_axes - 1)
    construct_blh = [
        None,
        R.construct_rope_1d_cache_blh,
        R.construct_rope_2d_cache_blh,
        R.construct_rope_3d_cache_blh,
    ][n_axes]
    construct_bhl = [
        None,
        R.construct_rope_1d_cache_bhl,
        R.construct_rope_2d_cache_bhl,
        R.construct_rope_3d_cache_bhl,
    ][n_axes]
    apply_blh = [None, R.apply_rope_1d_blh, R.apply_rope_2d_blh, R.apply_rope_3d_blh][n_axes]
    apply_bhl = [None, R.apply_rope_1d_bhl, R.apply_rope_2d_bhl, R.apply_rope_3d_bhl][n_axes]
    dim = d * n_axes if n_axes == 1 else d  # 1D takes the full dim, 2D/3D the per-axis dim
    x = randn(2, *grid, d * n_axes, seed=seed)
    y_blh = apply_blh(x, construct_blh(*grid, dim, dtype=F64))
    y_bhl = apply_bhl(x.movedim(-1, 1), construct_bhl(*grid, dim, dtype=F64))
    torch.testing.assert_close(y_bhl.movedim(1, -1), y_blh)
    engine = R.rope_cache(grid, d * n_axes, sections=(d,) * n_axes, dtype=F64)
    torch.testing.assert_close(R.apply_rope(x, engine), y_blh)


@given(engine=engines(), seed=seeds)
def test_inputs_never_mutated_and_dtype_preserved(engine, seed):
    n_axes, sections, pairing, base = engine
    d = sum(sections)
    x = randn(2, 3, d, seed=seed).to(torch.bfloat16)
    cache = R.rope_cache_from_positions(
        _positions(seed + 1, (3,), n_axes), d, base=base, sections=sections, n_axes=n_axes
    )
    before = [t.clone() for t in (x, cache.cos, cache.sin)]
    y = R.apply_rope(x, cache, pairing=pairing)
    for a, b in zip(before, (x, cache.cos, cache.sin)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert y.dtype == torch.bfloat16
    # float32 math, one rounding at the end.
    torch.testing.assert_close(
        y, R.apply_rope(x.float(), cache, pairing=pairing).to(torch.bfloat16), rtol=0, atol=0
    )


@st.composite
def layouts(draw):
    """An x shape and a cache leading shape that broadcasts against it (size 1 or equal)."""
    n_lead = draw(st.integers(1, 6))
    lead = tuple(draw(st.integers(1, 3)) for _ in range(n_lead))
    n_cache = draw(st.integers(0, n_lead))
    cache_lead = tuple(n if draw(st.booleans()) else 1 for n in lead[n_lead - n_cache :])
    return lead, cache_lead


@settings(max_examples=10)
@given(layout=layouts(), engine=engines(max_axes=2), seed=seeds, strided=st.booleans())
def test_fused_plumbing_equals_reference(layout, engine, seed, strided):
    # The fused path's layout merging and strided addressing (CPU emulation) against the formula.
    lead, cache_lead = layout
    _, sections, pairing, _ = engine
    d = sum(sections)
    # strided: a slice of a larger tensor (as q sliced from a fused qkv projection).
    x = randn(*lead, 2, d, seed=seed)[..., 1, :] if strided else randn(*lead, d, seed=seed)
    cos, sin = randn(*cache_lead, d // 2, seed=seed + 1), randn(*cache_lead, d // 2, seed=seed + 2)
    assert_close_rel(
        ops.rope_reference(x, cos, sin, sections, pairing),
        ops.rope_fused(x, cos, sin, sections, pairing),
        1e-13,
    )
