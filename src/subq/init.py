"""Weight initialisation: the reference's curried in-place factories and functional forms.

Two protocols live here.

**In-place factories** (the reference API). A factory returns ``fn(tensor)``, which fills
``tensor`` in place under ``torch.no_grad()`` and returns it; ``fn`` also accepts a keyword
``generator``. ``trunc_normal_init_factory`` and ``partial_wang_init_fn_with_num_layers`` return
one level more: ``fn(dim) -> fn(tensor)``, so a layer can hand its width to an init chosen in a
config.

**Functional forms** (what every ``init_*`` in subq uses). ``trunc_normal``, ``normal``,
``uniform``, ``zeros``, ``ones`` and ``linear_weight`` take a shape and return a *new* tensor. With a
``torch.Generator`` the values are drawn on the generator's device in float32 (float64 when
``dtype`` is float64) and then moved and cast, so one seed gives the same values on every target
device and dtype.

Truncation: ``trunc_normal_init`` and ``trunc_normal`` cut at ±2·std. The reference passes PyTorch's
default absolute cut-offs ±2, which at std = 0.02 is ±100 standard deviations, i.e. no truncation
at all. ``std`` is the standard deviation of the normal *before* truncation, as in PyTorch and
timm; the sample standard deviation after cutting at ±2·std is ``TRUNC_STD_RATIO · std`` ≈ 0.88·std.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "TRUNC_STD_RATIO",
    "linear_weight",
    "normal",
    "ones",
    "partial_wang_init_fn_with_num_layers",
    "small_init",
    "trunc_normal",
    "trunc_normal_init",
    "trunc_normal_init_factory",
    "uniform",
    "wang_init",
    "zeros",
]

InitFn = Callable[..., Tensor]

#: Standard deviation of a unit normal truncated at ±2, relative to the untruncated one.
TRUNC_STD_RATIO: float = math.sqrt(
    1.0 - 4.0 * math.exp(-2.0) / math.sqrt(2.0 * math.pi) / math.erf(2.0 / math.sqrt(2.0))
)


# ---------------------------------------------------------------------------------------------
# argument checks


def _check_positive(fn: str, name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{fn}: {name} must be a positive number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{fn}: {name} must be a positive finite number, got {value!r}")
    return float(value)


def _check_positive_int(fn: str, name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{fn}: {name} must be a positive int, got {value!r}")
    return value


def _check_shape(fn: str, shape: int | Sequence[int]) -> tuple[int, ...]:
    dims = (shape,) if isinstance(shape, int) and not isinstance(shape, bool) else shape
    try:
        out = tuple(dims)
    except TypeError:
        out = None
    if out is None or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in out):
        raise ValueError(f"{fn}: shape must be an int or a sequence of ints ≥ 0, got {shape!r}")
    return out


# ---------------------------------------------------------------------------------------------
# functional forms: shape in, new tensor out


def _draw(
    fn: str,
    shape: int | Sequence[int],
    fill: Callable[[Tensor, torch.Generator | None], object],
    generator: torch.Generator | None,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> Tensor:
    """Allocate, fill with ``fill(tensor, generator)``, then move and cast."""
    dims = _check_shape(fn, shape)
    dtype = dtype if dtype is not None else torch.get_default_dtype()
    if not dtype.is_floating_point:
        raise ValueError(f"{fn}: dtype must be a floating-point dtype, got {dtype}")
    # Draw in at least float32: reduced-precision sampling (erfinv in bf16) distorts the tails.
    draw_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    # With a generator, draw on its device so the values do not depend on the target device.
    draw_device = generator.device if generator is not None else device
    out = torch.empty(dims, dtype=draw_dtype, device=draw_device)
    with torch.no_grad():
        fill(out, generator)
    return out.to(device=device, dtype=dtype)


def trunc_normal(
    shape: int | Sequence[int],
    *,
    std: float,
    mean: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """A new tensor from a normal(mean, std) truncated to ``mean ± 2·std``.

    ``std`` is the standard deviation before truncation; the samples' standard deviation is
    ``TRUNC_STD_RATIO · std`` (≈ 0.88·std).

    Example:
        >>> w = trunc_normal((256, 256), std=0.02, generator=torch.Generator().manual_seed(0))
        >>> bool(w.abs().max() <= 0.04)
        True
    """
    std = _check_positive("trunc_normal", "std", std)

    def fill(t: Tensor, g: torch.Generator | None) -> None:
        torch.nn.init.trunc_normal_(
            t, mean=mean, std=std, a=mean - 2 * std, b=mean + 2 * std, generator=g
        )

    return _draw("trunc_normal", shape, fill, generator, device, dtype)


def normal(
    shape: int | Sequence[int],
    *,
    std: float,
    mean: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """A new tensor of normal(mean, std) samples."""
    std = _check_positive("normal", "std", std)
    return _draw(
        "normal",
        shape,
        lambda t, g: t.normal_(mean, std, generator=g),
        generator,
        device,
        dtype,
    )


def uniform(
    shape: int | Sequence[int],
    *,
    bound: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """A new tensor of uniform samples on ``[-bound, bound)``."""
    bound = _check_positive("uniform", "bound", bound)
    return _draw(
        "uniform",
        shape,
        lambda t, g: t.uniform_(-bound, bound, generator=g),
        generator,
        device,
        dtype,
    )


def zeros(
    shape: int | Sequence[int],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """A new tensor of zeros; ``generator`` is accepted (and unused) so inits are interchangeable."""
    del generator
    return torch.zeros(_check_shape("zeros", shape), device=device, dtype=dtype)


def ones(
    shape: int | Sequence[int],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """A new tensor of ones; ``generator`` is accepted (and unused) so inits are interchangeable."""
    del generator
    return torch.ones(_check_shape("ones", shape), device=device, dtype=dtype)


def linear_weight(
    out_features: int,
    in_features: int,
    *,
    std: float | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """The default weight of a linear map ``[out_features, in_features]``: LeCun truncated normal.

    Truncated at ±2σ with σ chosen so that the samples' standard deviation is
    ``1/√in_features`` (fan-in scaling, as JAX's ``lecun_normal``): unit-variance inputs give
    unit-variance outputs at any width. Pass ``std`` to fix the *sample* standard deviation
    instead (e.g. ``std=0.02``).

    Example:
        >>> w = linear_weight(512, 1024, generator=torch.Generator().manual_seed(0))
        >>> round(w.std().item() * 1024**0.5, 1)
        1.0
    """
    out_features = _check_positive_int("linear_weight", "out_features", out_features)
    in_features = _check_positive_int("linear_weight", "in_features", in_features)
    if std is None:
        std = 1.0 / math.sqrt(in_features)
    std = _check_positive("linear_weight", "std", std)
    return trunc_normal(
        (out_features, in_features),
        std=std / TRUNC_STD_RATIO,
        generator=generator,
        device=device,
        dtype=dtype,
    )


# ---------------------------------------------------------------------------------------------
# in-place factories (reference API)


def _in_place(fill: Callable[[Tensor, torch.Generator | None], object]) -> InitFn:
    def init_(tensor: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        with torch.no_grad():
            fill(tensor, generator)
        return tensor

    return init_


def trunc_normal_init(std: float = 0.02) -> InitFn:
    """Truncated-normal initializer with fixed standard deviation.

    Returns ``fn(tensor, *, generator=None)`` that fills ``tensor`` in place with
    normal(0, std) samples truncated to ±2·std and returns it. Unlike the reference (absolute
    cut-offs ±2, i.e. untruncated at small std) the cut-off scales with ``std``.

    Example:
        >>> w = trunc_normal_init(0.02)(torch.empty(64, 64))
        >>> bool(w.abs().max() <= 0.04)
        True
    """
    std = _check_positive("trunc_normal_init", "std", std)
    return _in_place(
        lambda t, g: torch.nn.init.trunc_normal_(
            t, mean=0.0, std=std, a=-2 * std, b=2 * std, generator=g
        )
    )


def trunc_normal_init_factory(std: float = 0.02) -> Callable[[int], InitFn]:
    """Factory that returns ``fn(dim) -> fn(tensor)`` for truncated-normal init (``dim`` ignored)."""
    std = _check_positive("trunc_normal_init_factory", "std", std)

    def with_dim(dim: int) -> InitFn:
        del dim  # the std is fixed; the argument keeps the dim-dependent protocol
        return trunc_normal_init(std)

    return with_dim


def small_init(dim: int) -> InitFn:
    """Dim-dependent initializer from "Transformers without Tears" (Nguyen & Salazar, 2019).

    Returns ``fn(tensor, *, generator=None)`` filling ``tensor`` with normal(0, √(2 / (5·dim))).
    """
    dim = _check_positive_int("small_init", "dim", dim)
    std = math.sqrt(2.0 / (5.0 * dim))
    return _in_place(lambda t, g: t.normal_(0.0, std, generator=g))


def wang_init(dim: int, num_layers: int) -> InitFn:
    """Depth-scaled initializer (Wang et al., as in GPT-NeoX's output projections).

    Returns ``fn(tensor, *, generator=None)`` filling ``tensor`` with
    normal(0, 2 / (num_layers·√dim)).
    """
    dim = _check_positive_int("wang_init", "dim", dim)
    num_layers = _check_positive_int("wang_init", "num_layers", num_layers)
    std = 2.0 / (num_layers * math.sqrt(dim))
    return _in_place(lambda t, g: t.normal_(0.0, std, generator=g))


def partial_wang_init_fn_with_num_layers(num_layers: int) -> Callable[[int], InitFn]:
    """Factory that returns ``partial(wang_init, num_layers=...)``: ``fn(dim) -> fn(tensor)``."""
    num_layers = _check_positive_int(
        "partial_wang_init_fn_with_num_layers", "num_layers", num_layers
    )
    return functools.partial(wang_init, num_layers=num_layers)
