"""Zero-padded ("same") 2D FFT convolution by a folded four-step transform: the ``fourstep``
backend of ``fft_conv`` for two ``"zero"`` axes.

The primitive is a *window* of the linear convolution: per axis,
``y[n] = Σ_j x[j] · k[n + s0 − j]`` for ``n < M``; ``"same"`` is ``s0 = K // 2``, ``M = N``, and
both gradients are windows too (of the output gradient with the flipped kernel, and with the
flipped input as a per-sample kernel). A window is exact on any periodic buffer of size
``S ≥ max(N + K − 1 − s0, s0 + M)`` per axis once the kernel is stored with tap ``m`` at
``(m − s0) mod S`` (nothing wraps onto the window), and it stays exact if the wrap carries a sign
(a *negacyclic* convolution, modulo ``z^S + 1``): the taps stored past the end get negated.

That freedom pays along the last axis (W): a real negacyclic convolution of ``S_W = 2Q`` points
is a cyclic one of ``Q`` complex points, ``b[j] + i · b[j + Q]`` twisted by ``ω^j``,
``ω = exp(iπ / 2Q)`` (as in :mod:`subq.ops._causal_fftconv`); so no Hermitian half-spectrum is
needed and both halves of the output come back as the real and imaginary parts. Along H the
transform is a plain cyclic DFT of ``S_H = N1 · N2`` points (``N1 = 8``) run four-step: a
size-``N1`` DFT down the columns of the ``[N1, N2]`` view, fused in one Triton kernel with the read
of the input (any float dtype, shift, sign, fold and both twiddles), then a 2D cuFFT over
``[N2, Q]``. So a call is five passes over a ``[N1, N2, Q]`` complex64 buffer per plane:

1. read + fold + column DFT + twiddles (Triton): ``x`` → ``S``;
2. ``fft2`` over ``[N2, Q]`` (cuFFT);
3. the product with the kernel's spectrum (made by steps 1–2, once per call);
4. ``ifft2``;
5. twiddles + inverse column DFT + unfold + ``D ⊙ x`` + cast (Triton): → ``y``.

Off CUDA (and outside ``TRITON_INTERPRET=1``) steps 1, 3 and 5 run as the same math in PyTorch,
so the decomposition is tested on any machine. All spectral math is float32.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from subq.ops._causal_fftconv import _cmul, _cmul_sum, _use_triton

__all__ = ["same_fft_conv2d", "window_fft_conv2d", "window_plan"]

#: Size of the column DFT along H (as in the 1D kernels: float32 multiply-adds in registers).
N1 = 8


def window_plan(
    n: tuple[int, int], k: tuple[int, int], s0: tuple[int, int], m: tuple[int, int], n1: int = N1
) -> tuple[int, int, int]:
    """``(N1, N2, Q)`` for a window of ``m`` outputs from ``s0`` of ``n`` samples by ``k`` taps:
    ``S_H = N1 · N2`` and ``S_W = 2 · Q`` cover the exact size per axis; ``N2``, ``Q`` are
    2·3·5·7-smooth (fast cuFFT sizes)."""
    from subq.ops.fftconv import next_fast_len

    # The buffer also holds the whole input, kernel and window (s0 may be negative).
    need = [max(a + b - 1 - s, s + o, a, b, o) for a, b, s, o in zip(n, k, s0, m)]
    return n1, next_fast_len(-(-need[0] // n1)), next_fast_len(-(-need[1] // 2))


@functools.lru_cache(maxsize=32)
def _tables(n1: int, n2: int, q: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``G[k1, m1] = exp(−2πi k1 m1 / N1)`` (column DFT) and
    ``T[k1, m2 · Q + j] = exp(−2πi k1 m2 / S_H) · ω^j`` (four-step twiddle with the W twist),
    complex64, built in float64."""
    a = torch.arange(n1, dtype=torch.float64)
    m2 = torch.arange(n2, dtype=torch.float64)
    j = torch.arange(q, dtype=torch.float64)
    turns_g = -torch.outer(a, a) / n1
    turns_t = -a[:, None, None] * m2[None, :, None] / (n1 * n2) + j[None, None, :] / (4 * q)
    return tuple(
        torch.polar(torch.ones_like(t), 2 * math.pi * t).to(device=device, dtype=torch.complex64)
        for t in (turns_g, turns_t.reshape(n1, n2 * q))
    )


def _source(size: int, shift: int, n: int, device: torch.device):
    """Per buffer index: the input index it holds (clamped), whether it holds one, and whether
    it wrapped (``index + shift ≥ size``; negated when the wrap is negacyclic)."""
    src = torch.arange(size, device=device) + shift
    wrapped = src >= size
    src = torch.where(wrapped, src - size, src)
    ok = (src >= 0) & (src < n)
    return src.clamp(0, n - 1), ok, wrapped


def _fold_dft(planes: Tensor, shift: tuple[int, int], plan: tuple[int, int, int]) -> Tensor:
    """Step 1 on ``planes`` ``[..., Hin, Win]``: the periodic buffer ``b`` (``planes[i + sh, j + sw]``
    at ``(i, j)``, cyclic along H, negacyclic along W), folded to ``b[:, :Q] + i · b[:, Q:]``, then
    the column DFT and twiddles: complex64 ``[..., N1, N2, Q]``."""
    n1, n2, q = plan
    g, t = _tables(n1, n2, q, planes.device)
    if _use_triton(planes.device):
        from subq.ops._same_fftconv2d_kernel import fold_dft

        return fold_dft(planes, shift, g, t, n2, q)
    b = planes.float()
    for axis, (size, sign) in enumerate(((n1 * n2, 1.0), (2 * q, -1.0))):
        src, ok, wrapped = _source(size, shift[axis], b.shape[axis - 2], b.device)
        scale = torch.where(wrapped, sign, 1.0) * ok
        b = b.index_select(axis - 2, src) * scale.view(-1, *([1] * (1 - axis)))
    z = torch.complex(b[..., :q], b[..., q:]).unflatten(-2, (n1, n2))
    return torch.einsum("km,...mnj->...knj", g, z) * t.view(n1, n2, q)


def _unfold_idft(
    c: Tensor, x: Tensor | None, skip: Tensor | None, out: tuple[int, int], out_dtype: torch.dtype
) -> Tensor:
    """Step 5: ``u[m1 · N2 + m2, j] = Σ_k1 conj(G[k1, m1] · T[k1, m2, j]) · c[k1, m2, j] / (S_H Q)``,
    then ``y[:, j] = Re u``, ``y[:, j + Q] = Im u``, cropped to ``out``, plus ``skip ⊙ x`` (``x``
    is read only for the skip term)."""
    n1, n2, q = c.shape[-3:]
    g, t = _tables(n1, n2, q, c.device)
    scale = 1.0 / (n1 * n2 * q)
    if _use_triton(c.device):
        from subq.ops._same_fftconv2d_kernel import unfold_idft

        return unfold_idft(c, x, skip, g, t, out, out_dtype, scale)
    u = torch.einsum("km,...knj->...mnj", g.conj(), c * t.conj().view(n1, n2, q)) * scale
    u = u.flatten(-3, -2)
    y = torch.cat((u.real, u.imag), dim=-1)[..., : out[0], : out[1]]
    if skip is not None:
        y = y + skip.float()[:, None, None] * x.float()
    return y.to(out_dtype)


def _spectrum(planes: Tensor, shift: tuple[int, int], plan: tuple[int, int, int]) -> Tensor:
    """Steps 1–2: the spectrum of the shifted, folded ``planes`` in the four-step order."""
    return torch.fft.fft2(_fold_dft(planes, shift, plan))


def _reach(
    kernel: Tensor, s0: tuple[int, int], n: tuple[int, int], out: tuple[int, int]
) -> tuple[Tensor, tuple[int, int]]:
    """``kernel`` without the taps that cannot reach the window, and the window's start in it
    (so the buffer never holds two taps at once)."""
    shift = []
    for axis in range(2):
        d = kernel.ndim - 2 + axis
        lo = min(max(0, s0[axis] - (n[axis] - 1)), kernel.shape[d])
        hi = max(min(kernel.shape[d], s0[axis] + out[axis]), lo)
        kernel = kernel.narrow(d, lo, hi - lo)
        shift.append(s0[axis] - lo)
    return kernel, (shift[0], shift[1])


def _plan(
    n: tuple[int, int], windows: list[tuple[Tensor, tuple[int, int], tuple[int, int]]]
) -> tuple[int, int, int]:
    """One plan exact for every ``(kernel, shift, out)`` window of an ``n``-sized input."""
    plans = [window_plan(n, tuple(k.shape[-2:]), shift, out, N1) for k, shift, out in windows]
    n1, n2, q = (max(sizes) for sizes in zip(*plans, strict=True))
    return n1, n2, q


def _spectra_product(s: Tensor, h: Tensor) -> Tensor:
    """``s *= h`` in place over ``[..., N1, N2, Q]`` spectra, ``h`` shared over ``s``'s batch."""
    return _cmul(s.flatten(0, -4), h.flatten(0, -4))


def _window(
    x: Tensor,
    kernel: Tensor,
    s0: tuple[int, int],
    out: tuple[int, int],
    skip: Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    out_dtype = out_dtype or x.dtype
    n = (x.shape[-2], x.shape[-1])
    k, shift = _reach(kernel, s0, n, out)
    if x.numel() == 0 or k.numel() == 0:
        y = x.new_zeros((*x.shape[:-2], *out), dtype=torch.float32)
        if skip is not None:
            y = y + skip.float()[:, None, None] * x.float()
        return y.to(out_dtype)
    plan = _plan(n, [(k, shift, out)])
    s = _spectrum(x, (0, 0), plan)
    _spectra_product(s, _spectrum(k, shift, plan))
    # norm="forward": no scaling pass here; step 5 divides by S_H · Q.
    return _unfold_idft(torch.fft.ifft2(s, norm="forward"), x, skip, out, out_dtype)


def _gradient_windows(
    x: Tensor, kernel: Tensor, s0: tuple[int, int]
) -> tuple[tuple[tuple[int, int], tuple[int, int]], tuple[tuple[int, int], tuple[int, int]]]:
    """``(start, size)`` of the windows that give ``∂x`` (the output gradient with the flipped
    kernel) and ``∂k`` (with the flipped input as a per-sample kernel). Per axis:
    ``∂x[j] = Σ_n g[n] k[n + s0 − j] = (g ∗ flip k)[j + K − 1 − s0]``,
    ``∂k[m] = Σ_n g[n] x[n + s0 − m] = (g ∗ flip x)[m + N − 1 − s0]``."""
    n, k = tuple(x.shape[-2:]), tuple(kernel.shape[-2:])
    s_x = (k[0] - 1 - s0[0], k[1] - 1 - s0[1])
    s_k = (n[0] - 1 - s0[0], n[1] - 1 - s0[1])
    return (s_x, n), (s_k, k)


def _gradients(
    x: Tensor, kernel: Tensor, skip: Tensor | None, s0: tuple[int, int], grad: Tensor,
    need_x: bool, need_k: bool,
) -> tuple[Tensor | None, Tensor | None]:  # fmt: skip
    """First-order ``∂x`` and ``∂k`` in one pipeline: both windows take the output gradient as
    their input, so one plan serves both and the gradient's spectrum is made once; a shared
    kernel's gradient sums its products over the batch before its inverse transform."""
    if not (need_x or need_k):  # only the skip's gradient is wanted
        return None, None
    (s_x, out_x), (s_k, out_k) = _gradient_windows(x, kernel, s0)
    n = (x.shape[-2], x.shape[-1])
    kx, shift_x = _reach(kernel.flip(-2, -1), s_x, n, out_x)
    xk, shift_k = _reach(x.flip(-2, -1), s_k, n, out_k)
    if grad.numel() == 0 or kx.numel() == 0 or xk.numel() == 0:  # zero windows: plain path
        return _differentiable_gradients(x, kernel, skip, s0, grad, need_x, need_k)
    windows = [(kx, shift_x, out_x)] * need_x + [(xk, shift_k, out_k)] * need_k
    plan = _plan(n, windows)
    g_spec = _spectrum(grad, (0, 0), plan)
    gx = gk = None
    if need_k:  # before ∂x's product overwrites the gradient's spectrum
        per_k = kernel.numel() // (kernel.shape[-2] * kernel.shape[-1])  # C, or B·C per sample
        x_spec = _spectrum(xk, shift_k, plan).flatten(0, -4)
        k_spec = _cmul_sum(g_spec.flatten(0, -4), x_spec, per_k)
        k_spec = torch.fft.ifft2(k_spec, norm="forward")
        gk = _unfold_idft(k_spec, None, None, out_k, torch.float32)
        gk = gk.view(kernel.shape).to(kernel.dtype)
    if need_x:
        _spectra_product(g_spec, _spectrum(kx, shift_x, plan))
        gx = _unfold_idft(torch.fft.ifft2(g_spec, norm="forward"), grad, skip, out_x, x.dtype)
    return gx, gk


def _differentiable_gradients(
    x: Tensor, kernel: Tensor, skip: Tensor | None, s0: tuple[int, int], grad: Tensor,
    need_x: bool, need_k: bool,
) -> tuple[Tensor | None, Tensor | None]:  # fmt: skip
    """:func:`_gradients` as differentiable windows, for ``create_graph``."""
    (s_x, out_x), (s_k, out_k) = _gradient_windows(x, kernel, s0)
    gx = gk = None
    if need_x:
        gx = window_fft_conv2d(grad, kernel.flip(-2, -1), None, s_x, out_x, torch.float32)
        if skip is not None:
            gx = gx + skip.float()[:, None, None] * grad.float()
        gx = gx.to(x.dtype)
    if need_k:
        gk = window_fft_conv2d(grad, x.flip(-2, -1), None, s_k, out_k, torch.float32)
        if kernel.dim() == 3:
            gk = gk.sum(0)
        gk = gk.to(kernel.dtype)
    return gx, gk


class _WindowConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel, skip, s0, out, out_dtype):
        ctx.save_for_backward(x, kernel, skip)
        ctx.s0 = s0
        return _window(x, kernel, s0, out, skip, out_dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, kernel, skip = ctx.saved_tensors
        need_x, need_k = ctx.needs_input_grad[:2]
        # Under create_graph each gradient goes through the public function, which records its
        # own graph (second derivatives); otherwise both share one pipeline.
        grads = _differentiable_gradients if torch.is_grad_enabled() else _gradients
        gx, gk = grads(x, kernel, skip, ctx.s0, grad, need_x, need_k)
        gskip = None
        if skip is not None and ctx.needs_input_grad[2]:
            gskip = (grad.float() * x.float()).sum((0, 2, 3)).to(skip.dtype)
        return gx, gk, gskip, None, None, None


def window_fft_conv2d(
    x: Tensor,
    kernel: Tensor,
    skip: Tensor | None,
    s0: tuple[int, int],
    out: tuple[int, int],
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """``y[b, c, n] = Σ_j x[b, c, j] · kernel[c, n + s0 − j]`` per axis for ``n < out``, plus
    ``skip ⊙ x`` (only when ``out`` is ``x``'s size); ``kernel`` is ``[C, Kh, Kw]`` or per sample
    ``[B, C, Kh, Kw]``; the result is in ``out_dtype`` (default ``x``'s). Differentiable in ``x``,
    ``kernel`` and ``skip``.

    Raises:
        ValueError: ranks or channels that do not match, a window size below 1, or a skip term
            with a window other than ``x``'s size.
    """
    _check(x, kernel, skip, out)
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, kernel, skip)
    ):
        return _WindowConv.apply(x, kernel, skip, tuple(s0), tuple(out), out_dtype)
    return _window(x, kernel, tuple(s0), tuple(out), skip, out_dtype)


def _check(x: Tensor, kernel: Tensor, skip: Tensor | None, out: tuple[int, int]) -> None:
    where = "window_fft_conv2d"
    if x.ndim != 4 or kernel.ndim not in (3, 4):
        raise ValueError(
            f"{where}: x must be [B, C, H, W] and kernel [C, Kh, Kw] or [B, C, Kh, Kw], got "
            f"shapes {tuple(x.shape)} and {tuple(kernel.shape)}"
        )
    want = tuple(x.shape[:2]) if kernel.ndim == 4 else (x.shape[1],)
    if tuple(kernel.shape[:-2]) != want:
        raise ValueError(
            f"{where}: kernel's leading axes must be {list(want)} (x is {tuple(x.shape)}), got "
            f"kernel of shape {tuple(kernel.shape)}"
        )
    if len(out) != 2 or min(out) < 1:
        raise ValueError(f"{where}: out must be two sizes ≥ 1, got {out!r}")
    if skip is not None and (tuple(skip.shape) != (x.shape[1],) or tuple(out) != x.shape[2:]):
        raise ValueError(
            f"{where}: skip must be [C] = [{x.shape[1]}] with out equal to x's size "
            f"{tuple(x.shape[2:])}, got skip of shape {tuple(skip.shape)} and out={out!r}"
        )


def same_fft_conv2d(x: Tensor, kernel: Tensor, skip: Tensor | None) -> Tensor:
    """``fft_conv(x, kernel, skip, mode="zero")`` for ``x`` ``[B, C, H, W]``: the centred
    ("same") linear convolution, tap ``K // 2`` at offset 0, by the folded four-step transform."""
    s0 = (kernel.shape[-2] // 2, kernel.shape[-1] // 2)
    return window_fft_conv2d(x, kernel, skip, s0, tuple(x.shape[-2:]))
