"""RoPE benchmark: rotate q and k (bf16) with subq's dispatched path, the plain formula in eager,
and ``torch.compile`` of the plain formula.

Shape (issue 3): q and k of ``B8 × T4096 × 32 heads × 128``, bf16, in the ``[B, T, heads, D]``
layout with a ``[T, 1, D/2]`` cache, and in ``[B, heads, T, D]`` with a ``[T, D/2]`` cache.

Bytes counted (the minimum traffic of a fused kernel), with ``S`` the bytes of one of q, k:

* forward: read q and k, write their rotations: ``4·S``;
* forward+backward: the forward, then read the two output gradients and write the two input
  gradients: ``8·S``.

The cache (float32, ``T × D/2``) is a few MB, read from L2, and not counted. Before timing, each
implementation's outputs (and, for forward+backward, its gradients) are compared with
:func:`subq.ops.rope.rope_reference`; the worst relative error is the ``rel_err`` column.
``frac_copy`` is the effective bandwidth over the copy bandwidth measured in the same run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from subq.bench.harness import (
    bandwidth_columns,
    benchmark,
    copy_bandwidth,
    register_benchmark,
    rotation_count,
)
from subq.functional.rope import RopeCache, apply_rope_qk, rope_cache
from subq.ops import rope as rope_ops
from subq.testing import compute_relative_error

Impl = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], Any]


def _formula(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    # Split-half RoPE as a user writes it, in float32 (the eager and torch.compile peers).
    def rotate(x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        a, b = x32.chunk(2, dim=-1)
        return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1).to(x.dtype)

    return rotate(q), rotate(k)


def _subq(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    return apply_rope_qk(q, k, RopeCache(cos, sin))


def _reference(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    sections = (q.shape[-1],)
    return (
        rope_ops.rope_reference(q, cos, sin, sections, "split_half"),
        rope_ops.rope_reference(k, cos, sin, sections, "split_half"),
    )


def _grads(fn: Impl, q, k, cos, sin, dq, dk):
    q, k = q.detach().requires_grad_(True), k.detach().requires_grad_(True)
    oq, ok = fn(q, k, cos, sin)
    return torch.autograd.grad((oq, ok), (q, k), (dq, dk))


def _worst_error(fn: Impl, q, k, cos, sin, dq, dk, backward: bool) -> float:
    with torch.no_grad():
        ref, out = _reference(q, k, cos, sin), fn(q, k, cos, sin)
    errs = [compute_relative_error(r, o) for r, o in zip(ref, out, strict=True)]
    if backward:
        pairs = zip(_grads(_reference, q, k, cos, sin, dq, dk), _grads(fn, q, k, cos, sin, dq, dk))
        errs += [compute_relative_error(r, g) for r, g in pairs]
    return max(errs)


def _fwd_bwd(fn: Impl) -> Callable[..., None]:
    def run(q, k, cos, sin, dq, dk):
        oq, ok = fn(q, k, cos, sin)
        # autograd.grad, not backward: accumulating into .grad would add traffic.
        torch.autograd.grad((oq, ok), (q, k), (dq, dk))

    return run


def _fwd(fn: Impl) -> Callable[..., None]:
    def run(q, k, cos, sin, dq, dk):
        with torch.no_grad():
            fn(q, k, cos, sin)

    return run


def _impls(device: torch.device) -> dict[str, Impl]:
    impls: dict[str, Impl] = {"subq": _subq, "eager formula": _formula}
    if device.type == "cuda":
        # Inductor on CPU needs a C++ toolchain and minutes of compile time: CUDA only.
        impls["torch.compile"] = torch.compile(_formula, dynamic=False)
    return impls


def _inputs(shape, layout: str, device, dtype, count: int, requires_grad: bool):
    b, t, h, d = shape
    cache = rope_cache((t,), d, device=device)
    cos, sin = cache.cos, cache.sin
    if layout == "bthd":
        cos, sin = cos[:, None, :], sin[:, None, :]
        full = (b, t, h, d)
    else:
        full = (b, h, t, d)
    gen = torch.Generator(device=device).manual_seed(0)
    sets = []
    for _ in range(count):
        q = torch.randn(full, device=device, dtype=dtype, generator=gen)
        k = torch.randn(full, device=device, dtype=dtype, generator=gen)
        q.requires_grad_(requires_grad)
        k.requires_grad_(requires_grad)
        dq = torch.randn(full, device=device, dtype=dtype, generator=gen)
        dk = torch.randn(full, device=device, dtype=dtype, generator=gen)
        sets.append((q, k, cos, sin, dq, dk))
    return sets


def _cpu_us(fn: Impl, args, backward: bool, calls: int = 50) -> float:
    """Host time per call (launch overhead): the GPU queue absorbs the work meanwhile."""
    runner = _fwd_bwd(fn) if backward else _fwd(fn)
    runner(*args)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        runner(*args)
    host = (time.perf_counter() - t0) / calls
    torch.cuda.synchronize()
    return host * 1e6


def _kernel_only_row(layout, mode, shape, args, backward, nbytes, copy_bw) -> dict[str, Any]:
    """The fused kernels alone, replayed from a CUDA graph (no Python or launch overhead)."""
    q, k, cos, sin, dq, dk = (a.detach() for a in args)
    sections = (q.shape[-1],)

    def launches():
        rope_ops._launch(q, cos, sin, sections, "split_half")
        rope_ops._launch(k, cos, sin, sections, "split_half")
        if backward:
            rope_ops._launch(dq, cos, sin, sections, "split_half", negate=True)
            rope_ops._launch(dk, cos, sin, sections, "split_half", negate=True)

    launches()  # compile the kernels outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        launches()
    timing = benchmark(graph.replay, [()], warmup=3, reps=30, device=q.device)
    return {
        "layout": layout,
        "mode": mode,
        "impl": "subq kernels only (CUDA graph)",
        "shape": list(shape),
        **bandwidth_columns(timing, nbytes, copy_bw),
        "rel_err": None,  # same kernels as the checked "subq" row
    }


@register_benchmark("rope")
def rope_benchmark(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    """q and k rotation, forward and forward+backward; see the module docstring."""
    dtype = torch.bfloat16
    shape = (2, 64, 4, 32) if quick else (8, 4096, 32, 128)
    warmup, reps = (1, 3) if quick else (10, 30)
    copy_bw = copy_bandwidth(device, nbytes=2**26 if quick else 2**30)
    one = shape[0] * shape[1] * shape[2] * shape[3] * torch.finfo(dtype).bits // 8
    rows: list[dict[str, Any]] = []
    facts = {
        "device": device,
        "dtype": dtype,
        "pairing": "split_half",
        "head_dim": shape[3],
        "rot_dim": shape[3],
        "x_shape": (shape[0], shape[1], shape[2], shape[3]),
        "cache_shape": (shape[1], 1, shape[3] // 2),
    }
    subq_backend = rope_ops.rope_op.decide(facts).chosen
    impls = _impls(device)
    for layout in ("bthd", "bhtd"):
        for mode, backward in (("fwd", False), ("fwd+bwd", True)):
            nbytes = (8 if backward else 4) * one
            # Each set holds q, k, dq, dk: rotate over enough sets to exceed the L2 cache.
            count = rotation_count(4 * one, device)
            sets = _inputs(shape, layout, device, dtype, count, backward)
            q, k, cos, sin, dq, dk = sets[0]
            results = {}
            for name, fn in impls.items():
                err = _worst_error(fn, q, k, cos, sin, dq, dk, backward)
                runner = _fwd_bwd(fn) if backward else _fwd(fn)
                timing = benchmark(runner, sets, warmup=warmup, reps=reps)
                results[name] = timing.median_ms
                rows.append(
                    {
                        "layout": layout,
                        "mode": mode,
                        "impl": name + (f" [{subq_backend}]" if name == "subq" else ""),
                        "shape": list(shape),
                        **bandwidth_columns(timing, nbytes, copy_bw),
                        "rel_err": err,
                    }
                )
            n_rows = len(impls)
            if device.type == "cuda" and not quick:
                rows.append(
                    _kernel_only_row(layout, mode, shape, sets[0], backward, nbytes, copy_bw)
                )
                rows[-1 - n_rows]["cpu_us"] = _cpu_us(impls["subq"], sets[0], backward)
                n_rows += 1
            for row in rows[-n_rows:]:
                row["subq_speedup"] = row["ms"] / results["subq"]
            del sets
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for row in rows:
        row["copy_TB/s"] = copy_bw / 1e12
    return rows


@register_benchmark("rope_tune")
def rope_tune(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    """Forward time of the fused kernel for several launch configurations (CUDA only)."""
    if device.type != "cuda" or quick:
        return []
    dtype, shape = torch.bfloat16, (8, 4096, 32, 128)
    copy_bw = copy_bandwidth(device)
    one = shape[0] * shape[1] * shape[2] * shape[3] * 2
    sets = _inputs(shape, "bthd", device, dtype, 1, False)
    rows = []
    default = rope_ops._launch_config
    try:
        for cfg in ((4, 4), (8, 4), (16, 4), (32, 4), (32, 8), (64, 8), (128, 8)):
            rope_ops._launch_config = lambda d, cfg=cfg: cfg
            timing = benchmark(_fwd(_subq), sets, warmup=5, reps=30)
            tbps = 4 * one / (timing.median_ms * 1e-3)
            rows.append(
                {
                    "rows_per_program": cfg[0],
                    "warps": cfg[1],
                    "ms": timing.median_ms,
                    "TB/s": tbps / 1e12,
                    "frac_copy": tbps / copy_bw,
                }
            )
    finally:
        rope_ops._launch_config = default
    return rows
