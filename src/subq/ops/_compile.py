"""Inductor-compiled copies of plain-PyTorch cores, for the ``compiled`` backends of ops."""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from subq.ops.capabilities import module_available
from subq.ops.dispatch import in_forward_ad

__all__ = ["compiled_check", "compiled_for", "tensor_signature"]

_COMPILED: dict[tuple, Callable[..., object]] = {}


def compiled_for(name: str, fn: Callable[..., object], key: tuple) -> Callable[..., object]:
    """``fn`` compiled by Inductor for the static signature ``key``, unless already traced.

    Inside an outer ``torch.compile`` the plain function is traced into the caller's graph; under
    ``torch.func`` transforms and inside forward-mode AD (``torch.autograd.forward_ad``) the plain
    function runs (functorch levels do not mix with a nested compiled region, and a compiled
    region's outputs carry no tangents). Each signature compiles its own copy of ``fn``'s code
    object: dynamo's recompile limit counts per code object, and a layer legitimately meets many
    lengths.
    """
    if (
        torch.compiler.is_compiling()
        or torch._C._functorch.maybe_current_level() is not None
        or in_forward_ad()
    ):
        return fn
    full_key = (name, *key)
    if full_key not in _COMPILED:
        clone = types.FunctionType(
            fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
        )
        _COMPILED[full_key] = torch.compile(clone, fullgraph=True, dynamic=False)
    return _COMPILED[full_key]


def tensor_signature(*tensors: Tensor | None) -> tuple:
    """What a compiled graph specialises on: shape, dtype, device and ``requires_grad``."""
    return tuple(
        None if t is None else (tuple(t.shape), t.dtype, t.device, t.requires_grad) for t in tensors
    )


def compiled_check(facts: Mapping[str, Any]) -> str | None:
    """Whether an op's ``compiled`` backend can run: a float dtype and Triton for Inductor."""
    if facts["dtype"] not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {facts['dtype']} (the compiled path is for float16/bfloat16/float32)"
    if torch.compiler.is_compiling():
        # Inside an outer compile the backend traces its plain math into the caller's graph
        # (and probing imports there would break the graph).
        return None
    reason = module_available("triton")
    if reason is not None:
        return reason
    return None
