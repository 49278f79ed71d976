"""Init helpers: the reference's in-place factories and the functional forms."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from subq import init
from subq.testing import assert_init_stats


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_trunc_std_ratio_matches_numerical_integration():
    # Independent oracle: the second moment of a unit normal restricted to [-2, 2], by quadrature.
    x = torch.linspace(-2.0, 2.0, 200_001, dtype=torch.float64)
    density = torch.exp(-0.5 * x**2)
    variance = torch.trapezoid(x**2 * density, x) / torch.trapezoid(density, x)
    assert init.TRUNC_STD_RATIO == pytest.approx(math.sqrt(variance.item()), abs=1e-9)


# --- in-place factories ---------------------------------------------------------------------


def test_trunc_normal_init_fills_in_place_and_returns_the_tensor():
    tensor = torch.nn.Parameter(torch.empty(256, 256))
    out = init.trunc_normal_init(0.02)(tensor, generator=_gen())
    assert out is tensor and out.requires_grad  # under no_grad, so a Parameter can be filled
    assert_init_stats(tensor, std=0.02 * init.TRUNC_STD_RATIO, bound=0.04)
    # The cut-off is reached (the samples are not simply a narrower normal).
    assert tensor.abs().max().item() > 0.039


def test_trunc_normal_init_cuts_at_two_std_unlike_the_reference():
    std = 0.02
    ours = init.trunc_normal_init(std)(torch.empty(100_000), generator=_gen(1))
    # The reference calls trunc_normal_ with PyTorch's absolute cut-offs ±2: no truncation at
    # std = 0.02, so values beyond ±2·std appear and the std is the full 0.02.
    reference = torch.nn.init.trunc_normal_(torch.empty(100_000), std=std, generator=_gen(1))
    assert ours.abs().max() <= 2 * std
    assert reference.abs().max() > 2 * std
    assert_init_stats(reference, std=std)
    assert_init_stats(ours, std=std * init.TRUNC_STD_RATIO)


def test_in_place_factories_are_deterministic_given_a_generator():
    for fn in (init.trunc_normal_init(0.1), init.small_init(16), init.wang_init(16, 4)):
        a = fn(torch.empty(50), generator=_gen(3))
        b = fn(torch.empty(50), generator=_gen(3))
        c = fn(torch.empty(50), generator=_gen(4))
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_trunc_normal_init_factory_ignores_dim():
    factory = init.trunc_normal_init_factory(0.05)
    a = factory(8)(torch.empty(64), generator=_gen(2))
    b = factory(1024)(torch.empty(64), generator=_gen(2))
    assert torch.equal(a, b)
    assert_init_stats(
        factory(3)(torch.empty(20_000), generator=_gen()), std=0.05 * init.TRUNC_STD_RATIO
    )


def test_small_init_std():
    dim = 40
    tensor = init.small_init(dim)(torch.empty(300, 100), generator=_gen())
    assert_init_stats(tensor, std=math.sqrt(2 / (5 * dim)))


def test_wang_init_std():
    dim, layers = 64, 6
    tensor = init.wang_init(dim, layers)(torch.empty(300, 100), generator=_gen())
    assert_init_stats(tensor, std=2 / (layers * math.sqrt(dim)))


def test_partial_wang_init_is_partial_of_wang_init():
    fn = init.partial_wang_init_fn_with_num_layers(12)
    assert isinstance(fn, functools.partial)
    assert fn.func is init.wang_init and fn.keywords == {"num_layers": 12}
    a = fn(32)(torch.empty(100), generator=_gen(5))
    b = init.wang_init(32, 12)(torch.empty(100), generator=_gen(5))
    assert torch.equal(a, b)


def test_in_place_on_bfloat16_tensor():
    tensor = init.small_init(8)(torch.empty(64, 64, dtype=torch.bfloat16), generator=_gen())
    assert tensor.dtype == torch.bfloat16
    assert_init_stats(tensor, std=math.sqrt(2 / 40))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: init.trunc_normal_init(0), "trunc_normal_init: std must be a positive finite"),
        (lambda: init.trunc_normal_init(-0.1), r"std must be a positive finite number, got -0\.1"),
        (lambda: init.trunc_normal_init(float("nan")), "std must be a positive finite number"),
        (lambda: init.trunc_normal_init(float("inf")), "std must be a positive finite number"),
        (lambda: init.trunc_normal_init("0.1"), "std must be a positive number, got '0.1'"),
        (lambda: init.trunc_normal_init(True), "std must be a positive number, got True"),
        (lambda: init.trunc_normal_init_factory(0.0), "trunc_normal_init_factory: std"),
        (lambda: init.small_init(0), "small_init: dim must be a positive int, got 0"),
        (lambda: init.small_init(2.5), "small_init: dim must be a positive int, got 2.5"),
        (lambda: init.small_init(True), "small_init: dim must be a positive int, got True"),
        (lambda: init.wang_init(0, 2), "wang_init: dim must be a positive int, got 0"),
        (lambda: init.wang_init(8, 0), "wang_init: num_layers must be a positive int, got 0"),
        (
            lambda: init.partial_wang_init_fn_with_num_layers(-3),
            "partial_wang_init_fn_with_num_layers: num_layers must be a positive int, got -3",
        ),
    ],
)
def test_factory_argument_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- functional forms -----------------------------------------------------------------------


FORMS = {
    "trunc_normal": lambda shape, **kw: init.trunc_normal(shape, std=0.5, **kw),
    "normal": lambda shape, **kw: init.normal(shape, std=0.5, **kw),
    "uniform": lambda shape, **kw: init.uniform(shape, bound=0.5, **kw),
    "linear_weight": lambda shape, **kw: init.linear_weight(*shape, **kw),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_functional_forms_return_new_tensors_deterministically(form):
    make = FORMS[form]
    a = make((7, 5), generator=_gen(11))
    b = make((7, 5), generator=_gen(11))
    c = make((7, 5), generator=_gen(12))
    assert a.shape == (7, 5) and a.dtype == torch.get_default_dtype()
    assert torch.equal(a, b) and not torch.equal(a, c)
    generator = _gen(11)
    first, second = make((7, 5), generator=generator), make((7, 5), generator=generator)
    assert torch.equal(first, a) and not torch.equal(first, second)  # the generator advances


@pytest.mark.parametrize("form", sorted(FORMS))
def test_functional_forms_give_the_same_values_in_every_reduced_dtype(form):
    make = FORMS[form]
    full = make((9, 4), generator=_gen(3), dtype=torch.float32)
    half = make((9, 4), generator=_gen(3), dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    assert torch.equal(half, full.to(torch.bfloat16))
    double = make((9, 4), generator=_gen(3), dtype=torch.float64)
    # float64 is drawn in float64: its values carry more than float32's 24 bits.
    assert double.dtype == torch.float64
    assert not torch.equal(double, double.float().double())


def test_trunc_normal_statistics_and_bound():
    std, mean = 0.3, 1.5
    tensor = init.trunc_normal((400, 300), std=std, mean=mean, generator=_gen())
    assert_init_stats(tensor - mean, std=std * init.TRUNC_STD_RATIO, bound=2 * std + 1e-7)


def test_normal_statistics():
    tensor = init.normal((400, 300), std=0.7, mean=-2.0, generator=_gen(), dtype=torch.float64)
    assert_init_stats(tensor, mean=-2.0, std=0.7)


def test_uniform_statistics_and_bound():
    bound = 0.25
    tensor = init.uniform(100_000, bound=bound, generator=_gen(), dtype=torch.float64)
    assert_init_stats(tensor, std=bound / math.sqrt(3), bound=bound)
    assert tensor.min() < -0.99 * bound and tensor.max() > 0.99 * bound


def test_linear_weight_default_has_fan_in_std():
    weight = init.linear_weight(300, 256, generator=_gen())
    assert weight.shape == (300, 256)
    bound = 2 / (init.TRUNC_STD_RATIO * math.sqrt(256))
    assert_init_stats(weight, std=1 / math.sqrt(256), bound=bound + 1e-7)


def test_linear_weight_explicit_std_is_the_sample_std():
    weight = init.linear_weight(300, 256, std=0.02, generator=_gen(), dtype=torch.float64)
    assert_init_stats(weight, std=0.02, bound=0.04 / init.TRUNC_STD_RATIO + 1e-12)


def test_zeros_and_ones():
    assert torch.equal(init.zeros((2, 3), generator=_gen()), torch.zeros(2, 3))
    assert torch.equal(init.ones(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64))


def test_int_and_empty_shapes():
    assert init.normal(5, std=1.0).shape == (5,)
    assert init.trunc_normal((), std=1.0).shape == ()
    assert init.uniform((0, 3), bound=1.0).shape == (0, 3)


def test_generator_free_draw_uses_the_global_rng():
    torch.manual_seed(0)
    a = init.normal(10, std=1.0)
    torch.manual_seed(0)
    assert torch.equal(a, init.normal(10, std=1.0))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: init.trunc_normal((2,), std=0.0), "trunc_normal: std must be a positive finite"),
        (lambda: init.normal((2,), std=-1.0), "normal: std must be a positive finite"),
        (lambda: init.uniform((2,), bound=0.0), "uniform: bound must be a positive finite"),
        (lambda: init.normal((2, -1), std=1.0), r"normal: shape must be .*got \(2, -1\)"),
        (lambda: init.normal((2.0,), std=1.0), r"normal: shape must be .*got \(2\.0,\)"),
        (lambda: init.normal(None, std=1.0), "normal: shape must be .*got None"),
        (lambda: init.zeros((True,)), r"zeros: shape must be .*got \(True,\)"),
        (
            lambda: init.normal(3, std=1.0, dtype=torch.int64),
            "normal: dtype must be a floating-point dtype, got torch.int64",
        ),
        (lambda: init.linear_weight(0, 3), "linear_weight: out_features must be a positive int"),
        (lambda: init.linear_weight(3, 0), "linear_weight: in_features must be a positive int"),
        (lambda: init.linear_weight(3, 3, std=0.0), "linear_weight: std must be a positive"),
    ],
)
def test_functional_argument_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
