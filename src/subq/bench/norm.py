"""Norm benchmarks: RMSNorm and LayerNorm, subq's dispatched path against PyTorch and quack, bf16.

Bytes counted (the minimum traffic of a fused kernel, so "TB/s" is effective bandwidth), for
``x`` of ``M × N`` elements of ``s`` bytes:

* forward: read ``x``, write ``y``: ``2·M·N·s``, plus the weight (and bias) read.
* forward+backward: the forward above, then the backward reads ``x`` and ``dy`` and writes ``dx``:
  ``5·M·N·s`` in all, plus the weight (and bias) read twice and their gradients written, plus the
  per-row float32 statistics written by the forward and read by the backward (``2·M·4`` for
  RMSNorm, ``4·M·4`` for LayerNorm).

Before timing, every implementation's output (and, for forward+backward, its gradients) is
compared with the reference of :mod:`subq.ops.norm`; the worst relative error is reported in the
``rel_err`` column. ``best_peer/subq`` ≥ 1 means subq is no slower than the fastest peer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from subq.bench.harness import (
    bandwidth_columns,
    benchmark,
    copy_bandwidth,
    register_benchmark,
    rotation_count,
)
from subq.functional.norm import LayerNormParams, RMSNormParams, layer_norm, rms_norm
from subq.ops.capabilities import quack_unavailable_reason
from subq.ops.norm import layer_norm_op, layer_norm_reference, rms_norm_op, rms_norm_reference
from subq.testing import compute_relative_error

EPS = 1e-6

Impl = Callable[..., torch.Tensor]


def _rms_formula(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    # The formula in float32, as a user would write it (the eager and torch.compile peers).
    x32 = x.float()
    y = x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + EPS)
    return (y * w.float()).to(x.dtype)


def _ln_formula(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    x32 = x.float()
    centred = x32 - x32.mean(-1, keepdim=True)
    y = centred * torch.rsqrt(centred.square().mean(-1, keepdim=True) + EPS)
    return (y * w.float() + b.float()).to(x.dtype)


def _rms_impls(device: torch.device) -> dict[str, tuple[Impl, bool]]:
    """name -> (fn(x, w), differentiable)."""
    impls: dict[str, tuple[Impl, bool]] = {
        "subq": (lambda x, w: rms_norm(RMSNormParams(weight=w), x, eps=EPS), True),
        "F.rms_norm": (lambda x, w: F.rms_norm(x, (x.shape[-1],), w, EPS), True),
        "eager formula": (_rms_formula, True),
    }
    if device.type == "cuda":
        # Inductor on CPU needs a C++ toolchain and minutes of compile time: CUDA only.
        impls["torch.compile"] = (torch.compile(_rms_formula, dynamic=False), True)
        if quack_unavailable_reason(device) is None:
            from quack.rmsnorm import rmsnorm as quack_rmsnorm

            impls["quack"] = (lambda x, w: quack_rmsnorm(x, w, eps=EPS), True)
    return impls


def _ln_impls(device: torch.device) -> dict[str, tuple[Impl, bool]]:
    impls: dict[str, tuple[Impl, bool]] = {
        "subq": (lambda x, w, b: layer_norm(LayerNormParams(weight=w, bias=b), x, eps=EPS), True),
        "F.layer_norm": (lambda x, w, b: F.layer_norm(x, (x.shape[-1],), w, b, EPS), True),
        "eager formula": (_ln_formula, True),
    }
    if device.type == "cuda":
        impls["torch.compile"] = (torch.compile(_ln_formula, dynamic=False), True)
        if quack_unavailable_reason(device) is None:
            from quack.rmsnorm import layernorm_fwd

            # quack ships no autograd for LayerNorm (subq's quack backend adds one): forward only.
            impls["quack (fwd only)"] = (
                lambda x, w, b: layernorm_fwd(x, w.float(), b.float(), EPS),
                False,
            )
    return impls


def _grads(fn: Impl, params: tuple[torch.Tensor, ...], dy: torch.Tensor) -> Any:
    y = fn(*params)
    return torch.autograd.grad(y, params, dy)


def _worst_error(
    ref: Impl, impl: Impl, params: tuple[torch.Tensor, ...], dy: torch.Tensor, backward: bool
) -> float:
    with torch.no_grad():
        plain = tuple(p.detach() for p in params)
        err = compute_relative_error(ref(*plain), impl(*plain))
    if backward:
        pairs = zip(_grads(ref, params, dy), _grads(impl, params, dy), strict=True)
        err = max(err, *(compute_relative_error(r, g) for r, g in pairs))
    return err


def _run(
    kind: str, device: torch.device, quick: bool, impls: dict[str, tuple[Impl, bool]]
) -> list[dict[str, Any]]:
    dtype = torch.bfloat16
    rows_m, sizes = (64, (64, 256)) if quick else (32768, (1024, 4096, 8192))
    warmup, reps = (1, 3) if quick else (10, 30)
    copy_bw = copy_bandwidth(device, nbytes=2**26 if quick else 2**30)
    n_params, n_stats = (1, 2) if kind == "rms_norm" else (2, 4)
    if kind == "rms_norm":
        op = rms_norm_op

        def ref(x, w):
            return rms_norm_reference(x, w, EPS)
    else:
        op = layer_norm_op

        def ref(x, w, b):
            return layer_norm_reference(x, w, b, EPS)

    gen = torch.Generator(device="cpu").manual_seed(0)
    s = torch.finfo(dtype).bits // 8
    out: list[dict[str, Any]] = []
    for n in sizes:
        x_bytes = rows_m * n * s
        sets = []
        for _ in range(rotation_count(2 * x_bytes, device)):
            x = torch.randn(rows_m, n, generator=gen).to(device, dtype).requires_grad_(True)
            w = (1 + 0.1 * torch.randn(n, generator=gen)).to(device, dtype).requires_grad_(True)
            b = (0.1 * torch.randn(n, generator=gen)).to(device, dtype).requires_grad_(True)
            dy = torch.randn(rows_m, n, generator=gen).to(device, dtype)
            sets.append(((x, w, b)[: 1 + n_params], dy))
        fwd_inputs = [tuple(p.detach() for p in params) for params, _ in sets]
        bwd_inputs = [(*params, dy) for params, dy in sets]
        bytes_fwd = 2 * x_bytes + n_params * n * s
        bytes_fb = 5 * x_bytes + 3 * n_params * n * s + n_stats * rows_m * 4
        facts = {"device": device, "dtype": dtype, "n": n, "weight_ndim": 1}
        decision = op.decide(facts).chosen
        results: dict[tuple[str, str], float] = {}
        size_rows: list[dict[str, Any]] = []
        for name, (impl, differentiable) in impls.items():
            params0, dy0 = sets[0]
            err = _worst_error(ref, impl, params0, dy0, backward=False)
            modes = [("fwd", impl, fwd_inputs, bytes_fwd, err)]
            if differentiable:

                def step(*args, impl=impl):
                    return _grads(impl, args[:-1], args[-1])

                err_fb = _worst_error(ref, impl, params0, dy0, backward=True)
                modes.append(("fwd+bwd", step, bwd_inputs, bytes_fb, err_fb))
            for mode, fn, inputs, nbytes, e in modes:
                if mode == "fwd":
                    with torch.no_grad():
                        t = benchmark(fn, inputs, warmup=warmup, reps=reps)
                else:
                    t = benchmark(fn, inputs, warmup=warmup, reps=reps)
                results[(name, mode)] = t.median_ms
                size_rows.append(
                    {
                        "mode": mode,
                        "shape": [rows_m, n],
                        "impl": name + (f" ({decision})" if name == "subq" else ""),
                        **bandwidth_columns(t, nbytes, copy_bw),
                        "rel_err": e,
                    }
                )
        for row in size_rows:
            if row["impl"].startswith("subq"):
                peers = [
                    ms for (nm, md), ms in results.items() if md == row["mode"] and nm != "subq"
                ]
                row["best_peer/subq"] = min(peers) / row["ms"] if peers else float("nan")
        out += size_rows
        del sets, fwd_inputs, bwd_inputs
    out.append({"mode": "copy", "impl": "copy_", "TB/s": copy_bw / 1e12, "frac_copy": 1.0})
    return out


@register_benchmark("rms_norm")
def bench_rms_norm(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    """RMSNorm forward and forward+backward, bf16, ``32768 × N``: subq vs peers."""
    return _run("rms_norm", device, quick, _rms_impls(device))


@register_benchmark("layer_norm")
def bench_layer_norm(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    """LayerNorm (weight and bias) forward and forward+backward, bf16, ``32768 × N``."""
    return _run("layer_norm", device, quick, _ln_impls(device))
