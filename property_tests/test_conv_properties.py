"""Hypothesis properties of the FFT convolution over drawn modes, ranks, sizes and kernels."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from subq.functional.fftconv import fft_conv
from subq.ops.fftconv import fft_conv_direct
from subq.testing import assert_close_rel, assert_equivariant
from subq.testing.strategies import axis_sizes, randn, seeds


@st.composite
def conv_problems(draw):
    nd = draw(st.integers(1, 3))
    if nd == 1:
        modes = (draw(st.sampled_from(["causal", "zero", "circular"])),)
    else:
        modes = tuple(draw(st.sampled_from(["zero", "circular"])) for _ in range(nd))
    max_size = (17, 7, 4)[nd - 1]
    spatial = tuple(draw(axis_sizes(max_size)) for _ in range(nd))
    # Kernels from 1 tap to longer than the double grid.
    ksize = tuple(draw(st.integers(1, 2 * n + 2)) for n in spatial)
    batch, channels = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    per_sample = draw(st.booleans())
    seed = draw(seeds)
    x = randn(batch, channels, *spatial, seed=seed)
    k = randn(*((batch,) if per_sample else ()), channels, *ksize, seed=seed + 1)
    d = randn(channels, seed=seed + 2) if draw(st.booleans()) else None
    return modes, x, k, d


@settings(max_examples=25)
@given(problem=conv_problems(), chunk=st.one_of(st.none(), st.integers(1, 2)))
def test_fft_conv_equals_direct_convolution(problem, chunk):
    modes, x, k, d = problem
    got = fft_conv(x, k, d, mode=modes, chunk_size=chunk)
    assert_close_rel(fft_conv_direct(x, k, d, modes), got, 1e-11)


@settings(max_examples=10)
@given(problem=conv_problems(), data=st.data())
def test_circular_axes_are_shift_equivariant(problem, data):
    modes, x, k, d = problem
    modes = tuple("circular" for _ in modes)
    shifts = tuple(data.draw(st.integers(0, n)) for n in x.shape[2:])
    dims = tuple(range(2, x.ndim))
    assert_equivariant(
        lambda t: fft_conv(t, k, d, mode=modes),
        x,
        lambda t: torch.roll(t, shifts, dims=dims),
        rtol=1e-11,
    )


@settings(max_examples=25, deadline=None)
@given(
    length=st.integers(1, 700),
    taps=st.integers(1, 900),
    batch=st.integers(1, 2),
    channels=st.integers(1, 3),
    per_sample=st.booleans(),
    skip=st.booleans(),
    wanted=st.sets(st.sampled_from([0, 1, 2])),
    seed=seeds,
)
def test_fourstep_equals_direct_causal_convolution(
    length, taps, batch, channels, per_sample, skip, wanted, seed
):
    # The CUDA default for 1D causal rows, as its PyTorch math (the Triton kernels compute the
    # same steps), forward and the gradients of a drawn subset of (x, kernel, skip); float32
    # spectra, so the bound is tests/test_fftconv_fourstep.py's FP32_BOUND.
    from subq.ops._causal_fftconv import causal_fft_conv_fourstep

    x = randn(batch, channels, length, seed=seed)
    k = randn(*((batch,) if per_sample else ()), channels, taps, seed=seed + 1)
    d = randn(channels, seed=seed + 2) if skip else None
    _check_forward_and_gradients(causal_fft_conv_fourstep, x, k, d, ("causal",), wanted, seed)


def _check_forward_and_gradients(conv, x, k, d, modes, wanted, seed):
    """``conv`` in float32 against the float64 direct convolution: the output, then the
    gradients of the ``wanted`` leaves among (x, kernel, skip) for a random output gradient."""
    wanted = sorted(i for i in wanted if i < 2 or d is not None)
    leaves = [None if t is None else t.clone().requires_grad_(i in wanted)
              for i, t in enumerate((x, k, d))]  # fmt: skip
    leaves32 = [None if t is None else t.detach().float().requires_grad_(i in wanted)
                for i, t in enumerate((x, k, d))]  # fmt: skip
    want, got = fft_conv_direct(*leaves, modes), conv(*leaves32)
    assert_close_rel(want, got, 2e-6)
    if wanted:
        gy = randn(*want.shape, seed=seed + 3)
        grads = torch.autograd.grad(want, [leaves[i] for i in wanted], gy)
        grads32 = torch.autograd.grad(got, [leaves32[i] for i in wanted], gy.float())
        for w, g in zip(grads, grads32, strict=True):
            assert g.shape == w.shape and g.dtype == torch.float32
            assert_close_rel(w, g, 2e-6)


@settings(max_examples=25, deadline=None)
@given(
    size=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    ksize=st.tuples(st.integers(1, 90), st.integers(1, 90)),
    batch=st.integers(1, 2),
    channels=st.integers(1, 3),
    per_sample=st.booleans(),
    skip=st.booleans(),
    wanted=st.sets(st.sampled_from([0, 1, 2])),
    seed=seeds,
)
def test_fourstep_equals_direct_same_2d_convolution(
    size, ksize, batch, channels, per_sample, skip, wanted, seed
):
    # The CUDA default for two "zero" axes, as its PyTorch math (the Triton kernels compute the
    # same steps), forward and the gradients of a drawn subset of (x, kernel, skip); float32
    # spectra, so the bound is tests/test_fftconv_same2d.py's FP32_BOUND.
    from subq.ops._same_fftconv2d import same_fft_conv2d

    x = randn(batch, channels, *size, seed=seed)
    k = randn(*((batch,) if per_sample else ()), channels, *ksize, seed=seed + 1)
    d = randn(channels, seed=seed + 2) if skip else None
    _check_forward_and_gradients(same_fft_conv2d, x, k, d, ("zero", "zero"), wanted, seed)
