"""Depthwise long convolution by FFT, in 1D/2D/3D, with causal, zero and circular boundaries.

See :mod:`subq.ops.fftconv` for the exact semantics of each mode and the choice of FFT sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

from subq._typing import Float, shapecheck
from subq.ops.fftconv import MODES, fft_conv_op, fft_conv_plan, next_fast_len

__all__ = ["fft_conv", "fft_conv_flops", "next_fast_len", "normalize_modes"]


def normalize_modes(mode: str | Sequence[str], ndim: int, *, where: str = "fft_conv") -> tuple:
    """Validate ``mode`` (one string or one per spatial axis) and return one per axis.

    Raises:
        ValueError: unknown mode, wrong number of modes, or ``"causal"`` with more than one axis.
    """
    modes = (mode,) * ndim if isinstance(mode, str) else tuple(mode)
    if len(modes) != ndim:
        raise ValueError(
            f"{where}: mode must be one string or one per spatial axis ({ndim}), got {mode!r}"
        )
    for m in modes:
        if m not in MODES:
            raise ValueError(f"{where}: mode must be one of {list(MODES)}, got {m!r}")
    if "causal" in modes and ndim != 1:
        raise ValueError(
            f"{where}: mode 'causal' needs exactly one spatial axis, got {ndim} axes with "
            f"modes {modes!r}"
        )
    return modes


@shapecheck
def fft_conv(
    x: Float[Tensor, "..."],
    kernel: Float[Tensor, "..."],
    skip: Float[Tensor, " c"] | None = None,
    *,
    mode: str | Sequence[str] = "causal",
    channels_last: bool = False,
    chunk_size: int | None = None,
    backend: str | None = None,
) -> Float[Tensor, "..."]:
    """Depthwise convolution of ``x`` by a per-channel ``kernel``, plus ``skip ⊙ x``.

    Args:
        x: ``[B, C, *spatial]`` (or ``[B, *spatial, C]`` with ``channels_last``), 1 to 3 spatial
            axes of any length.
        kernel: ``[C, *K]`` shared over the batch, or ``[B, C, *K]`` per sample (FiLM). ``K`` may
            be shorter or longer than the input along any axis.
        skip: per-channel ``D`` of the skip term ``D ⊙ x``, or None.
        mode: ``"causal"`` (1D only), ``"zero"`` ("same" linear convolution) or ``"circular"``,
            or one of ``"zero"``/``"circular"`` per axis.
        channels_last: ``x`` and the output are ``[B, *spatial, C]``.
        chunk_size: convolve this many channels at a time to bound peak memory.
        backend: force a backend of the ``fft_conv`` op; None lets the dispatcher choose.

    Returns:
        The convolution, in ``x``'s dtype and layout. Spectral math runs in float32 or better.

    Example:
        >>> import torch
        >>> x = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])
        >>> y = fft_conv(x, torch.tensor([[1.0, 0.5]]), mode="causal")
        >>> [round(v, 4) + 0.0 for v in y.flatten().tolist()]
        [1.0, 0.5, 0.0, 0.0]
    """
    if x.ndim < 3 or x.ndim > 5:
        raise ValueError(
            f"fft_conv: x must have 1 to 3 spatial axes ([B, C, *spatial]), got shape "
            f"{tuple(x.shape)}"
        )
    nd = x.ndim - 2
    modes = normalize_modes(mode, nd)
    if channels_last:
        x = x.movedim(-1, 1)
    channels = x.shape[1]
    if kernel.ndim not in (nd + 1, nd + 2):
        raise ValueError(
            f"fft_conv: kernel must be [C, *K] or [B, C, *K] with {nd} spatial axes like x "
            f"(rank {nd + 1} or {nd + 2}), got rank {kernel.ndim} (shape {tuple(kernel.shape)})"
        )
    if min(kernel.shape[-nd:]) < 1:
        raise ValueError(
            f"fft_conv: kernel needs at least one tap along each spatial axis, got kernel of "
            f"shape {tuple(kernel.shape)}"
        )
    if kernel.shape[-nd - 1] != channels:
        raise ValueError(
            f"fft_conv: kernel channels must equal x's channels {channels}, got kernel of shape "
            f"{tuple(kernel.shape)}"
        )
    if kernel.ndim == nd + 2 and kernel.shape[0] != x.shape[0]:
        raise ValueError(
            f"fft_conv: a per-sample kernel's batch must equal x's batch {x.shape[0]}, got "
            f"kernel of shape {tuple(kernel.shape)}"
        )
    if skip is not None and tuple(skip.shape) != (channels,):
        raise ValueError(
            f"fft_conv: skip must be [C] = [{channels}], got shape {tuple(skip.shape)}"
        )
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size <= 0):
        raise ValueError(f"fft_conv: chunk_size must be a positive int or None, got {chunk_size!r}")
    facts = {
        "device": x.device,
        "dtype": x.dtype,
        "modes": modes,
        "shape": tuple(x.shape),
        "length": x.shape[-1],
        "spatial": tuple(x.shape[2:]),
        "kernel_dtype": kernel.dtype,
    }
    run = fft_conv_op.select(facts, backend)
    if x.numel() == 0:
        # An empty batch, channel set or axis (cuFFT and MKL refuse empty batches): zeros that
        # still depend on kernel and skip, so their gradients are zeros, not an error.
        y = x * 0 + kernel.sum() * 0 + (0 if skip is None else skip.sum() * 0)
    else:
        y = run(x, kernel, skip, modes, chunk_size)
    return y.movedim(1, -1) if channels_last else y


def fft_conv_flops(
    channels: int, spatial: Sequence[int], kernel_sizes: Sequence[int], modes: Sequence[str]
) -> float:
    """FLOPs of one sample's FFT convolution without the skip: the kernel's and the input's
    real FFTs, the complex product (6 per frequency) and the inverse FFT, on every channel.

    A real FFT of size ``n`` counts ``2.5 n log₂ n``, at the sizes :func:`fft_conv` uses.
    """
    plans = fft_conv_plan(spatial, kernel_sizes, modes)
    n_fft = math.prod(p.fft_size for p in plans)
    n_freq = n_fft // plans[-1].fft_size * (plans[-1].fft_size // 2 + 1)
    rfft = 2.5 * n_fft * math.log2(max(n_fft, 2))
    return channels * (3 * rfft + 6 * n_freq)
