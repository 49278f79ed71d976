"""Init helpers over hypothesis-drawn shapes, scales and seeds: statistics, bounds, determinism."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from subq import init
from subq.testing import assert_init_stats
from subq.testing.strategies import axis_sizes, seeds

# Enough elements for the statistics to mean something (assert_init_stats needs ≥ 100); the
# leading axis comes from axis_sizes so 1, odd and prime extents are drawn too.
shapes = st.tuples(axis_sizes(7), st.integers(20, 90), st.integers(20, 90))
scales = st.floats(1e-3, 10.0, allow_nan=False, allow_infinity=False)
dtypes = st.sampled_from([torch.float32, torch.float64])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@settings(max_examples=10)
@given(shape=shapes, std=scales, seed=seeds, dtype=dtypes)
def test_trunc_normal_stats_and_bound(shape, std, seed, dtype):
    tensor = init.trunc_normal(shape, std=std, generator=_gen(seed), dtype=dtype)
    assert tensor.shape == shape and tensor.dtype == dtype
    # float32 rounding of the cut-off may land one ulp outside 2·std.
    assert_init_stats(tensor, std=std * init.TRUNC_STD_RATIO, bound=2 * std * (1 + 1e-6))


@settings(max_examples=10)
@given(shape=shapes, std=scales, mean=st.floats(-3, 3), seed=seeds)
def test_normal_stats(shape, std, mean, seed):
    tensor = init.normal(shape, std=std, mean=mean, generator=_gen(seed), dtype=torch.float64)
    assert_init_stats(tensor, mean=mean, std=std)


@settings(max_examples=10)
@given(shape=shapes, bound=scales, seed=seeds)
def test_uniform_stats_and_bound(shape, bound, seed):
    tensor = init.uniform(shape, bound=bound, generator=_gen(seed), dtype=torch.float64)
    assert_init_stats(tensor, std=bound / math.sqrt(3), bound=bound)


@settings(max_examples=10)
@given(out=st.integers(20, 120), fan_in=st.integers(20, 120), seed=seeds)
def test_linear_weight_fan_in_std(out, fan_in, seed):
    weight = init.linear_weight(out, fan_in, generator=_gen(seed), dtype=torch.float64)
    std = 1 / math.sqrt(fan_in)
    assert_init_stats(weight, std=std, bound=2 * std / init.TRUNC_STD_RATIO * (1 + 1e-12))


@settings(max_examples=10)
@given(
    factory=st.sampled_from(["trunc_normal_init", "small_init", "wang_init", "partial_wang"]),
    dim=st.integers(1, 4096),
    layers=st.integers(1, 48),
    shape=shapes,
    seed=seeds,
)
def test_in_place_factories_stats(factory, dim, layers, shape, seed):
    if factory == "trunc_normal_init":
        std = 0.02
        fn, expected, bound = init.trunc_normal_init(std), std * init.TRUNC_STD_RATIO, 2 * std
    elif factory == "small_init":
        fn, expected, bound = init.small_init(dim), math.sqrt(2 / (5 * dim)), None
    elif factory == "wang_init":
        fn, expected, bound = init.wang_init(dim, layers), 2 / (layers * math.sqrt(dim)), None
    else:
        fn = init.partial_wang_init_fn_with_num_layers(layers)(dim)
        expected, bound = 2 / (layers * math.sqrt(dim)), None
    tensor = torch.empty(shape, dtype=torch.float64)
    out = fn(tensor, generator=_gen(seed))
    assert out is tensor
    assert_init_stats(tensor, std=expected, bound=bound)


@settings(max_examples=10)
@given(
    form=st.sampled_from(["trunc_normal", "normal", "uniform"]),
    shape=st.lists(axis_sizes(6), min_size=0, max_size=3).map(tuple),
    seed=seeds,
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]),
)
def test_functional_forms_are_determined_by_the_generator(form, shape, seed, dtype):
    make = {
        "trunc_normal": lambda **kw: init.trunc_normal(shape, std=1.0, **kw),
        "normal": lambda **kw: init.normal(shape, std=1.0, **kw),
        "uniform": lambda **kw: init.uniform(shape, bound=1.0, **kw),
    }[form]
    a = make(generator=_gen(seed), dtype=dtype)
    b = make(generator=_gen(seed), dtype=dtype)
    assert a.shape == shape and a.dtype == dtype
    assert torch.equal(a, b)
    if dtype in (torch.bfloat16, torch.float16):
        # Reduced dtypes are a cast of the float32 draw: same seed, same values.
        assert torch.equal(a, make(generator=_gen(seed), dtype=torch.float32).to(dtype))
