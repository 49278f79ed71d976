"""The ``fft_conv`` op: depthwise long convolution of ``[B, C, *spatial]`` by FFT.

Semantics (per spatial axis of length ``N`` with a kernel of ``K`` taps, centre ``c``):

``y[i] = Σ_m k[m] · x[i − (m − c)]`` (a convolution, not a cross-correlation), where the boundary
mode says what ``x`` is outside ``[0, N)``:

* ``"causal"`` (1D only): ``c = 0``, ``x`` is zero before 0, so ``y[t]`` uses ``x[≤ t]`` only;
* ``"zero"``: ``c = K // 2`` (PyTorch's ``padding="same"`` centre), ``x`` is zero outside;
* ``"circular"``: ``c = K // 2``, ``x`` is periodic with period ``N``.

The oracle is ``F.conv{1,2,3}d`` of the flipped kernel with ``padding="same"`` (zero),
circular padding (circular) or left padding ``K − 1`` (causal). Kernel taps that cannot reach an
output are dropped and a circular kernel longer than ``N`` is folded modulo ``N``, so any kernel
length works. Each axis uses the smallest FFT size that is exact for its mode, rounded up to a
product of 2, 3, 5 and 7 (:func:`next_fast_len`). Spectral math runs in float32 (float64 stays
float64); the output has the input's dtype.

Backends: ``reference`` (plain ``torch.fft``, any device; the oracle of faster paths).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from subq.ops.dispatch import Backend, Op

__all__ = [
    "MODES",
    "fft_conv_op",
    "fft_conv_plan",
    "fft_conv_reference",
    "kernel_spectrum",
    "next_fast_len",
]

#: Valid boundary modes.
MODES = ("causal", "zero", "circular")


def next_fast_len(n: int) -> int:
    """The smallest integer ``≥ n`` whose prime factors are all in {2, 3, 5, 7}.

    Example:
        >>> next_fast_len(1025), next_fast_len(11)
        (1029, 12)
    """
    if n <= 1:
        return 1
    m = n
    while True:
        r = m
        for p in (2, 3, 5, 7):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


class AxisPlan(NamedTuple):
    """How one spatial axis is convolved (static facts only; a NamedTuple so compile traces it).

    Attributes:
        mode: boundary mode.
        n_in: input length along the axis.
        k_lo: first kernel tap that can reach an output.
        k_hi: one past the last such tap.
        centre: index (in the kept taps) of offset 0.
        fft_size: FFT length for the axis.
    """

    mode: str
    n_in: int
    k_lo: int
    k_hi: int
    centre: int
    fft_size: int


def _axis_plan(mode: str, n_in: int, k_len: int, fast: bool) -> AxisPlan:
    rounder = next_fast_len if fast else (lambda v: v)
    if mode == "causal":
        # Taps at lags ≥ N never reach an output inside [0, N).
        lo, hi, centre = 0, min(k_len, n_in), 0
        keff = hi - lo
        size = rounder(n_in + keff - 1)
    elif mode == "zero":
        c = k_len // 2
        # Offsets m − c beyond ±(N − 1) only reach outputs outside [0, N).
        lo, hi = max(0, c - (n_in - 1)), min(k_len, c + n_in)
        centre = c - lo
        keff = hi - lo
        # No wrap-around onto outputs [0, N): n > N − 1 + centre and n > N + keff − 2 − centre.
        size = rounder(max(n_in + centre, n_in + keff - 1 - centre))
    elif mode == "circular":
        lo, hi, centre = 0, k_len, k_len // 2
        size = n_in  # exact by definition; the kernel is folded modulo N
    else:
        raise ValueError(f"fft_conv: mode must be one of {list(MODES)}, got {mode!r}")
    return AxisPlan(mode, n_in, lo, hi, centre, size)


def fft_conv_plan(
    spatial: Sequence[int], kernel_sizes: Sequence[int], modes: Sequence[str], fast: bool = True
) -> tuple[AxisPlan, ...]:
    """FFT plan for each spatial axis (static: depends on sizes and modes only).

    ``fast=False`` uses the minimal exact size instead of the next 2·3·5·7-smooth one.
    """
    return tuple(
        _axis_plan(m, int(n), int(k), fast) for m, n, k in zip(modes, spatial, kernel_sizes)
    )


def _wrap_axis(kernel: Tensor, axis: int, plan: AxisPlan) -> Tensor:
    """Kernel along ``axis`` → length-``fft_size`` buffer with offset 0 at index 0 (mod size)."""
    k = kernel.narrow(axis, plan.k_lo, plan.k_hi - plan.k_lo)
    keff, size = k.shape[axis], plan.fft_size
    reps = -(-keff // size)
    if reps * size != keff:
        pad = [0, 0] * (k.ndim - 1 - axis % k.ndim) + [0, reps * size - keff]
        k = torch.nn.functional.pad(k, pad)
    # Tap m goes to (m − centre) mod (reps·size); summing the reps blocks folds it mod size
    # (circular kernels longer than the input wrap around; otherwise reps == 1).
    k = torch.roll(k, -plan.centre, dims=axis)
    if reps > 1:
        shape = list(k.shape)
        k = k.reshape([*shape[:axis], reps, size, *shape[axis + 1 :]]).sum(axis)
    return k


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def kernel_spectrum(kernel: Tensor, plans: Sequence[AxisPlan]) -> Tensor:
    """``rfftn`` of the wrapped kernel ``[..., *K]`` (last ``len(plans)`` axes spatial), fp32+."""
    nd = len(plans)
    k = kernel.to(_compute_dtype(kernel.dtype))
    for i, plan in enumerate(plans):
        k = _wrap_axis(k, k.ndim - nd + i, plan)
    dims = tuple(range(-nd, 0))
    return torch.fft.rfftn(k, s=[p.fft_size for p in plans], dim=dims)


def fft_conv_reference(
    x: Tensor,
    kernel: Tensor,
    skip: Tensor | None,
    modes: tuple[str, ...],
    chunk_size: int | None = None,
    fast_sizes: bool = True,
) -> Tensor:
    """Plain ``torch.fft`` implementation on channels-first ``x`` ``[B, C, *spatial]``.

    ``kernel`` is ``[C, *K]`` or per-sample ``[B, C, *K]``; ``skip`` is ``[C]`` or None.
    ``chunk_size`` processes that many channels at a time (bounds the spectral buffers).
    """
    nd = len(modes)
    spatial = tuple(x.shape[2:])
    plans = fft_conv_plan(spatial, kernel.shape[-nd:], modes, fast_sizes)
    if chunk_size is not None and chunk_size < x.shape[1]:
        outs = []
        for start in range(0, x.shape[1], chunk_size):
            width = min(chunk_size, x.shape[1] - start)
            xs = x.narrow(1, start, width)
            ks = kernel.narrow(kernel.ndim - nd - 1, start, width)
            ss = None if skip is None else skip.narrow(0, start, width)
            outs.append(fft_conv_reference(xs, ks, ss, modes, None, fast_sizes))
        return torch.cat(outs, dim=1)
    cdt = _compute_dtype(x.dtype)
    dims = tuple(range(-nd, 0))
    sizes = [p.fft_size for p in plans]
    x_c = x.to(cdt)
    # rfftn(x, s=n) zero-pads to n implicitly (no padded copy of x).
    spec = torch.fft.rfftn(x_c, s=sizes, dim=dims) * kernel_spectrum(kernel, plans)
    y = torch.fft.irfftn(spec, s=sizes, dim=dims)
    for i, n in enumerate(spatial):
        y = y.narrow(2 + i, 0, n)
    if skip is not None:
        y = y + x_c * skip.to(cdt).reshape(-1, *([1] * nd))
    return y.to(x.dtype)


fft_conv_op = Op(
    "fft_conv",
    [Backend("reference", fft_conv_reference)],
    example_facts={"dtype": torch.bfloat16, "modes": ("causal",)},
)
