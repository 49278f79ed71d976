"""Triton kernels of the folded four-step 2D convolution (steps 1 and 5 of
:mod:`subq.ops._same_fftconv2d`; step 3 is the 1D path's complex product). Imported only when
those steps run on CUDA or under the Triton interpreter.

Each program owns an ``[N1, BQ]`` tile of one plane: buffer rows ``m1 · N2 + m2`` for one ``m2``
and all ``m1``, and a block of ``BQ`` folded columns ``j``, so that its reads and writes are
contiguous runs of columns. The column DFT over ``m1`` is ``N1`` rounds of float32 multiply-adds
in registers, as in :mod:`subq.ops._causal_fftconv_kernel`, whose helpers these kernels share.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from subq.ops._causal_fftconv_kernel import _g_row, _t_row, _untwiddled

__all__ = ["fold_dft", "unfold_idft"]


@triton.jit
def _tile(q, N1: tl.constexpr, BQ: tl.constexpr):
    # This program's plane and m2, its folded columns j, the column-DFT index m1, the in-row
    # mask, and the offsets of a complex number's two floats.
    j = tl.program_id(2) * BQ + tl.arange(0, BQ)
    pair = tl.arange(0, 2)[None, :]
    return tl.program_id(0).to(tl.int64), tl.program_id(1), j, tl.arange(0, N1), j < q, pair


@triton.jit
def _source(j, sw, s_w, w_in):
    # Column of the input stored at buffer column ``j`` (negacyclic: a wrapped read is negated;
    # a negative shift leaves the first columns empty).
    src = j + sw
    wrapped = src >= s_w
    src = tl.where(wrapped, src - s_w, src)
    return src, wrapped, (src >= 0) & (src < w_in)


@triton.jit
def _fold_dft_kernel(
    X, S, G, T,
    h_in, w_in, sh, sw, n2_size, q,
    SHIFTED: tl.constexpr, N1: tl.constexpr, BQ: tl.constexpr,
):  # fmt: skip
    row, m2, j, m1, in_row, pair = _tile(q, N1, BQ)
    flat = n2_size * q
    # Buffer row m1·N2 + m2 holds input row (· + sh) mod S_H (cyclic along H); buffer columns
    # j and j + Q are the real and imaginary parts of folded column j.
    h = m1 * n2_size + m2
    if SHIFTED:
        h += sh
        h = tl.where(h >= N1 * n2_size, h - N1 * n2_size, h)
        src_re, neg_re, ok_re = _source(j, sw, 2 * q, w_in)
        src_im, neg_im, ok_im = _source(j + q, sw, 2 * q, w_in)
    else:
        src_re, ok_re = j, j < w_in
        src_im, ok_im = j + q, j + q < w_in
    keep = in_row[None, :] & ((h >= 0) & (h < h_in))[:, None]
    base = X + row * h_in * w_in + h[:, None] * w_in
    xr = tl.load(base + src_re[None, :], mask=keep & ok_re[None, :], other=0.0).to(tl.float32)
    xi = tl.load(base + src_im[None, :], mask=keep & ok_im[None, :], other=0.0).to(tl.float32)
    if SHIFTED:
        xr = tl.where(neg_re[None, :], -xr, xr)
        xi = tl.where(neg_im[None, :], -xi, xi)
    # s[k1, m2, j] = T[k1, m2, j] · Σ_m1 G[k1, m1] · (xr + i xi)[m1, j].
    for k1 in tl.static_range(N1):
        gr, gi = _g_row(G, k1, m1, N1)
        ar = tl.sum(gr[:, None] * xr - gi[:, None] * xi, axis=0)
        ai = tl.sum(gr[:, None] * xi + gi[:, None] * xr, axis=0)
        off = k1 * flat + m2 * q + j
        tr, ti = _t_row(T, off, in_row, pair)
        out = tl.join(ar * tr - ai * ti, ar * ti + ai * tr)
        tl.store(S + (row * N1 * flat + off)[:, None] * 2 + pair, out, mask=in_row[:, None])


@triton.jit
def _store_part(Y, X, SKIP, y, off, keep, channel, HAS_SKIP: tl.constexpr):
    # y (+ D ⊙ x) at flat offsets ``off``.
    if HAS_SKIP:
        d = tl.load(SKIP + channel).to(tl.float32)
        y += d * tl.load(X + off, mask=keep, other=0.0).to(tl.float32)
    tl.store(Y + off, y.to(Y.dtype.element_ty), mask=keep)


@triton.jit
def _unfold_idft_kernel(
    C, Y, X, SKIP, G, T,
    h_out, w_out, n2_size, q, channels, scale,
    HAS_SKIP: tl.constexpr, N1: tl.constexpr, BQ: tl.constexpr,
):  # fmt: skip
    row, m2, j, m1, in_row, pair = _tile(q, N1, BQ)
    flat = n2_size * q
    ur = tl.zeros([N1, BQ], dtype=tl.float32)
    ui = tl.zeros([N1, BQ], dtype=tl.float32)
    # u[m1, j] = Σ_k1 conj(G[k1, m1]) · conj(T[k1, m2, j]) · c[k1, m2, j], as N1 outer products.
    for k1 in tl.static_range(N1):
        dr, di = _untwiddled(C, T, row * N1 * flat, k1 * flat + m2 * q + j, in_row, pair)
        gr, gi = _g_row(G, k1, m1, N1)
        ur += gr[:, None] * dr[None, :] + gi[:, None] * di[None, :]
        ui += gr[:, None] * di[None, :] - gi[:, None] * dr[None, :]
    h = m1 * n2_size + m2
    keep = in_row[None, :] & (h < h_out)[:, None]
    base = row * h_out * w_out + h[:, None] * w_out
    # Unfold: the real part is output column j, the imaginary part column j + Q.
    channel = row % channels
    re_ok, im_ok = keep & (j < w_out)[None, :], keep & (j + q < w_out)[None, :]
    _store_part(Y, X, SKIP, ur * scale, base + j[None, :], re_ok, channel, HAS_SKIP)
    _store_part(Y, X, SKIP, ui * scale, base + (j + q)[None, :], im_ok, channel, HAS_SKIP)


def _launch(planes: int, n1: int, n2: int, q: int, bq: int, warps: int = 1):
    """(grid, column block, warps) for ``[N1, BQ]`` tiles: ``BQ`` shrinks to the power of two
    covering ``Q`` (at least 32). One warp: on the H200 two to eight warps per tile were 3-40x
    slower (the sum over ``m1`` left the registers), whatever the block.

    Raises:
        ValueError: a plane too large for the grid (CUDA allows 65535 blocks on its second and
            third axes) or for the kernels' int32 in-plane offsets.
    """
    bq = max(32, min(bq, triton.next_power_of_2(q)))
    grid = (planes, n2, triton.cdiv(q, bq))
    if max(grid[1:]) > 65535 or n1 * n2 * q * 2 >= 2**31:
        raise ValueError(
            f"fourstep 2D: a [{n1 * n2}, {2 * q}] transform per plane is beyond its kernels' "
            "launch grid or int32 offsets; use backend='compiled'"
        )
    return grid, bq, warps


def fold_dft(
    planes: Tensor, shift: tuple[int, int], g: Tensor, t: Tensor, n2: int, q: int, **launch
) -> Tensor:
    """Step 1 for ``planes`` ``[..., Hin, Win]``: complex64 ``[..., N1, N2, Q]``."""
    n1 = g.shape[0]
    planes = planes.contiguous()
    h_in, w_in = planes.shape[-2:]
    out = torch.empty((*planes.shape[:-2], n1, n2, q), dtype=torch.complex64, device=planes.device)
    # H200, B8 × C256 × 256² bf16: BQ = 128 took 0.66 / 0.88 ms at Q = 192 / 256 (64: 0.76 / 1.34).
    grid, block, warps = _launch(
        planes.numel() // (h_in * w_in), n1, n2, q, **{"bq": 128, **launch}
    )
    _fold_dft_kernel[grid](
        planes, torch.view_as_real(out), torch.view_as_real(g), torch.view_as_real(t),
        h_in, w_in, shift[0], shift[1], n2, q,
        SHIFTED=shift != (0, 0), N1=n1, BQ=block, num_warps=warps,
    )  # fmt: skip
    return out


def unfold_idft(
    c: Tensor,
    x: Tensor | None,
    skip: Tensor | None,
    g: Tensor,
    t: Tensor,
    out: tuple[int, int],
    out_dtype: torch.dtype,
    scale: float,
    **launch,
) -> Tensor:
    """Step 5: ``[..., C, N1, N2, Q]`` complex64 → ``[..., C, *out]`` in ``out_dtype``; ``x`` is
    read only for the skip term."""
    n1, n2, q = c.shape[-3:]
    c = c.contiguous()
    y = torch.empty((*c.shape[:-3], *out), dtype=out_dtype, device=c.device)
    channels = 1
    if skip is not None:  # read flat-indexed like y, only for the skip term
        x, skip, channels = x.contiguous(), skip.contiguous(), x.shape[-3]
    # H200, same sizes: BQ = 64 took 0.59 / 0.99 ms at Q = 192 / 256 (128: 0.89 / 1.11).
    grid, block, warps = _launch(y.numel() // (out[0] * out[1]), n1, n2, q, **{"bq": 64, **launch})
    _unfold_idft_kernel[grid](
        torch.view_as_real(c), y, x if skip is not None else y, skip if skip is not None else y,
        torch.view_as_real(g), torch.view_as_real(t),
        out[0], out[1], n2, q, channels, scale,
        HAS_SKIP=skip is not None, N1=n1, BQ=block, num_warps=warps,
    )  # fmt: skip
    return y
