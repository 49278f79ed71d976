"""FFT long-convolution benchmarks: subq's ``fft_conv`` / gated Hyena convolution against the
straightforward ``torch.fft`` implementation, and the Hyena layer against SDPA attention.

``fftconv`` (issue 5):

* causal 1D, ``B4 × C1024 × L`` (channels first), bf16 in/out, per-channel kernel of ``L`` taps and
  a skip ``D``: the baseline is ``irfft(rfft(x.float(), n=2L) · rfft(k, n=2L))[:L] + D x`` in
  eager PyTorch; subq as dispatched (``fourstep`` on CUDA), over channel chunks (a smaller
  working set), and its ``reference`` and ``compiled`` backends;
* the gated form Hyena uses, channels last ``[B, L, C]``: ``(K ∗ z + D z) ⊙ σ(v)``,
  ``z = q ⊙ σ(k)``; the baseline is the same eager formula with the ``rfft`` convolution; subq
  as dispatched and its ``reference`` and ``compiled`` backends;
* 2D "same" (zero-padded) convolution ``B8 × C256 × 256²`` with a kernel as large as the input:
  the baseline uses ``rfft2`` with ``s = 2N``; subq the smallest exact size (``N + K//2``,
  rounded to a 2·3·5·7-smooth length).

Bytes counted are the bf16 input and output (``4`` bytes per element; ``8`` for the gated form,
which reads q, k, v and writes y); ``frac_copy`` divides the effective bandwidth by the copy
bandwidth measured in the same run. Every implementation is checked against the float64
reference on the first input before timing (``rel_err``).

``hyena_vs_sdpa``: the Hyena layer forward (causal, batch 1, width 1024) against SDPA causal
attention with 8 heads of 128 over the same width, for growing ``L``; rows report both times and
their ratio. Lengths run while a time budget lasts. ``hyena_vs_sdpa_train``: the same with the
backward (gradients of q, k, v, and of the Hyena layer's parameters).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import torch

from subq.bench.harness import (
    benchmark,
    copy_bandwidth,
    register_benchmark,
    rotation_count,
    tensor_bytes,
)
from subq.functional.fftconv import fft_conv
from subq.ops import fftconv as ops
from subq.testing import compute_relative_error


def _baseline_causal(x: torch.Tensor, k: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    n = 2 * x.shape[-1]
    xf = x.float()
    spec = torch.fft.rfft(xf, n=n) * torch.fft.rfft(k.float(), n=n)
    y = torch.fft.irfft(spec, n=n)[..., : x.shape[-1]] + xf * d.float()[:, None]
    return y.to(x.dtype)


def _baseline_gated(q, k, v, kern, d) -> torch.Tensor:
    z = (q.float() * torch.sigmoid(k.float())).transpose(1, 2)
    h = _baseline_causal(z, kern, d).transpose(1, 2)
    return (h * torch.sigmoid(v.float())).to(q.dtype)


def _baseline_same_2d(x: torch.Tensor, k: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    kh, kw = k.shape[-2:]
    s = (2 * h, 2 * w)
    spec = torch.fft.rfft2(x.float(), s=s) * torch.fft.rfft2(k.float(), s=s)
    full = torch.fft.irfft2(spec, s=s)
    y = full[..., kh // 2 : kh // 2 + h, kw // 2 : kw // 2 + w] + x.float() * d[:, None, None]
    return y.to(x.dtype)


_GRAPHS: dict[tuple, Any] = {}


def _chunked_graph(x: torch.Tensor, k: torch.Tensor, d: torch.Tensor, chunk: int) -> torch.Tensor:
    """Experiment: all channel chunks in one compiled graph replayed as a CUDA graph, so each
    chunk's float32 buffers can stay in L2 without paying a Python launch per chunk."""
    plans = ops.fft_conv_plan((x.shape[-1],), (k.shape[-1],), ("causal",))
    sizes = tuple(p.fft_size for p in plans)
    kspec = ops.kernel_spectrum(k, plans)
    key = (tuple(x.shape), chunk)
    if key not in _GRAPHS:

        def run(x, kspec, d):
            outs = [
                ops._conv_core(
                    x[:, s : s + chunk], kspec[s : s + chunk], d[s : s + chunk], sizes, x.dtype
                )
                for s in range(0, x.shape[1], chunk)
            ]
            return torch.cat(outs, dim=1)

        _GRAPHS[key] = torch.compile(run, fullgraph=True, dynamic=False, mode="reduce-overhead")
    return _GRAPHS[key](x, kspec, d).clone()


def _half_spectra(x: torch.Tensor, k: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Experiment: cuFFT in float16 (complex32 spectra), scaled so no intermediate overflows.

    x is pre-scaled by 1/√n; the spectral product is formed in float32 and scaled by 1/√n;
    the inverse runs unnormalised. Not a library path: its error is reported next to its time.
    """
    length = x.shape[-1]
    n = 2 * length
    a = n**-0.5
    xs = torch.fft.rfft((x.float() * a).half(), n=n)
    ks = torch.fft.rfft(k.float(), n=n) * a
    xr = torch.view_as_real(xs).float()
    kr = torch.view_as_real(ks)
    re = xr[..., 0] * kr[..., 0] - xr[..., 1] * kr[..., 1]
    im = xr[..., 0] * kr[..., 1] + xr[..., 1] * kr[..., 0]
    prod = torch.view_as_complex(torch.stack((re, im), -1).half())
    y = torch.fft.irfft(prod, n=n, norm="forward")[..., :length].float()
    return (y + x.float() * d[:, None]).to(x.dtype)


def _row(bench, impl, shape, timing, nbytes, copy_bw, err, base_ms=None) -> dict[str, Any]:
    tbs = nbytes / (timing.median_ms * 1e-3) / 1e12
    row = {
        "bench": bench,
        "impl": impl,
        "shape": shape,
        "ms": round(timing.median_ms, 4),
        "p10_ms": round(timing.p10_ms, 4),
        "p90_ms": round(timing.p90_ms, 4),
        "TB/s": round(tbs, 3),
        "frac_copy": round(tbs * 1e12 / copy_bw, 3),
        "rel_err": float(f"{err:.2e}"),
    }
    if base_ms is not None:
        row["speedup_vs_baseline"] = round(base_ms / timing.median_ms, 2)
    return row


def _time_impls(bench, shape, impls, make_inputs, ref_fn, nbytes, device, copy_bw, reps):
    first = make_inputs(0)
    per_set = tensor_bytes(*[t for t in first if isinstance(t, torch.Tensor)])
    sets = [first] + [make_inputs(i) for i in range(1, rotation_count(per_set, device))]
    with torch.no_grad():
        ref = ref_fn(*[t.double() if t.is_floating_point() else t for t in first])
    rows, base_ms = [], None
    for name, fn in impls:
        try:
            with torch.no_grad():
                err = compute_relative_error(ref, fn(*first))
                timing = benchmark(fn, sets, warmup=3, reps=reps)
        except Exception as exc:  # report, keep going: one failing variant must not hide others
            rows.append({"bench": bench, "impl": name, "shape": shape, "error": repr(exc)[:200]})
            continue
        if base_ms is None:
            base_ms = timing.median_ms
        rows.append(_row(bench, name, shape, timing, nbytes, copy_bw, err, base_ms))
        print(rows[-1], flush=True)
    return rows


def _reference_conv(x, k, d, modes):
    return ops.fft_conv_reference(x, k, d, modes)


@register_benchmark("fftconv")
def bench_fftconv(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    copy_bw = copy_bandwidth(device)
    reps = 5 if quick else 20
    rows: list[dict[str, Any]] = []
    batch, channels = (2, 8) if quick else (4, 1024)
    lengths = (64, 256) if quick else (4096, 16384, 65536)
    for length in lengths:
        shape = f"B{batch} C{channels} L{length}"

        def make(i, length=length):
            g = torch.Generator(device=device).manual_seed(i)
            x = torch.randn(batch, channels, length, generator=g, device=device)
            k = torch.randn(channels, length, generator=g, device=device) / math.sqrt(length)
            d = torch.randn(channels, generator=g, device=device)
            return x.bfloat16(), k, d

        impls = [
            ("baseline rfft n=2L fp32", _baseline_causal),
            (
                "subq reference",
                lambda x, k, d: fft_conv(x, k, d, mode="causal", backend="reference"),
            ),
        ]
        if device.type == "cuda":
            impls += [
                ("subq fourstep (dispatched)", lambda x, k, d: fft_conv(x, k, d, mode="causal")),
                (
                    "subq fourstep, chunks of 128 ch",
                    lambda x, k, d: fft_conv(x, k, d, mode="causal", chunk_size=128),
                ),
                (
                    "subq compiled",
                    lambda x, k, d: fft_conv(x, k, d, mode="causal", backend="compiled"),
                ),
            ]
            if length <= 16384 and os.environ.get("SUBQ_BENCH_EXPERIMENTS"):
                # Measured once (docs/benchmarks.md); neither beat "subq compiled".
                impls += [
                    (
                        "exp: one graph, 32-ch chunks, cudagraph",
                        lambda x, k, d: _chunked_graph(x, k, d, 32),
                    ),
                    (
                        "exp: one graph, 128-ch chunks, cudagraph",
                        lambda x, k, d: _chunked_graph(x, k, d, 128),
                    ),
                    ("exp: fp16 cuFFT (complex32)", _half_spectra),
                ]
        nbytes = 4 * batch * channels * length
        rows += _time_impls(
            "causal 1D fft conv",
            shape,
            impls,
            make,
            lambda x, k, d: _reference_conv(x, k, d, ("causal",)),
            nbytes,
            device,
            copy_bw,
            reps,
        )
    for length in lengths[:2]:
        shape = f"B{batch} L{length} C{channels} (channels last)"

        def make_gated(i, length=length):
            g = torch.Generator(device=device).manual_seed(100 + i)
            q, k, v = (
                torch.randn(batch, length, channels, generator=g, device=device).bfloat16()
                for _ in range(3)
            )
            kern = torch.randn(channels, length, generator=g, device=device) / math.sqrt(length)
            d = torch.randn(channels, generator=g, device=device)
            return q, k, v, kern, d

        def subq_gated(q, k, v, kern, d, backend=None):
            op = ops.gated_fft_conv_op
            facts = {
                "device": q.device,
                "dtype": q.dtype,
                "modes": ("causal",),
                "length": q.shape[1],
                "spatial": tuple(q.shape[1:-1]),
                "kernel_dtype": kern.dtype,
            }
            return op.select(facts, backend)(q, k, v, kern, d, ("causal",), "sigmoid", None)

        impls = [
            ("baseline eager gates + rfft", _baseline_gated),
            ("subq gated reference", lambda *a: subq_gated(*a, backend="reference")),
        ]
        if device.type == "cuda":
            impls.append(("subq gated fourstep (dispatched)", subq_gated))
            impls.append(("subq gated compiled", lambda *a: subq_gated(*a, backend="compiled")))
        rows += _time_impls(
            "gated causal conv (Hyena)",
            shape,
            impls,
            make_gated,
            lambda q, k, v, kern, d: ops.gated_fft_conv_reference(q, k, v, kern, d, ("causal",)),
            8 * batch * channels * length,
            device,
            copy_bw,
            reps,
        )
    b2, c2, n2 = (2, 4, 16) if quick else (8, 256, 256)
    for ksize in (n2, 2 * n2 - 1):
        shape = f"B{b2} C{c2} {n2}x{n2}, kernel {ksize}x{ksize}"

        def make2(i, ksize=ksize):
            g = torch.Generator(device=device).manual_seed(200 + i)
            x = torch.randn(b2, c2, n2, n2, generator=g, device=device).bfloat16()
            k = torch.randn(c2, ksize, ksize, generator=g, device=device) / ksize
            d = torch.randn(c2, generator=g, device=device)
            return x, k, d

        impls = [
            ("baseline rfft2 s=2N fp32", _baseline_same_2d),
            ("subq reference", lambda x, k, d: fft_conv(x, k, d, mode="zero", backend="reference")),
        ]
        if device.type == "cuda":
            impls += [
                ("subq fourstep (dispatched)", lambda x, k, d: fft_conv(x, k, d, mode="zero")),
                (
                    "subq compiled",
                    lambda x, k, d: fft_conv(x, k, d, mode="zero", backend="compiled"),
                ),
            ]
        rows += _time_impls(
            "2D same fft conv",
            shape,
            impls,
            make2,
            lambda x, k, d: _reference_conv(x, k, d, ("zero", "zero")),
            4 * b2 * c2 * n2 * n2,
            device,
            copy_bw,
            reps,
        )
    return rows


_sdpa = torch.nn.functional.scaled_dot_product_attention


def _hyena_vs_sdpa_row(device, dtype, length, width, heads, train) -> dict[str, Any]:
    """One length: the Hyena layer and SDPA (and, forward only, at four lengths on CUDA, the
    compiled layer)."""
    from subq.nn.hyena import Hyena

    g = torch.Generator().manual_seed(0)
    layer = Hyena(hidden_dim=width, max_size=length, device=device, dtype=dtype, generator=g)
    layer.requires_grad_(train)
    g = torch.Generator(device=device).manual_seed(1)
    shape = (1, length, width)
    q, k, v = (
        torch.randn(shape, generator=g, device=device, dtype=dtype, requires_grad=train)
        for _ in range(3)
    )
    heads_view = (1, length, heads, width // heads)
    qh, kh, vh = (t.view(heads_view).transpose(1, 2) for t in (q, k, v))
    dy = torch.randn(shape, generator=g, device=device, dtype=dtype)
    leaves = (q, k, v, *layer.parameters())

    def hyena_step(fn):
        y = fn(q, k, v)
        return torch.autograd.grad(y, leaves, dy) if train else y

    def sdpa_step():
        y = _sdpa(qh, kh, vh, is_causal=True)
        return (
            torch.autograd.grad(y, (q, k, v), dy.view(heads_view).transpose(1, 2)) if train else y
        )

    reps = 3 if length >= 2**18 else 10
    with torch.set_grad_enabled(train):
        t_h = benchmark(hyena_step, [(layer,)], warmup=2, reps=reps, device=device)
        t_a = benchmark(
            sdpa_step, [()], warmup=1, reps=1 if length >= 2**19 else reps, device=device
        )
    row = {
        "hyena_ms": round(t_h.median_ms, 3),
        "sdpa_ms": round(t_a.median_ms, 3),
        "sdpa/hyena": round(t_a.median_ms / t_h.median_ms, 2),
    }
    if not train and device.type == "cuda" and length in (4096, 16384, 32768, 65536):
        # The whole layer under torch.compile (kernel network included): less launch overhead.
        compiled = torch.compile(layer, fullgraph=True)
        with torch.no_grad():
            t_c = benchmark(hyena_step, [(compiled,)], warmup=2, reps=reps, device=device)
        row["hyena_compiled_ms"] = round(t_c.median_ms, 3)
        row["sdpa/hyena_compiled"] = round(t_a.median_ms / t_c.median_ms, 2)
    return row


def _hyena_vs_sdpa(device: torch.device, quick: bool, train: bool) -> list[dict[str, Any]]:
    """Rows of ``hyena_vs_sdpa`` (forward, no autograd) or ``hyena_vs_sdpa_train`` (forward and
    backward: gradients of q, k, v and, for Hyena, of every parameter of the layer)."""
    bench = f"hyena vs sdpa ({'fwd+bwd' if train else 'fwd'}, B1)"  # timed rows and budget row
    width, heads = (32, 2) if quick else (1024, 8)
    lengths = (64, 256) if quick else tuple(2**p for p in range(10, 21))
    budget_s = 5 if quick else 80
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for length in lengths:
        if time.perf_counter() - start > budget_s:
            rows.append({"bench": bench, "shape": f"L{length}", "error": "time budget"})
            break
        row = _hyena_vs_sdpa_row(device, dtype, length, width, heads, train)
        rows.append({"bench": bench, "shape": f"L{length} C{width} H{heads}", **row})
        print(rows[-1], flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


@register_benchmark("hyena_vs_sdpa")
def bench_hyena_vs_sdpa(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    return _hyena_vs_sdpa(device, quick, train=False)


@register_benchmark("hyena_vs_sdpa_train")
def bench_hyena_vs_sdpa_train(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    return _hyena_vs_sdpa(device, quick, train=True)
