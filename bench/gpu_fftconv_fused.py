"""The four-step causal FFT convolution on the lent GPU: parity, then speed against its peers.

    source .gpu/base/setup.sh && python3 bench/gpu_fftconv_fused.py     # carry .gpu/base

Parity: the ``fourstep`` backend against a float64 FFT on CUDA (forward and gradients; odd
lengths, per-sample kernels, kernels longer and shorter than the input). Speed: B4 × C1024 × L
bf16 causal convolution with an L-tap kernel and a skip, ``fourstep`` against the eager
``rfft``/``irfft`` baseline (n = 2L, float32) and the ``compiled`` backend, same run; then a
per-step timing of ``fourstep`` at 4k and 16k. Rows go to ``$OUT/fftconv_fourstep.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import triton.testing

from subq.bench.fftconv import _baseline_causal as baseline
from subq.ops import fftconv as ops
from subq.ops._causal_fftconv import causal_fft_conv_fourstep


def rel(a, b):
    # Max-norm relative error against the reference b (the figures in the recorded JSON).
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def parity() -> list[dict]:
    rows = []
    g = torch.Generator(device="cuda").manual_seed(0)
    for b, c, length, taps, per_sample in [
        (2, 3, 1000, 1000, False), (2, 3, 777, 2000, False), (1, 4, 4099, 30, True),
        (2, 2, 40000, 40000, False), (1, 2, 20000, 20000, False), (1, 2, 65536, 65536, False),
        (1, 2, 16384, 16384, False),
    ]:  # fmt: skip
        x = torch.randn(b, c, length, device="cuda", generator=g, dtype=torch.float64)
        shape = (b, c, taps) if per_sample else (c, taps)
        k = torch.randn(*shape, device="cuda", generator=g, dtype=torch.float64) / taps**0.5
        d = torch.randn(c, device="cuda", generator=g, dtype=torch.float64)
        xs, ks, ds = (t.float().requires_grad_() for t in (x, k, d))
        xd, kd, dd = (t.clone().requires_grad_() for t in (x, k, d))
        got = causal_fft_conv_fourstep(xs, ks, ds)
        want = ops.fft_conv_reference(xd, kd, dd, ("causal",))
        gy = torch.randn_like(want)
        g_got = torch.autograd.grad(got, (xs, ks, ds), gy.float())
        g_want = torch.autograd.grad(want, (xd, kd, dd), gy)
        bf = causal_fft_conv_fourstep(x.bfloat16(), k.float(), d.float())
        want_bf = ops.fft_conv_reference(x.bfloat16().double(), k, d, ("causal",))
        row = {
            "shape": f"B{b} C{c} L{length} K{taps}{' per-sample' if per_sample else ''}",
            "fwd_fp32": rel(got, want),
            "grads_fp32": [rel(a, w) for a, w in zip(g_got, g_want, strict=True)],
            "fwd_bf16": rel(bf, want_bf),
        }
        print("parity", row, flush=True)
        rows.append(row)
    return rows


def speed() -> list[dict]:
    rows = []
    for length in (1024, 4096, 16384, 65536):
        g = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(4, 1024, length, device="cuda", generator=g).bfloat16()
        k = torch.randn(1024, length, device="cuda", generator=g) / length**0.5
        d = torch.randn(1024, device="cuda", generator=g)
        want = baseline(x[:, :64].double(), k[:64].double(), d[:64].double())
        impls = {
            "baseline rfft n=2L fp32": lambda x=x, k=k, d=d: baseline(x, k, d),
            "subq compiled": lambda x=x, k=k, d=d: ops._fft_conv_compiled(x, k, d, ("causal",)),
            "subq fourstep": lambda x=x, k=k, d=d: causal_fft_conv_fourstep(x, k, d),
        }
        base_ms = None
        for name, fn in impls.items():
            e = rel(fn()[:, :64], want)
            ms = triton.testing.do_bench(fn, warmup=5, rep=50)
            base_ms = base_ms or ms
            row = {"impl": name, "L": length, "ms": ms, "x_baseline": base_ms / ms, "rel_err": e}
            rows.append(row)
            print(f"{name:26s} L{length:6d} {ms:8.4f} ms  x{base_ms / ms:5.2f}  err {e:.2e}",
                  flush=True)  # fmt: skip
        # forward + backward (x, kernel and skip all need gradients)
        leaves = [
            x.clone().requires_grad_(),
            k.clone().requires_grad_(),
            d.clone().requires_grad_(),
        ]
        gy = torch.randn_like(x)
        for name, conv in [
            ("subq compiled", lambda *a: ops._fft_conv_compiled(*a, ("causal",))),
            ("subq fourstep", causal_fft_conv_fourstep),
        ]:
            ms = triton.testing.do_bench(
                lambda conv=conv, leaves=leaves, gy=gy: torch.autograd.grad(
                    conv(*leaves), leaves, gy
                ),
                warmup=3,
                rep=30,
            )
            rows.append({"impl": name + " fwd+bwd", "L": length, "ms": ms})
            print(f"{name + ' fwd+bwd':26s} L{length:6d} {ms:8.4f} ms", flush=True)
    return rows


def steps(length: int) -> None:
    """Each step of the pipeline on its own, with its bandwidth."""
    from subq.ops import _causal_fftconv as fs
    from subq.ops import _causal_fftconv_kernel as kern

    x = torch.randn(4, 1024, length, device="cuda").bfloat16()
    k = torch.randn(1024, length, device="cuda") / length**0.5
    d = torch.randn(1024, device="cuda")
    n1, n2 = fs.fourstep_plan(length)
    g, t = fs._real_tables(n1, n2, x.device)
    both = torch.fft.fft(kern.twist_dft(x, k, d, length, g, t, n1, n2), dim=-1)
    s, h = both[: 4 * 1024], both[4 * 1024 :]
    cplx = s.numel() * 8
    for name, fn, nbytes in [
        ("twist x + kernel", lambda: kern.twist_dft(x, k, d, length, g, t, n1, n2),
         x.numel() * 2 + k.numel() * 4 + both.numel() * 8),
        ("fft rows", lambda: torch.fft.fft(both, dim=-1), 2 * both.numel() * 8),
        ("cmul", lambda: kern.cmul_(s, h), 2 * cplx + h.numel() * 8),
        ("ifft rows", lambda: torch.fft.ifft(s, dim=-1, norm="forward"), 2 * cplx),
        ("untwist", lambda: kern.untwist_idft(s, g, t, length, x.dtype, 1.0), cplx + 2 * x.numel()),
    ]:  # fmt: skip
        ms = triton.testing.do_bench(fn, warmup=5, rep=40)
        print(f"step L{length} {name:14s} {ms:.4f} ms {nbytes / ms / 1e9:.2f} TB/s", flush=True)


def main() -> None:
    out = Path(os.environ.get("OUT", "out"))
    out.mkdir(parents=True, exist_ok=True)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    result["parity"] = parity()
    result["speed"] = speed()
    (out / "fftconv_fourstep.json").write_text(json.dumps(result, indent=1))
    for length in (4096, 16384):
        steps(length)


if __name__ == "__main__":
    main()
