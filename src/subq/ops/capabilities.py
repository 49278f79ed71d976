"""What the current machine can run: optional libraries and GPU capabilities, cached."""

from __future__ import annotations

import functools
import importlib

import torch

__all__ = ["cuda_supports_quack", "module_available", "quack_unavailable_reason"]


@functools.cache
def module_available(name: str) -> str | None:
    """None if ``import name`` works, else the reason it failed (any exception, not only ImportError)."""
    try:
        importlib.import_module(name)
    except Exception as err:  # a broken install raises more than ImportError
        return f"import {name} failed: {type(err).__name__}: {err}".splitlines()[0][:200]
    return None


@functools.cache
def _quack_reason(device_index: int | None) -> str | None:
    # The caller resolves "the current device" to its index where CUDA is available, so the
    # answer is cached per device; None reaches here only on a machine without CUDA.
    if not torch.cuda.is_available():
        return "CUDA is not available"
    if torch.version.hip is not None:
        return "ROCm build of PyTorch (quack targets NVIDIA GPUs)"
    index = torch.cuda.current_device() if device_index is None else device_index
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        return f"no CUDA device {index} (this machine has {count})"
    major, minor = torch.cuda.get_device_capability(index)
    if major < 9:
        return f"compute capability {major}.{minor} < 9.0 (quack needs Hopper or newer)"
    for name in ("triton", "cutlass", "quack"):
        reason = module_available(name)
        if reason is not None:
            return reason
    return None


# Dispatch runs inside torch.compile regions; this probe imports modules and uses functools.cache,
# which dynamo cannot trace, so under compile its answer is taken as a constant.
@torch.compiler.assume_constant_result
def quack_unavailable_reason(device: torch.device | str | int | None = None) -> str | None:
    """None if quack kernels can run on ``device``, else why not.

    ``device``: a CUDA device, its index, or None (or ``"cuda"``) for the current CUDA device.
    """
    if device is None:
        device = torch.device("cuda")
    elif isinstance(device, int):
        device = torch.device("cuda", device)
    else:
        device = torch.device(device)
    if device.type != "cuda":
        return f"device type is {device.type}, not cuda"
    index = device.index
    if index is None and torch.cuda.is_available():
        index = torch.cuda.current_device()
    return _quack_reason(index)


def cuda_supports_quack(device: torch.device | str | int | None = None) -> bool:
    """Return True if ``device`` supports QuACK fused kernels.

    Requires a CUDA (not ROCm) device of compute capability 9.0 or newer and importable
    ``triton``, ``cutlass`` and ``quack``. The answer is cached per device.

    Example:
        >>> cuda_supports_quack("cpu")
        False
    """
    return quack_unavailable_reason(device) is None
