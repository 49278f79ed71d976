"""Triton passes around the four-step convolution in Hyena's gated form: ``z = q ⊙ σ(k)`` from
channels-last into float32 rows, ``h ⊙ σ₂(v)`` back, and one backward pass for each.

They replace Inductor-compiled gates because a compiled region's host overhead (guards and
wrappers, ≈0.1–0.2 ms a call, more with autograd) is as long as the whole convolution at 4096
samples. Each program moves a ``[BS, BC]`` tile. q, k and v are read in their own strides:
Hyena's short convolution leaves channels-first storage behind its channels-last view, which the
first pass then reads along positions as it writes them; channels-last storage is read along
channels and Triton converts the layout in shared memory. (A unit stride is a compile-time
constant to Triton, so each layout gets its own kernel.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["gate_in_backward", "gate_in_rows", "gate_out", "gate_out_backward"]

BS, BC = 64, 64  # the tile: positions × channels
#: Value gates ``σ₂`` by name; any other name is no gate (as ``value_gate_fn``).
GATES = {"sigmoid": 1, "silu": 2}


@triton.jit
def _tile(positions, channels, BS: tl.constexpr, BC: tl.constexpr):
    # This program's batch entry, positions [BS, 1], channels [1, BC] and the in-range mask
    # (grid axis 0 runs over batch × position blocks: it alone has room for any count). int64
    # indices: position × stride (or channel × stride in channels-first storage) passes 2^31 in
    # large 2D planes.
    blocks = tl.cdiv(positions, BS)
    s = ((tl.program_id(0) % blocks) * BS + tl.arange(0, BS)).to(tl.int64)[:, None]
    c = (tl.program_id(1) * BC + tl.arange(0, BC)).to(tl.int64)[None, :]
    return (tl.program_id(0) // blocks).to(tl.int64), s, c, (s < positions) & (c < channels)


@triton.jit
def _gate_in_kernel(
    Q, K, Z, positions, channels, sqb, sqs, sqc, skb, sks, skc,
    BS: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    b, s, c, keep = _tile(positions, channels, BS, BC)
    q = tl.load(Q + b * sqb + s * sqs + c * sqc, mask=keep).to(tl.float32)
    k = tl.load(K + b * skb + s * sks + c * skc, mask=keep).to(tl.float32)
    tl.store(Z + (b * channels + c) * positions + s, q * tl.sigmoid(k), mask=keep)


@triton.jit
def _value_gate(v, GATE: tl.constexpr):
    # σ₂(v) and σ₂'(v), float32.
    if GATE == 1:
        g = tl.sigmoid(v)
        return g, g * (1.0 - g)
    elif GATE == 2:
        sig = tl.sigmoid(v)
        return v * sig, sig * (1.0 + v * (1.0 - sig))
    else:
        return v, tl.full(v.shape, 1.0, tl.float32)


@triton.jit
def _gate_out_kernel(
    H, V, Y, positions, channels, svb, svs, svc,
    GATE: tl.constexpr, BS: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    b, s, c, keep = _tile(positions, channels, BS, BC)
    h = tl.load(H + (b * channels + c) * positions + s, mask=keep)
    gate, _ = _value_gate(tl.load(V + b * svb + s * svs + c * svc, mask=keep).to(tl.float32), GATE)
    tl.store(Y + (b * positions + s) * channels + c, (h * gate).to(Y.dtype.element_ty), mask=keep)


@triton.jit
def _gate_in_bwd_kernel(
    Q, K, DZ, DQ, DK, positions, channels,
    sqb, sqs, sqc, skb, sks, skc, sdb, sds, sdc,
    BS: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    # dq = dz σ(k), dk = dz q σ(k) (1 − σ(k)); dq and dk share one layout (strides sd*).
    b, s, c, keep = _tile(positions, channels, BS, BC)
    q = tl.load(Q + b * sqb + s * sqs + c * sqc, mask=keep).to(tl.float32)
    sig = tl.sigmoid(tl.load(K + b * skb + s * sks + c * skc, mask=keep).to(tl.float32))
    dz = tl.load(DZ + (b * channels + c) * positions + s, mask=keep)
    out = b * sdb + s * sds + c * sdc
    tl.store(DQ + out, (dz * sig).to(DQ.dtype.element_ty), mask=keep)
    tl.store(DK + out, (dz * q * sig * (1.0 - sig)).to(DK.dtype.element_ty), mask=keep)


@triton.jit
def _gate_out_bwd_kernel(
    H, V, DY, DH, DV, positions, channels,
    svb, svs, svc, syb, sys, syc, sdb, sds, sdc,
    GATE: tl.constexpr, BS: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    # dh = dy σ₂(v) into float32 rows, dv = dy h σ₂'(v) (strides sd*).
    b, s, c, keep = _tile(positions, channels, BS, BC)
    row = (b * channels + c) * positions + s
    h = tl.load(H + row, mask=keep)
    gate, slope = _value_gate(
        tl.load(V + b * svb + s * svs + c * svc, mask=keep).to(tl.float32), GATE
    )
    dy = tl.load(DY + b * syb + s * sys + c * syc, mask=keep).to(tl.float32)
    tl.store(DH + row, dy * gate, mask=keep)
    tl.store(DV + b * sdb + s * sds + c * sdc, (dy * h * slope).to(DV.dtype.element_ty), mask=keep)


def _positions(t: Tensor) -> Tensor:
    """``[B, *spatial, C]`` as ``[B, S, C]`` (a view where the spatial axes allow one)."""
    return t.flatten(1, -2)


def _grid(b: int, s: int, c: int) -> tuple[int, int]:
    return (b * -(-s // BS), -(-c // BC))


def gate_in_rows(q: Tensor, k: Tensor) -> Tensor:
    """``q ⊙ σ(k)`` for channels-last ``[B, *spatial, C]``: contiguous float32 ``[B, C, *spatial]``."""
    b, *spatial, c = q.shape
    z = torch.empty((b, c, *spatial), dtype=torch.float32, device=q.device)
    qf, kf = _positions(q), _positions(k)
    s = qf.shape[1]
    if z.numel():
        _gate_in_kernel[_grid(b, s, c)](qf, kf, z, s, c, *qf.stride(), *kf.stride(), BS=BS, BC=BC)
    return z


def gate_out(h: Tensor, v: Tensor, value_gate: str, dtype: torch.dtype) -> Tensor:
    """``h ⊙ σ₂(v)`` for float32 rows ``h`` ``[B, C, *spatial]`` and channels-last ``v``:
    contiguous ``[B, *spatial, C]`` in ``dtype``."""
    b, c = v.shape[0], v.shape[-1]
    y = torch.empty(v.shape, dtype=dtype, device=v.device)
    vf = _positions(v)
    s = vf.shape[1]
    if y.numel():
        _gate_out_kernel[_grid(b, s, c)](
            h.contiguous(), vf, y, s, c, *vf.stride(),
            GATE=GATES.get(value_gate, 0), BS=BS, BC=BC,
        )  # fmt: skip
    return y


def _empty_like_positions(t: Tensor, dtype: torch.dtype) -> Tensor:
    """An empty ``[B, S, C]`` in ``t``'s layout family: channels last where ``t``'s channels have
    unit stride, else channels-first storage (so each gradient is written the way its input
    was read)."""
    b, s, c = t.shape
    if t.stride(-1) == 1:
        return torch.empty((b, s, c), dtype=dtype, device=t.device)
    return torch.empty((b, c, s), dtype=dtype, device=t.device).transpose(1, 2)


def gate_in_backward(dz: Tensor, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """``∂q``, ``∂k`` (in q's and k's dtypes) of :func:`gate_in_rows` for the float32 rows ``dz``."""
    b, c = q.shape[0], q.shape[-1]
    qf, kf = _positions(q), _positions(k)
    dq, dk = _empty_like_positions(qf, q.dtype), _empty_like_positions(qf, k.dtype)
    s = qf.shape[1]
    if dq.numel():
        _gate_in_bwd_kernel[_grid(b, s, c)](
            qf, kf, dz.contiguous(), dq, dk, s, c, *qf.stride(), *kf.stride(), *dq.stride(),
            BS=BS, BC=BC,
        )  # fmt: skip
    return dq.unflatten(1, q.shape[1:-1]), dk.unflatten(1, k.shape[1:-1])


def gate_out_backward(dy: Tensor, h: Tensor, v: Tensor, value_gate: str) -> tuple[Tensor, Tensor]:
    """``∂h`` (float32 rows like ``h``) and ``∂v`` (in v's dtype) of :func:`gate_out`."""
    b, c = v.shape[0], v.shape[-1]
    vf, dyf = _positions(v), _positions(dy)
    dh, dv = (
        torch.empty(h.shape, dtype=torch.float32, device=h.device),
        _empty_like_positions(vf, v.dtype),
    )
    s = vf.shape[1]
    if dv.numel():
        _gate_out_bwd_kernel[_grid(b, s, c)](
            h.contiguous(), vf, dyf, dh, dv, s, c, *vf.stride(), *dyf.stride(), *dv.stride(),
            GATE=GATES.get(value_gate, 0), BS=BS, BC=BC,
        )  # fmt: skip
    return dh, dv.unflatten(1, v.shape[1:-1])
