"""Triton passes around the four-step convolution in Hyena's gated form, for calls without
autograd: ``z = q ⊙ σ(k)`` from channels-last into float32 rows, and ``h ⊙ σ₂(v)`` back.

With autograd the gates run as Inductor-compiled functions (their backward fused too); without
it these two launches replace them, because a compiled region's host overhead (guards and
wrappers, ≈0.1–0.2 ms a call) is as long as the whole convolution at 4096 samples. Each program
moves a ``[BS, BC]`` tile. q, k and v are read in their own strides: Hyena's short convolution
leaves channels-first storage behind its channels-last view, which the first pass then reads
along positions as it writes them; channels-last storage is read along channels and Triton
converts the layout in shared memory. (A unit stride is a compile-time constant to Triton, so
each layout gets its own kernel.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["gate_in_rows", "gate_out"]

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
def _gate_out_kernel(
    H, V, Y, positions, channels, svb, svs, svc,
    GATE: tl.constexpr, BS: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    b, s, c, keep = _tile(positions, channels, BS, BC)
    h = tl.load(H + (b * channels + c) * positions + s, mask=keep)
    v = tl.load(V + b * svb + s * svs + c * svc, mask=keep).to(tl.float32)
    if GATE == 1:
        v = tl.sigmoid(v)
    elif GATE == 2:
        v = v * tl.sigmoid(v)
    tl.store(Y + (b * positions + s) * channels + c, (h * v).to(Y.dtype.element_ty), mask=keep)


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
