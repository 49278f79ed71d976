"""Triton kernels of the four-step causal FFT convolution (steps 1, 3 and 5 of
:mod:`subq.ops._causal_fftconv`). Imported only when those steps run on CUDA or under the
Triton interpreter.

Both kernels own an ``[N1, BN]`` tile of one row's ``[N1, N2]`` view: the size-``N1`` DFT is
``N1`` rounds of float32 multiply-adds over the tile (``N1 ≤ 32``: cheaper than a tensor-core
product at this size, and no TF32 rounding of the operands), fused with the row's read or write.

Every kernel here runs its programs in reverse row order. cuFFT walks its batch forwards, so the
rows a kernel touches last, still in L2, are the ones the next cuFFT call reads first, and the
rows cuFFT wrote last are the ones the next kernel reads first (4% at B4 × C1024 × 4096 on the
H200, same output bit for bit).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["cmul_", "cmul_sum_", "twist_dft", "untwist_idft"]


@triton.jit
def _tile(n2_size, N1: tl.constexpr, BN: tl.constexpr):
    # This program's row and column block m2, the column-DFT index, the in-row mask, and the
    # offsets of a complex number's two floats. Programs run in reverse order (see module doc).
    row = tl.num_programs(0) - 1 - tl.program_id(0).to(tl.int64)
    m2 = (tl.num_programs(1) - 1 - tl.program_id(1)) * BN + tl.arange(0, BN)
    pair = tl.arange(0, 2)[None, :]
    return row, m2, tl.arange(0, N1), m2 < n2_size, pair


@triton.jit
def _g_row(G, k1, m1, N1: tl.constexpr):
    # G[k1, m1] for all m1: real and imaginary parts.
    off = (k1 * N1 + m1) * 2
    return tl.load(G + off), tl.load(G + off + 1)


@triton.jit
def _t_row(T, off, in_row, pair):
    # T at flat offsets ``off`` (one row k1): real and imaginary parts.
    return tl.split(tl.load(T + off[:, None] * 2 + pair, mask=in_row[:, None], other=0.0))


@triton.jit
def _untwiddled(C, T, base, off, in_row, pair):
    # conj(T) · c at flat offsets ``off`` of one row k1 (c read from ``base + off``): real and
    # imaginary parts, the inverse transform's first product.
    c = tl.load(C + (base + off)[:, None] * 2 + pair, mask=in_row[:, None])
    cr, ci = tl.split(c)
    tr, ti = _t_row(T, off, in_row, pair)
    return cr * tr + ci * ti, ci * tr - cr * ti


@triton.jit
def _twist_dft_kernel(
    X, K, SKIP, S, G, T,
    x_rows, k_channels, x_len, k_len, taps, n2_size,
    HAS_SKIP: tl.constexpr, REV_X: tl.constexpr, N1: tl.constexpr, BN: tl.constexpr,
):  # fmt: skip
    # Rows below ``x_rows`` read x (back to front with REV_X), the rest the kernel (with the
    # skip added to its lag 0).
    row, m2, m1, in_row, pair = _tile(n2_size, N1, BN)
    n = m1[:, None] * n2_size + m2[None, :]
    if row < x_rows:
        keep = in_row[None, :] & (n < x_len)
        src = x_len - 1 - n if REV_X else n
        x = tl.load(X + row * x_len + src, mask=keep, other=0.0).to(tl.float32)  # [m1, m2]
    else:
        keep = in_row[None, :] & (n < taps)
        x = tl.load(K + (row - x_rows) * k_len + n, mask=keep, other=0.0).to(tl.float32)
        if HAS_SKIP:
            d = tl.load(SKIP + (row - x_rows) % k_channels).to(tl.float32)
            x += tl.where(n == 0, d, 0.0)
    # One output row k1 at a time: s[k1, m2] = T[k1, m2] · Σ_m1 G[k1, m1] · x[m1, m2].
    for k1 in tl.static_range(N1):
        gr, gi = _g_row(G, k1, m1, N1)
        ar = tl.sum(gr[:, None] * x, axis=0)
        ai = tl.sum(gi[:, None] * x, axis=0)
        off = k1 * n2_size + m2
        tr, ti = _t_row(T, off, in_row, pair)
        out = tl.join(ar * tr - ai * ti, ar * ti + ai * tr)
        tl.store(S + (row * N1 * n2_size + off)[:, None] * 2 + pair, out, mask=in_row[:, None])


@triton.jit
def _spectral_block(per_h, n_per_row, BLOCK: tl.constexpr):
    # The products' tile: row h of the ``per_h`` rows that every block r repeats, its entries i,
    # their mask and a complex number's two float offsets; in reverse order like the others.
    h = per_h - 1 - tl.program_id(0).to(tl.int64)
    i = (tl.num_programs(1) - 1 - tl.program_id(1)) * BLOCK + tl.arange(0, BLOCK)
    return h, i, (i < n_per_row)[:, None], tl.arange(0, 2)[None, :]


@triton.jit
def _cmul_kernel(S, H, reps, per_h, n_per_row, BLOCK: tl.constexpr):
    # S[r · per_h + h] *= H[h] for every r, complex, in place: each block of H is read once.
    h, i, keep, pair = _spectral_block(per_h, n_per_row, BLOCK)
    hr, hi = tl.split(tl.load(H + (h * n_per_row + i)[:, None] * 2 + pair, mask=keep))
    r = reps
    while r > 0:  # not range(reps): older Triton interpreters cannot index with a runtime bound
        r -= 1
        s_ptr = S + ((r * per_h + h) * n_per_row + i)[:, None] * 2 + pair
        sr, si = tl.split(tl.load(s_ptr, mask=keep, other=0.0))
        tl.store(s_ptr, tl.join(sr * hr - si * hi, sr * hi + si * hr), mask=keep)


@triton.jit
def _cmul_sum_kernel(S, H, reps, per_h, n_per_row, BLOCK: tl.constexpr):
    # H[h] = Σ_r S[r · per_h + h] · H[r · per_h + h], complex, into H's first ``per_h`` rows.
    h, i, keep, pair = _spectral_block(per_h, n_per_row, BLOCK)
    acc_r = tl.zeros([BLOCK], dtype=tl.float32)
    acc_i = tl.zeros([BLOCK], dtype=tl.float32)
    r = reps
    while r > 0:
        r -= 1
        off = ((r * per_h + h) * n_per_row + i)[:, None] * 2 + pair
        sr, si = tl.split(tl.load(S + off, mask=keep, other=0.0))
        hr, hi = tl.split(tl.load(H + off, mask=keep, other=0.0))
        acc_r += sr * hr - si * hi
        acc_i += sr * hi + si * hr
    tl.store(H + (h * n_per_row + i)[:, None] * 2 + pair, tl.join(acc_r, acc_i), mask=keep)


@triton.jit
def _untwist_idft_kernel(
    C, Y, G, T, length, n2_size, scale, REV: tl.constexpr, N1: tl.constexpr, BN: tl.constexpr,
):  # fmt: skip
    # With REV, each row is written back to front.
    row, m2, m1, in_row, pair = _tile(n2_size, N1, BN)
    y = tl.zeros([N1, BN], dtype=tl.float32)
    # Inverse column DFT as N1 outer products: y[m1, m2] += Re(conj(G[k1, m1] T[k1, m2]) c[k1, m2]).
    for k1 in tl.static_range(N1):
        dr, di = _untwiddled(C, T, row * N1 * n2_size, k1 * n2_size + m2, in_row, pair)
        gr, gi = _g_row(G, k1, m1, N1)
        y += gr[:, None] * dr[None, :] + gi[:, None] * di[None, :]
    n = m1[:, None] * n2_size + m2[None, :]
    keep = in_row[None, :] & (n < length)
    dst = length - 1 - n if REV else n
    tl.store(Y + row * length + dst, (y * scale).to(Y.dtype.element_ty), mask=keep)


@functools.lru_cache(maxsize=256)
def _launch(rows: int, n1: int, n2: int, elem_size: int) -> tuple[tuple[int, int], int, int]:
    """(grid, column block, warps) for an ``[N1, BN]`` tile read as ``elem_size``-byte values.

    The tile is as wide as the warps' 16-byte vector loads cover side by side, so each thread
    holds whole columns and the sum over ``m1`` (twist) stays in registers; a narrower tile puts
    warps on top of each other and the sum goes through shared memory (3-6x slower for bf16).
    Plain integer math (cached): at 4096 samples a call's host time is as long as its GPU time.
    """
    vec = 16 // elem_size
    block = min(1 << (n2 - 1).bit_length(), 4 * 32 * vec, 8192 // n1)
    # Few rows (small batches and channel counts): narrower tiles, so that every SM gets several
    # programs; a tile stays at least one warp's vector width.
    while rows * -(-n2 // block) < 4096 and block > 32 * vec:
        block //= 2
    warps = max(1, min(4, block // (32 * vec)))
    return (rows, -(-n2 // block)), block, warps


def twist_dft(
    x: Tensor,
    kernel: Tensor,
    skip: Tensor | None,
    taps: int,
    g: Tensor,
    t: Tensor,
    n1: int,
    n2: int,
    reverse_x: bool = False,
    out: Tensor | None = None,
) -> Tensor:
    """Step 1 for the rows of ``x`` ``[..., L]`` (back to front with ``reverse_x``) followed by the
    kernel's rows (first ``taps`` entries, ``skip`` added to lag 0): complex64
    ``[rows(x) + rows(kernel), N1, N2]``, into ``out`` if given. ``g`` and ``t`` are the tables as
    float32 ``[..., 2]`` views."""
    x, kernel = x.contiguous(), kernel.contiguous()
    x_rows = x.numel() // max(x.shape[-1], 1)
    rows = x_rows + kernel.numel() // max(kernel.shape[-1], 1)
    if out is None:
        out = torch.empty((rows, n1, n2), dtype=torch.complex64, device=x.device)
    # Sized for the narrower of the two dtypes: a bf16 tile under a launch sized for float32
    # splits the m1-sum across threads (6x slower, measured).
    grid, block, warps = _launch(rows, n1, n2, min(x.element_size(), kernel.element_size()))
    _twist_dft_kernel[grid](
        x, kernel, skip.contiguous() if skip is not None else kernel, torch.view_as_real(out), g, t,
        x_rows, kernel.shape[-2], x.shape[-1], kernel.shape[-1], taps, n2,
        HAS_SKIP=skip is not None, REV_X=reverse_x, N1=n1, BN=block, num_warps=warps,
    )  # fmt: skip
    return out


def untwist_idft(
    c: Tensor,
    g: Tensor,
    t: Tensor,
    length: int,
    out_dtype: torch.dtype,
    scale: float,
    reverse: bool = False,
) -> Tensor:
    """Step 5: ``[..., N1, N2]`` complex64 → ``[..., length]`` in ``out_dtype``, each row back to
    front with ``reverse`` (tables as in :func:`twist_dft`)."""
    n1, n2 = c.shape[-2:]
    c = c.contiguous()
    y = torch.empty((*c.shape[:-2], length), dtype=out_dtype, device=c.device)
    count = c.numel() // (n1 * n2)
    if count == 0 or length == 0:
        return y
    grid, block, warps = _launch(count, n1, n2, 4)
    _untwist_idft_kernel[grid](
        torch.view_as_real(c), y, g, t, length, n2, scale, REV=reverse, N1=n1, BN=block,
        num_warps=warps,
    )  # fmt: skip
    return y


def cmul_(s: Tensor, h: Tensor) -> Tensor:
    """``s *= h`` in place, complex64 ``[..., N1, N2]``; ``h``'s leading axes are ``s``'s
    trailing ones (``[C]`` shared over the batch, or ``[B, C]``)."""
    n_per_row = h.shape[-2] * h.shape[-1]
    if s.numel() == 0:
        return s
    per_h = h.numel() // n_per_row
    block = 1024
    grid = (per_h, -(-n_per_row // block))
    _cmul_kernel[grid](
        torch.view_as_real(s), torch.view_as_real(h.contiguous()), s.numel() // h.numel(), per_h,
        n_per_row, BLOCK=block, num_warps=4,
    )  # fmt: skip
    return s


def cmul_sum_(s: Tensor, h: Tensor, per_h: int) -> Tensor:
    """``h[:per_h] = Σ_r s[r, :per_h] ⊙ h[r, :per_h]`` over the ``s.shape[0] / per_h`` blocks of
    ``per_h`` rows, complex64 ``[rows, ...]``; returns ``h[:per_h]``."""
    if s.numel() == 0:
        return h[:per_h]
    n_per_row = h[0].numel()
    block = 1024
    _cmul_sum_kernel[(per_h, -(-n_per_row // block))](
        torch.view_as_real(s), torch.view_as_real(h), s.shape[0] // per_h, per_h, n_per_row,
        BLOCK=block, num_warps=4,
    )  # fmt: skip
    return h[:per_h]
