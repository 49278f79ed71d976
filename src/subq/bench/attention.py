"""Attention benchmarks (issue 4): fused causal attention, under vmap, forward+backward,
memory of the memory-efficient backend, causal linear attention, cached decoding.

Shapes (bf16 on CUDA): ``B4 × 16 heads × T4096 × 128`` for softmax attention, ``T16384`` for
linear attention, ``T = 8k/16k/32k`` (B1, 16 heads) for the memory-efficient backend, a 12-layer
``d = 1024`` stack of cached attention layers (16 heads) for decoding. ``quick=True`` shrinks
everything to CPU-seconds sizes (a smoke test).

FLOPs of causal attention count the visible (query, key) pairs, ``4·B·H·D·T(T+1)/2`` forward
and 2.5× that for the backward (``fwd_bwd`` rows use 3.5× the forward count). The ``rel_err``
column: softmax attention (plain, under ``vmap``, and gradients, also under ``vmap(grad)``) against
SDPA's math kernel on the same input, linear attention (forward) against subq's float32 reference.
The memory and decoding rows time backends whose parity is tested elsewhere; they carry none.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from subq.bench.harness import benchmark, register_benchmark
from subq.functional.attention import AttentionConfig, attention, init_attention
from subq.functional.kv_cache import cached_attention, init_kv_cache
from subq.functional.linear_attention import linear_attention
from subq.testing import compute_relative_error


def _sdpa_backend(name: str) -> Callable[..., torch.Tensor]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernel = {
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }[name]

    def run(q, k, v):
        with sdpa_kernel([kernel]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    return run


def _causal_flops(b: int, h: int, t: int, d: int) -> float:
    return 4.0 * b * h * d * t * (t + 1) / 2


def _inputs(shape, n, device, dtype, requires_grad=False):
    g = torch.Generator(device=device).manual_seed(0)
    out = []
    for _ in range(n):
        q, k, v = (
            torch.randn(shape, generator=g, device=device, dtype=dtype).requires_grad_(
                requires_grad
            )
            for _ in range(3)
        )
        out.append((q, k, v))
    return out


def _try(fn: Callable[[], Any]) -> tuple[Any, str | None]:
    try:
        return fn(), None
    except Exception as err:  # a kernel unavailable on this device is a row, not a crash
        return None, f"{type(err).__name__}: {err}".splitlines()[0][:120]


@contextlib.contextmanager
def _alarm(seconds: int):
    """Raise TimeoutError in this block after ``seconds`` (0: no limit; main thread only)."""
    import signal

    if not seconds:
        yield
        return

    def handler(signum, frame):
        raise TimeoutError(f"took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _add_vs_best_sdpa(rows: list[dict[str, Any]]) -> None:
    """Set ``vs_best_sdpa`` (fastest SDPA kernel's time ÷ this row's) on every timed row."""
    sdpa_ms = [r["ms"] for r in rows if "ms" in r and r["impl"].startswith("sdpa_")]
    if sdpa_ms:
        for row in rows:
            if "ms" in row:
                row["vs_best_sdpa"] = min(sdpa_ms) / row["ms"]


def _grads(fn, q, k, v, dout):
    return torch.autograd.grad(fn(q, k, v), (q, k, v), dout)


def _time(fn, inputs, quick) -> float:
    return benchmark(fn, inputs, warmup=2 if quick else 5, reps=3 if quick else 20).median_ms


def _causal_rows(device, quick) -> list[dict[str, Any]]:
    b, h, t, d = (2, 2, 128, 32) if quick else (4, 16, 4096, 128)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    inputs = _inputs((b, h, t, d), 2, device, dtype)
    flops = _causal_flops(b, h, t, d)
    with torch.no_grad():
        ref = _sdpa_backend("math")(*inputs[0])
    impls: dict[str, Callable] = {}
    if device.type == "cuda":
        for name in ("cudnn", "flash", "efficient"):
            impls[f"sdpa_{name}"] = _sdpa_backend(name)
    impls["subq_flash"] = lambda q, k, v: attention(q, k, v, causal=True, backend="flash")
    impls["subq_pallas_flash"] = lambda q, k, v: attention(
        q, k, v, causal=True, backend="pallas_flash"
    )
    rows = []
    fwd_ms: dict[str, float] = {}
    for name, fn in impls.items():
        with torch.no_grad():
            out, err = _try(lambda fn=fn: fn(*inputs[0]))
            if err is not None:
                rows.append({"bench": "attn_causal_fwd", "impl": name, "error": err})
                continue
            ms = _time(fn, inputs, quick)
        fwd_ms[name] = ms
        rows.append(
            {
                "bench": "attn_causal_fwd",
                "impl": name,
                "shape": [b, h, t, d],
                "ms": ms,
                "TFLOP/s": flops / ms / 1e9,
                "rel_err": compute_relative_error(ref, out),
            }
        )
    _add_vs_best_sdpa(rows)

    # The same work under torch.func.vmap over an ensemble axis of 2 (batch b/2 each), checked
    # against the same reference (and the gradients below against the math kernel's).
    e = 2

    def split(x):
        return x.reshape(e, b // e, *x.shape[1:])

    vinputs = [tuple(split(x) for x in xs) for xs in inputs]
    ginputs = [tuple(x.detach().requires_grad_(True) for x in xs) for xs in inputs]
    dout = torch.randn_like(inputs[0][0])
    ref_grads = _grads(_sdpa_backend("math"), *ginputs[0], dout)
    from subq.ops import attention as attention_ops

    def unfolded(q, k, v):
        attention_ops.FOLD_UNDER_VMAP = False
        try:
            return attention(q, k, v, causal=True, backend="flash")
        finally:
            attention_ops.FOLD_UNDER_VMAP = True

    def sdpa_plain(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    for name, fn in (
        ("sdpa_under_vmap", sdpa_plain),
        ("subq_flash_under_vmap", impls["subq_flash"]),
        ("subq_flash_under_vmap_unfolded", unfolded),
    ):
        vfn = torch.func.vmap(fn)
        with torch.no_grad():
            out, err = _try(lambda vfn=vfn: vfn(*vinputs[0]))
            if err is not None:
                rows.append({"bench": "attn_vmap_fwd", "impl": name, "error": err})
                continue
            ms = _time(vfn, vinputs, quick)
        rows.append(
            {
                "bench": "attn_vmap_fwd",
                "impl": name,
                "shape": [e, *vinputs[0][0].shape[1:]],
                "ms": ms,
                "TFLOP/s": flops / ms / 1e9,
                "rel_err": compute_relative_error(split(ref), out),
                "vs_subq_unvmapped": fwd_ms.get("subq_flash", float("nan")) / ms,
            }
        )

    # Per-example gradients: vmap(grad) over the ensemble axis.
    vdout = split(dout)
    for name, fn in (
        ("sdpa_vmap_grad", sdpa_plain),
        ("subq_flash_vmap_grad", impls["subq_flash"]),
        ("subq_flash_vmap_grad_unfolded", unfolded),
    ):

        def loss(q, k, v, do, fn=fn):
            return (fn(q, k, v).float() * do.float()).sum()

        vg = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1, 2)))
        args = [(*xs, vdout) for xs in vinputs]
        grads, err = _try(lambda vg=vg, args=args: vg(*args[0]))
        if err is not None:
            rows.append({"bench": "attn_vmap_grad", "impl": name, "error": err})
            continue
        ms = _time(vg, args, quick)
        rows.append(
            {
                "bench": "attn_vmap_grad",
                "impl": name,
                "ms": ms,
                "TFLOP/s": 3.5 * flops / ms / 1e9,
                "rel_err": max(
                    compute_relative_error(split(r), g)
                    for r, g in zip(ref_grads, grads, strict=True)
                ),
            }
        )
        print(rows[-1], flush=True)

    # Forward + backward.
    bwd_rows = []
    for name, fn in impls.items():
        if name not in fwd_ms:
            continue

        def step(q, k, v, fn=fn):
            return _grads(fn, q, k, v, dout)

        grads, err = _try(lambda step=step: step(*ginputs[0]))
        if err is not None:
            bwd_rows.append({"bench": "attn_fwd_bwd", "impl": name, "error": err})
            continue
        ms = _time(step, ginputs, quick)
        bwd_rows.append(
            {
                "bench": "attn_fwd_bwd",
                "impl": name,
                "shape": [b, h, t, d],
                "ms": ms,
                "TFLOP/s": 3.5 * flops / ms / 1e9,
                "rel_err": max(
                    compute_relative_error(r, g) for r, g in zip(ref_grads, grads, strict=True)
                ),
            }
        )
    _add_vs_best_sdpa(bwd_rows)
    return rows + bwd_rows


def _memory_rows(device, quick) -> list[dict[str, Any]]:
    rows = []
    lengths = (256, 512) if quick else (8192, 16384, 32768)
    h, d = (2, 32) if quick else (16, 128)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for t in lengths:
        q, k, v = _inputs((1, h, t, d), 1, device, dtype)[0]
        for backend in ("memory_efficient", "standard"):
            if backend == "standard" and t > (512 if quick else 8192):
                continue  # the [T, T] scores alone would take 16 · T² · 4 bytes
            fn = lambda q, k, v, b=backend: attention(  # noqa: E731
                q, k, v, causal=True, backend=b, block_size=128 if quick else 1024
            )
            peak = None
            with torch.no_grad():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats(device)
                    base = torch.cuda.memory_allocated(device)
                out, err = _try(lambda fn=fn, q=q, k=k, v=v: fn(q, k, v))
                if err is not None:
                    rows.append({"bench": "attn_memory", "impl": backend, "T": t, "error": err})
                    continue
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
                ms = benchmark(fn, [(q, k, v)], warmup=1, reps=2 if quick else 3).median_ms
            rows.append(
                {
                    "bench": "attn_memory",
                    "impl": backend,
                    "T": t,
                    "peak_MB_above_inputs": peak,
                    "ms": ms,
                    "TFLOP/s": _causal_flops(1, h, t, d) / ms / 1e9,
                }
            )
            del out
    return rows


def _linear_rows(
    device, quick, only: tuple[str, ...] | None = None, fla_limit_s: int = 60
) -> list[dict[str, Any]]:
    """``only``: the implementations to time (default all); ``fla_limit_s``: fla's autotune bound."""
    b, h, t, d = (1, 2, 256, 32) if quick else (4, 16, 16384, 128)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    inputs = _inputs((b, h, t, d), 1, device, dtype)
    impls: dict[str, Callable] = {
        # Dispatched: the Inductor-compiled backend on CUDA, the reference elsewhere.
        "subq_linear_c64": lambda q, k, v: linear_attention(q, k, v, causal=True, chunk_size=64),
        "subq_linear_c64_reference": lambda q, k, v: linear_attention(
            q, k, v, causal=True, chunk_size=64, backend="reference"
        ),
        "sdpa_causal_softmax": lambda q, k, v: F.scaled_dot_product_attention(
            q, k, v, is_causal=True
        ),
    }
    try:
        from fla.ops.linear_attn import chunk_linear_attn

        def fla(q, k, v):
            # fla takes [B, T, H, D] and applies no feature map: apply elu+1 as subq does.
            fq, fk = F.elu(q) + 1, F.elu(k) + 1
            out, _ = chunk_linear_attn(
                fq.transpose(1, 2), fk.transpose(1, 2), v.transpose(1, 2), normalize=True
            )
            return out.transpose(1, 2)

        impls["fla_chunk_linear_attn"] = fla
    except Exception as err:
        fla_err = f"{type(err).__name__}: {err}".splitlines()[0][:120]
        impls["fla_chunk_linear_attn"] = None  # reported below
    if only is not None:
        impls = {name: fn for name, fn in impls.items() if name in only}
    rows = []
    with torch.no_grad():
        ref = linear_attention(
            *(x.float() for x in inputs[0]), causal=True, chunk_size=64, backend="reference"
        )
    times: dict[str, float] = {}
    for name, fn in impls.items():
        if fn is None:
            rows.append({"bench": "linear_attn", "impl": name, "error": fla_err})
            continue
        for mode in ("fwd", "fwd_bwd"):
            if mode == "fwd":
                run = fn
                args = inputs
                ctx = torch.no_grad
            else:
                args = [tuple(x.detach().requires_grad_(True) for x in inputs[0])]
                dout = torch.randn_like(inputs[0][0])

                def run(q, k, v, fn=fn, dout=dout):
                    return torch.autograd.grad(fn(q, k, v), (q, k, v), dout)

                ctx = contextlib.nullcontext
            # fla autotunes its Triton kernels on first use; bound the time it may take.
            limit = fla_limit_s if name.startswith("fla") and device.type == "cuda" else 0
            with ctx(), _alarm(limit):
                out, err = _try(lambda run=run, args=args: run(*args[0]))
                if err is not None:
                    rows.append({"bench": "linear_attn", "impl": name, "mode": mode, "error": err})
                    continue
                ms = _time(run, args, quick)
            times[f"{name}:{mode}"] = ms
            row = {
                "bench": "linear_attn",
                "impl": name,
                "mode": mode,
                "shape": [b, h, t, d],
                "ms": ms,
            }
            if mode == "fwd" and "softmax" not in name:
                row["rel_err"] = compute_relative_error(ref, out.float())
            rows.append(row)
            print(row, flush=True)
    for row in rows:
        if "ms" not in row:
            continue
        mode = row["mode"]
        fla_ms = times.get(f"fla_chunk_linear_attn:{mode}")
        sdpa_ms = times.get(f"sdpa_causal_softmax:{mode}")
        row["fla_ms/ms"] = fla_ms / row["ms"] if fla_ms else float("nan")
        row["sdpa_ms/ms"] = sdpa_ms / row["ms"] if sdpa_ms else float("nan")
    return rows


def _decode_rows(device, quick) -> list[dict[str, Any]]:
    layers, dim, heads = (2, 64, 4) if quick else (12, 1024, 16)
    prompt, steps, max_len = (8, 4, 16) if quick else (512, 32, 1024)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = AttentionConfig(dim=dim, num_heads=heads, causal=True, pos_emb="rope")
    g = torch.Generator(device=device).manual_seed(0)
    params = [
        init_attention(cfg, generator=torch.Generator().manual_seed(i), device=device, dtype=dtype)
        for i in range(layers)
    ]
    rows = []
    for batch in (1, 32) if not quick else (1, 2):
        x = torch.randn(batch, prompt, dim, generator=g, device=device, dtype=dtype)
        caches = [init_kv_cache(cfg, batch, max_len, device=device, dtype=dtype)] * layers

        def stack(x, caches):
            new = []
            for p, c in zip(params, caches):
                y, c = cached_attention(p, x, c, cfg=cfg)
                x = x + y
                new.append(c)
            return x, new

        with torch.no_grad():
            h, caches = stack(x, caches)
            tok = h[:, -1:]
            # Warm-up steps, then timed steps (each a full 12-layer step with the cache).
            for _ in range(2):
                stack(tok, caches)
            if device.type == "cuda":
                torch.cuda.synchronize()
            import time

            t0 = time.perf_counter()
            for _ in range(steps):
                tok, caches = stack(tok, caches)
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
        rows.append(
            {
                "bench": "decode",
                "impl": "subq_cached_attention_eager",
                "layers": layers,
                "d": dim,
                "batch": batch,
                "ms/step": dt / steps * 1e3,
                "tokens/s": batch * steps / dt,
            }
        )
    return rows


@register_benchmark("attention")
def attention_benchmark(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    """All attention rows (see the module docstring)."""
    rows = []
    for part in (_causal_rows, _memory_rows, _linear_rows, _decode_rows):
        rows += part(device, quick)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows
