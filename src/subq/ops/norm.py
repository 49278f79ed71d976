"""The ``rms_norm`` op: ``x * rsqrt(mean(x²) + eps) * weight`` over the last axis.

Backends, fastest first: ``quack`` (CUDA, Hopper+, quack installed), ``torch`` (``F.rms_norm``,
PyTorch's fused kernel, with float32 statistics), ``reference`` (the formula in float32, any
device: the oracle).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from subq.ops.dispatch import Backend, Op

__all__ = ["rms_norm_op", "rms_norm_reference"]


def rms_norm_reference(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """The formula in float32; ``weight`` broadcasts over ``x``'s trailing axes."""
    x32 = x.float()
    y = x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    return y.to(x.dtype)


def _rms_norm_torch(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    # F.rms_norm accumulates in float32 for reduced-precision inputs; the weight is cast to x's
    # dtype so the fused kernel is used (the product rounds once, in x.dtype).
    if weight is not None and weight.ndim > 1:
        return rms_norm_reference(x, weight, eps)
    w = weight.to(x.dtype) if weight is not None else None
    return F.rms_norm(x, (x.shape[-1],), w, eps)


def _torch_check(facts: Mapping[str, Any]) -> str | None:
    if facts["dtype"] not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {facts['dtype']} (F.rms_norm path is for float16/bfloat16/float32)"
    return None


rms_norm_op = Op(
    "rms_norm",
    [
        Backend("torch", _rms_norm_torch, devices=("cuda",), check=_torch_check),
        Backend("reference", rms_norm_reference),
    ],
    example_facts={"n": 4096},
)
