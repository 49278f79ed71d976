"""RMSNorm benchmark: subq's dispatched path against PyTorch and quack, bf16.

Bytes counted (the minimum traffic of a fused kernel, so "TB/s" is effective bandwidth):

* forward: read ``x``, write ``y`` (``2·M·N`` elements) plus the weight (``N``).
* forward+backward: the forward above, then the backward reads ``x`` and ``dy`` and writes ``dx``
  (``5·M·N`` elements in all), plus the weight read twice and ``dw`` written (``3·N``). The
  per-row statistics (``M`` float32s, written then read) are counted too.

Every implementation's output is compared with :func:`subq.ops.norm.rms_norm_reference` (and, for
forward+backward, its gradients with the reference's autograd gradients) before it is timed; the
relative error is reported in the ``rel_err`` column.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from subq.bench.harness import benchmark, copy_bandwidth, register_benchmark, rotation_count
from subq.functional.norm import RMSNormParams, rms_norm
from subq.ops.capabilities import quack_unavailable_reason
from subq.ops.norm import rms_norm_op, rms_norm_reference
from subq.testing import compute_relative_error

EPS = 1e-6


def _formula(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    # The textbook formula in float32, as a user would write it (the torch.compile peer).
    x32 = x.float()
    y = x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + EPS)
    return (y * w.float()).to(x.dtype)


def _implementations(device: torch.device) -> dict[str, Callable[..., torch.Tensor]]:
    impls: dict[str, Callable[..., torch.Tensor]] = {
        "subq": lambda x, w: rms_norm(RMSNormParams(weight=w), x, eps=EPS),
        "F.rms_norm": lambda x, w: F.rms_norm(x, (x.shape[-1],), w, EPS),
        "eager formula": _formula,
    }
    if device.type == "cuda":
        # Inductor on CPU needs a C++ toolchain and minutes of compile time: CUDA only.
        impls["torch.compile"] = torch.compile(_formula, dynamic=False)
        if quack_unavailable_reason(device) is None:
            from quack.rmsnorm import rmsnorm as quack_rmsnorm

            impls["quack"] = lambda x, w: quack_rmsnorm(x, w, eps=EPS)
    return impls


def _fwd_bwd(impl: Callable[..., torch.Tensor]) -> Callable[..., Any]:
    def step(x: torch.Tensor, w: torch.Tensor, dy: torch.Tensor) -> Any:
        y = impl(x, w)
        return torch.autograd.grad(y, (x, w), dy)

    return step


def _rel_err_fwd_bwd(
    impl: Callable[..., torch.Tensor], x: torch.Tensor, w: torch.Tensor, dy: torch.Tensor
) -> float:
    ref = rms_norm_reference(x, w, EPS)
    ref_grads = torch.autograd.grad(ref, (x, w), dy)
    out = impl(x, w)
    grads = torch.autograd.grad(out, (x, w), dy)
    return max(
        compute_relative_error(ref, out),
        *(compute_relative_error(r, g) for r, g in zip(ref_grads, grads, strict=True)),
    )


@register_benchmark("rms_norm")
def bench_rms_norm(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    """RMSNorm forward and forward+backward, bf16, ``M × N`` rows, every implementation."""
    dtype = torch.bfloat16
    rows_m, sizes = (64, (64, 256)) if quick else (32768, (1024, 4096, 8192))
    warmup, reps = (1, 3) if quick else (10, 30)
    copy_bw = copy_bandwidth(device, nbytes=2**26 if quick else 2**30)
    impls = _implementations(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    out: list[dict[str, Any]] = []
    for n in sizes:
        s = torch.finfo(dtype).bits // 8
        x_bytes = rows_m * n * s
        n_sets = rotation_count(2 * x_bytes, device)
        sets = []
        for _ in range(n_sets):
            x = torch.randn(rows_m, n, generator=gen).to(device, dtype).requires_grad_(True)
            w = (1 + 0.1 * torch.randn(n, generator=gen)).to(device, dtype).requires_grad_(True)
            dy = torch.randn(rows_m, n, generator=gen).to(device, dtype)
            sets.append((x, w, dy))
        fwd_inputs = [(x.detach(), w.detach()) for x, w, _ in sets]
        bytes_fwd = 2 * x_bytes + n * s
        bytes_fb = 5 * x_bytes + 3 * n * s + 2 * rows_m * 4
        decision = rms_norm_op.decide({"device": device, "dtype": dtype, "n": n}).chosen
        results: dict[tuple[str, str], float] = {}
        for name, impl in impls.items():
            x0, w0, dy0 = sets[0]
            with torch.no_grad():
                err_fwd = compute_relative_error(
                    rms_norm_reference(x0, w0, EPS), impl(x0.detach(), w0.detach())
                )
            err_fb = _rel_err_fwd_bwd(impl, x0, w0, dy0)
            for mode, fn, inputs, nbytes, err in (
                ("fwd", impl, fwd_inputs, bytes_fwd, err_fwd),
                ("fwd+bwd", _fwd_bwd(impl), sets, bytes_fb, err_fb),
            ):
                if mode == "fwd":
                    with torch.no_grad():
                        t = benchmark(fn, inputs, warmup=warmup, reps=reps)
                else:
                    t = benchmark(fn, inputs, warmup=warmup, reps=reps)
                results[(name, mode)] = t.median_ms
                rate = nbytes / (t.median_ms * 1e-3)
                out.append(
                    {
                        "mode": mode,
                        "shape": [rows_m, n],
                        "impl": name + (f" ({decision})" if name == "subq" else ""),
                        "ms": t.median_ms,
                        "p10_ms": t.p10_ms,
                        "p90_ms": t.p90_ms,
                        "TB/s": rate / 1e12,
                        "frac_copy": rate / copy_bw,
                        "rel_err": err,
                    }
                )
        # subq's standing against the best peer at this size (>= 1: subq is no slower).
        for row in out[-2 * len(impls) :]:
            if row["impl"].startswith("subq"):
                peers = [
                    ms for (nm, md), ms in results.items() if md == row["mode"] and nm != "subq"
                ]
                row["best_peer/subq"] = min(peers) / row["ms"]
    out.append({"mode": "copy", "impl": "copy_", "TB/s": copy_bw / 1e12, "frac_copy": 1.0})
    return out
