"""Where the time of an RMSNorm forward+backward goes, subq's quack path vs quack's own autograd.

    source .gpu/base/setup.sh quack && python3 bench/gpu_norm_profile.py   # carry base, quack_b

For 32768 × N bf16 rows: GPU time per call (CUDA events, calls queued back to back), host time
per call (wall clock of the queueing loop alone) and the CUDA kernels of one call.
"""

from __future__ import annotations

import time

import torch
from quack.rmsnorm import rmsnorm as quack_rmsnorm
from torch.profiler import ProfilerActivity, profile

from subq import RMSNormParams, rms_norm

EPS = 1e-6


def step(fn, x, w, dy):
    return torch.autograd.grad(fn(x, w), (x, w), dy)


IMPLS = {
    "subq": lambda x, w: rms_norm(RMSNormParams(weight=w), x, eps=EPS),
    "quack": lambda x, w: quack_rmsnorm(x, w, eps=EPS),
}

for n in (1024, 4096, 8192):
    x = torch.randn(32768, n, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.ones(n, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn_like(x)
    for name, fn in IMPLS.items():
        for _ in range(10):
            step(fn, x, w, dy)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(30):
            step(fn, x, w, dy)
        b.record()
        host = (time.perf_counter() - t0) / 30 * 1e3
        torch.cuda.synchronize()
        gpu = a.elapsed_time(b) / 30
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step(fn, x, w, dy)
            torch.cuda.synchronize()
        kernels = [
            f"{e.key[:60]} {e.device_time_total:.0f}us x{e.count}"
            for e in prof.key_averages()
            if e.device_time_total > 0
        ]
        print(f"N={n} {name}: queued {gpu:.3f} ms/call, host {host:.3f} ms/call")
        for k in kernels:
            print("    ", k)
