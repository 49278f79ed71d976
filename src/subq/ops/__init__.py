"""Kernels behind a dispatcher; every op has a plain-PyTorch reference that runs on CPU."""

from subq.ops.capabilities import cuda_supports_quack
from subq.ops.dispatch import (
    Backend,
    BackendUnavailableError,
    Op,
    explain,
    get_op,
    is_strict,
    registered_ops,
    strict,
)

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "Op",
    "cuda_supports_quack",
    "explain",
    "get_op",
    "is_strict",
    "registered_ops",
    "strict",
]
