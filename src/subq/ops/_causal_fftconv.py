"""Causal FFT convolution by a twisted four-step transform: the ``fourstep`` backend of ``fft_conv``.

A causal convolution of ``L`` taps over ``L`` samples is the first half of a ``2L``-point linear
convolution. The usual route zero-pads to ``2L`` real points; this one computes it as a
*negacyclic* convolution of length ``2P`` (``P ≥ L``) folded into a cyclic one of ``P`` complex
points. With ``ω = exp(iπ / 2P)``,

``y[n] = Re(ω⁻ⁿ · IDFT_P(DFT_P(x · ωⁿ) · DFT_P(k · ωⁿ))[n])``  for ``n < L``

(the product modulo ``z^P − i``; the imaginary part is the tail ``y[n + P]``, not needed). No
padding is materialised and no half of the output is thrown away.

The ``P``-point DFT runs as a four-step transform with ``P = N1 · N2``, ``N1`` ∈ {8, 16}:
on the row-major ``[N1, N2]`` view, a size-``N1`` DFT down the columns, a twiddle, then size-``N2``
DFTs along the rows. The first step is a few float32 multiply-adds per point (no TF32 rounding)
that fuse with the read of ``x`` (any float dtype) and with the twist
``ωⁿ = ω^(N2·n1) · ω^(n2)``; the second is a batch of short cuFFT transforms, which run near copy
bandwidth (long ones do not). So one call is five passes over memory:

1. twist + column DFT (Triton) of the rows of ``x`` and of the kernel, into one buffer ``S``
   (complex64, ``P`` points per row); the skip is the kernel's lag 0 (``D ⊙ x = (D·δ) ∗ x``);
2. one cuFFT call along the rows of ``S``;
3. the product with the kernel's spectrum (each block of it read once for the whole batch);
4. inverse cuFFT along the rows;
5. conjugate twiddle + inverse column DFT + real part + cast (Triton): → ``y``.

Steps 1, 3 and 5 run as Triton kernels on CUDA (and under ``TRITON_INTERPRET=1``); elsewhere they
run as the same math in PyTorch, so the decomposition is tested on any machine. All spectral math is
float32. Gradients use the same pipeline: ``∂x`` is the time-reversed causal convolution of the
time-reversed output gradient with the kernel, ``∂k`` the same with ``x`` as a per-row kernel; the
two share one buffer, one forward and one inverse cuFFT call, the output gradient's spectrum is
made once, and a shared kernel's gradient is summed over the batch in the frequency domain (one
inverse transform per channel, not per sample). Under ``create_graph`` the gradients go through
the differentiable function instead, so second derivatives work.
"""

from __future__ import annotations

import functools
import math
import os

import torch
from torch import Tensor

__all__ = ["causal_fft_conv_fourstep", "fourstep_plan"]


@functools.lru_cache(maxsize=256)
def fourstep_plan(length: int) -> tuple[int, int]:
    """``(N1, N2)`` for a causal convolution of ``length`` samples: ``N1 · N2 ≥ length`` with
    ``N2`` 2·3·5·7-smooth (a fast cuFFT size); ``N1 = 8`` while ``N2 ≤ 4096``, else 16.

    On the H200, ``N1 = 32`` (``N2 = 4096``) was 2.6x slower than ``N1 = 16`` (``N2 = 8192``) at
    131072 samples: its ``[32, BN]`` float32 tiles no longer fit in registers.
    """
    from subq.ops.fftconv import next_fast_len

    n2 = next_fast_len(-(-length // 8))
    return (8, n2) if n2 <= 4096 else (16, next_fast_len(-(-length // 16)))


@functools.lru_cache(maxsize=32)
def _tables(n1: int, n2: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``G[k1, m1] = exp(−2πi k1 m1 / N1) · ω^(N2 m1)`` (column DFT with the twist) and
    ``T[k1, m2] = exp(−2πi k1 m2 / P) · ω^(m2)`` (twiddle with the twist), complex64, built in
    float64."""
    p = n1 * n2
    a = torch.arange(n1, dtype=torch.float64)
    b = torch.arange(n2, dtype=torch.float64)
    turns_g = -torch.outer(a, a) / n1 + (n2 * a / (4 * p))[None, :]
    turns_t = -torch.outer(a, b) / p + (b / (4 * p))[None, :]
    return tuple(
        torch.polar(torch.ones_like(t), 2 * math.pi * t).to(device=device, dtype=torch.complex64)
        for t in (turns_g, turns_t)
    )


@functools.lru_cache(maxsize=32)
def _real_tables(n1: int, n2: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """:func:`_tables` as float32 ``[..., 2]`` views, as the Triton kernels take them."""
    return tuple(torch.view_as_real(t) for t in _tables(n1, n2, device))


def _use_triton(device: torch.device) -> bool:
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET", "") == "1"


def _twist_dft(
    x: Tensor,
    kernel: Tensor,
    skip: Tensor | None,
    taps: int,
    n1: int,
    n2: int,
    reverse_x: bool = False,
    out: Tensor | None = None,
) -> Tensor:
    """Step 1 on the rows of ``x`` (back to front with ``reverse_x``) and then of ``kernel`` (its
    first ``taps`` lags, ``skip`` added to lag 0, zero beyond):
    ``S[row, k1, m2] = T[k1, m2] · Σ_m1 G[k1, m1] · r[m1 · N2 + m2]``, complex64
    ``[rows(x) + rows(kernel), N1, N2]``, into ``out`` if given."""
    if _use_triton(x.device):
        from subq.ops._causal_fftconv_kernel import twist_dft

        tables = _real_tables(n1, n2, x.device)
        return twist_dft(x, kernel, skip, taps, *tables, n1, n2, reverse_x, out)
    g, t = _tables(n1, n2, x.device)
    k = kernel[..., :taps].float()
    if skip is not None:
        k = torch.cat((k[..., :1] + skip.float()[:, None], k[..., 1:]), dim=-1)
    x = x.float().flip(-1) if reverse_x else x.float()
    rows = [r.reshape(-1, r.shape[-1]) for r in (x, k)]
    r = torch.cat([torch.nn.functional.pad(r, (0, n1 * n2 - r.shape[-1])) for r in rows])
    s = torch.einsum("km,rmn->rkn", g, r.unflatten(-1, (n1, n2)).to(g.dtype)) * t
    return s if out is None else out.copy_(s)


def _untwist_idft(c: Tensor, length: int, out_dtype: torch.dtype, reverse: bool = False) -> Tensor:
    """Step 5: ``y[m1 · N2 + m2] = Re(Σ_k1 conj(G[k1, m1] · T[k1, m2]) · c[k1, m2]) / P`` for
    indices below ``length``, in ``out_dtype`` (``c`` is unscaled), each row back to front with
    ``reverse``."""
    n1, n2 = c.shape[-2:]
    if _use_triton(c.device):
        from subq.ops._causal_fftconv_kernel import untwist_idft

        g, t = _real_tables(n1, n2, c.device)
        return untwist_idft(c, g, t, length, out_dtype, 1.0 / (n1 * n2), reverse)
    g, t = _tables(n1, n2, c.device)
    y = torch.einsum("km,...kn->...mn", g.conj(), c * t.conj()).real / (n1 * n2)
    y = y.flatten(-2)[..., :length]
    return (y.flip(-1) if reverse else y).to(out_dtype)


def _cmul(s: Tensor, h: Tensor) -> Tensor:
    """``s *= h`` in place, ``h``'s rows repeated over ``s``'s leading block axis."""
    if _use_triton(s.device):
        from subq.ops._causal_fftconv_kernel import cmul_

        return cmul_(s, h)
    s.unflatten(0, (-1, h.shape[0])).mul_(h)
    return s


def _cmul_sum(s: Tensor, h: Tensor, per_h: int) -> Tensor:
    """``h[:per_h] = Σ_r s[r] ⊙ h[r]`` over blocks of ``per_h`` rows; returns ``h[:per_h]``."""
    if _use_triton(s.device):
        from subq.ops._causal_fftconv_kernel import cmul_sum_

        return cmul_sum_(s, h, per_h)
    return h[:per_h].copy_((s * h).unflatten(0, (-1, per_h)).sum(0))


def _causal(
    x: Tensor, kernel: Tensor, skip: Tensor | None, out_dtype: torch.dtype | None = None
) -> Tensor:
    """Causal convolution of ``x`` ``[B, C, L]`` by ``kernel`` ``[C, K]`` or ``[B, C, K]``."""
    if x.numel() == 0:  # cuFFT and MKL refuse empty batches
        return torch.zeros(x.shape, dtype=out_dtype or x.dtype, device=x.device)
    length = x.shape[-1]
    n1, n2 = fourstep_plan(length)
    taps = min(kernel.shape[-1], length)  # lags ≥ L never reach an output
    # x · δ is x: the skip is the kernel's lag 0, so step 5 need not read x again. The input's
    # and the kernel's rows share one buffer and one cuFFT call.
    s = torch.fft.fft(_twist_dft(x, kernel, skip, taps, n1, n2), dim=-1)
    s, spec = s[: x.numel() // length], s[x.numel() // length :]
    _cmul(s, spec)
    # norm="forward": no scaling pass here; step 5 divides by P.
    s = torch.fft.ifft(s, dim=-1, norm="forward")
    return _untwist_idft(s, length, out_dtype or x.dtype).view(x.shape)


def _gradients(
    x: Tensor, kernel: Tensor, skip: Tensor | None, grad: Tensor, need_x: bool, need_k: bool
) -> tuple[Tensor | None, Tensor | None]:
    """First-order ``∂x`` and ``∂k`` in one pipeline. Both are causal convolutions of the output
    gradient in reversed time (``∂x[n] = Σ_{m≥n} g[m] k[m−n] + D g[n]``, the skip again the
    kernel's lag 0; ``∂k[j] = Σ_n g[n] x[n−j]``), so the gradient's spectrum is made once, with
    the input's and the kernel's, by one cuFFT call; the first and last kernels reverse time as
    they read and write; the shared kernel's gradient sums its products over the batch before its
    inverse transform."""
    if not (need_x or need_k):  # only the skip's gradient is wanted
        return None, None
    if x.numel() == 0:
        return torch.zeros_like(x), torch.zeros_like(kernel)
    length, k_len = x.shape[-1], kernel.shape[-1]
    n1, n2 = fourstep_plan(length)
    rows = x.numel() // length
    per_k = kernel.numel() // k_len  # C, or B·C for per-sample kernels
    taps = min(k_len, length)  # longer taps never reach an output: zero gradient
    # Buffer rows: [g reversed | x (for ∂k) | kernel (for ∂x)]. The g block and the first per_k
    # rows of the x block are adjacent, so one inverse call serves both gradients.
    n_x = rows if need_k else 0
    buf = torch.empty(
        (rows + n_x + (per_k if need_x else 0), n1, n2), dtype=torch.complex64, device=x.device
    )
    x_src = x if need_k else x.new_empty(0, 1)
    _twist_dft(grad, x_src, None, length, n1, n2, reverse_x=True, out=buf[: rows + n_x])
    if need_x:
        _twist_dft(kernel.new_empty(0, 1), kernel, skip, taps, n1, n2, out=buf[rows + n_x :])
    spec = torch.fft.fft(buf, dim=-1)
    del buf
    g_spec = spec[:rows]
    if need_k:  # before ∂x's product overwrites g's spectrum
        _cmul_sum(g_spec, spec[rows : 2 * rows], per_k)
    if need_x:
        _cmul(g_spec, spec[rows + n_x :])
    lo, hi = (0 if need_x else rows), rows + (per_k if need_k else 0)
    inv = torch.fft.ifft(spec[lo:hi], dim=-1, norm="forward")
    gx = gk = None
    if need_x:
        gx = _untwist_idft(inv[:rows], length, x.dtype, reverse=True).view(x.shape)
    if need_k:
        corr = _untwist_idft(inv[hi - lo - per_k :], length, torch.float32, reverse=True)
        gk = torch.nn.functional.pad(corr[:, :taps], (0, k_len - taps))
        gk = gk.to(kernel.dtype).view(kernel.shape)
    return gx, gk


def _differentiable_gradients(
    x: Tensor, kernel: Tensor, skip: Tensor | None, grad: Tensor, need_x: bool, need_k: bool
) -> tuple[Tensor | None, Tensor | None]:
    """:func:`_gradients` as differentiable causal convolutions, for ``create_graph``."""
    k_len = kernel.shape[-1]
    g_rev = grad.float().flip(-1)
    gx = gk = None
    if need_x:
        gx = causal_fft_conv_fourstep(g_rev, kernel, None).flip(-1)
        if skip is not None:
            gx = gx + skip.float()[:, None] * grad.float()
        gx = gx.to(x.dtype)
    if need_k:
        corr = causal_fft_conv_fourstep(g_rev, x, None)
        if kernel.dim() == 2:
            corr = corr.sum(0)
        corr = corr.flip(-1)[..., :k_len]
        gk = torch.nn.functional.pad(corr, (0, k_len - corr.shape[-1])).to(kernel.dtype)
    return gx, gk


class _CausalConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, kernel: Tensor, skip: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, kernel, skip)
        return _causal(x, kernel, skip)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, kernel, skip = ctx.saved_tensors
        need_x, need_k = ctx.needs_input_grad[:2]
        # Under create_graph each gradient goes through the public function, which records its
        # own graph (second derivatives); otherwise both share one pipeline.
        grads = _differentiable_gradients if torch.is_grad_enabled() else _gradients
        gx, gk = grads(x, kernel, skip, grad, need_x, need_k)
        gskip = None
        if skip is not None and ctx.needs_input_grad[2]:
            gskip = (grad.float() * x.float()).sum((0, 2)).to(skip.dtype)
        return gx, gk, gskip


def causal_fft_conv_fourstep(x: Tensor, kernel: Tensor, skip: Tensor | None) -> Tensor:
    """Causal depthwise convolution of ``x`` ``[B, C, L]`` by ``kernel`` ``[C, K]`` (or per sample
    ``[B, C, K]``), plus ``skip ⊙ x``; differentiable in all three."""
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, kernel, skip)
    ):
        return _CausalConv.apply(x, kernel, skip)
    return _causal(x, kernel, skip)
