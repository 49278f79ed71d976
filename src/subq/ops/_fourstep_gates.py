"""Hyena's gates around the four-step convolution as autograd functions over the Triton passes of
:mod:`subq.ops._fourstep_gates_kernel`: ``z = q ⊙ σ(k)`` into float32 rows and ``h ⊙ σ₂(v)``
back, each with a one-pass backward. Under ``create_graph`` the backward is the same math in
PyTorch, so second derivatives work. Imported only where Triton runs (CUDA, or its interpreter).
"""

from __future__ import annotations

import torch
from torch import Tensor

from subq.ops import _fourstep_gates_kernel as kernels

__all__ = ["gate_in_rows", "gate_out"]


def _value_gate_and_slope(kind: str, v: Tensor) -> tuple[Tensor, Tensor]:
    """``σ₂(v)`` and ``σ₂'(v)`` for the value gates of ``value_gate_fn``."""
    if kind == "sigmoid":
        g = torch.sigmoid(v)
        return g, g * (1 - g)
    if kind == "silu":
        sig = torch.sigmoid(v)
        return v * sig, sig * (1 + v * (1 - sig))
    return v, torch.ones_like(v)


class _GateIn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor) -> Tensor:
        ctx.save_for_backward(q, k)
        return kernels.gate_in_rows(q, k)

    @staticmethod
    def backward(ctx, dz: Tensor):
        q, k = ctx.saved_tensors
        if not torch.is_grad_enabled():
            return kernels.gate_in_backward(dz, q, k)
        dz, sig = dz.movedim(1, -1), torch.sigmoid(k.float())
        return (dz * sig).to(q.dtype), (dz * q.float() * sig * (1 - sig)).to(k.dtype)


class _GateOut(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, v: Tensor, value_gate: str, dtype: torch.dtype) -> Tensor:
        ctx.save_for_backward(h, v)
        ctx.value_gate = value_gate
        return kernels.gate_out(h, v, value_gate, dtype)

    @staticmethod
    def backward(ctx, dy: Tensor):
        h, v = ctx.saved_tensors
        if not torch.is_grad_enabled():
            return *kernels.gate_out_backward(dy, h, v, ctx.value_gate), None, None
        gate, slope = _value_gate_and_slope(ctx.value_gate, v.float())
        dy = dy.float()
        dh = (dy * gate).movedim(-1, 1)
        return dh, (dy * h.movedim(1, -1) * slope).to(v.dtype), None, None


def gate_in_rows(q: Tensor, k: Tensor) -> Tensor:
    """``q ⊙ σ(k)`` for channels-last ``[B, *spatial, C]``: float32 rows ``[B, C, *spatial]``."""
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        return _GateIn.apply(q, k)
    return kernels.gate_in_rows(q, k)


def gate_out(h: Tensor, v: Tensor, value_gate: str, dtype: torch.dtype) -> Tensor:
    """``h ⊙ σ₂(v)`` for float32 rows ``h`` and channels-last ``v``: channels last in ``dtype``."""
    if torch.is_grad_enabled() and (h.requires_grad or v.requires_grad):
        return _GateOut.apply(h, v, value_gate, dtype)
    return kernels.gate_out(h, v, value_gate, dtype)
