"""The folded four-step 2D "same" FFT convolution on the lent GPU: parity, speed, per-step times.

    source .gpu/base/setup.sh && python3 bench/gpu_fftconv2d.py     # carry .gpu/base

Parity: ``same_fft_conv2d`` (the ``fourstep`` backend for two ``"zero"`` axes) against a float64
FFT on CUDA, forward and gradients (odd sizes, kernels shorter and longer than the input,
per-sample kernels), bf16 forward. Speed (``triton.testing.do_bench``, L2 flushed):
B8 × C256 × 256² bf16 with a 256² and a 511² kernel and a skip, against the eager ``rfft2``
baseline (``s = 2N``, float32) and the ``compiled`` backend, same run; forward + backward too.
Then the time of each of the five steps. Rows go to ``$OUT/fftconv2d_fourstep.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import triton.testing

from subq.bench.fftconv import _baseline_same_2d as baseline
from subq.ops import _same_fftconv2d as s2
from subq.ops import fftconv as ops
from subq.ops._causal_fftconv_kernel import cmul_

MODES = ("zero", "zero")


def rel(a, b):
    # Max-norm relative error against the reference b.
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def parity() -> list[dict]:
    rows = []
    g = torch.Generator(device="cuda").manual_seed(0)
    for b, c, h, w, kh, kw, per_sample in [
        (2, 3, 64, 64, 64, 64, False), (2, 3, 37, 53, 11, 101, False), (1, 4, 100, 17, 201, 5, True),
        (2, 2, 256, 256, 256, 256, False), (1, 2, 256, 256, 511, 511, True),
    ]:  # fmt: skip
        x = torch.randn(b, c, h, w, device="cuda", generator=g, dtype=torch.float64)
        shape = (b, c, kh, kw) if per_sample else (c, kh, kw)
        k = torch.randn(*shape, device="cuda", generator=g, dtype=torch.float64) / (kh * kw) ** 0.5
        d = torch.randn(c, device="cuda", generator=g, dtype=torch.float64)
        xs, ks, ds = (t.float().requires_grad_() for t in (x, k, d))
        xd, kd, dd = (t.clone().requires_grad_() for t in (x, k, d))
        got = s2.same_fft_conv2d(xs, ks, ds)
        want = ops.fft_conv_reference(xd, kd, dd, MODES)
        gy = torch.randn_like(want)
        g_got = torch.autograd.grad(got, (xs, ks, ds), gy.float())
        g_want = torch.autograd.grad(want, (xd, kd, dd), gy)
        bf = s2.same_fft_conv2d(x.bfloat16(), k.float(), d.float())
        rows.append({
            "case": f"B{b} C{c} {h}x{w} K{kh}x{kw}" + (" per-sample" if per_sample else ""),
            "fwd": rel(got, want), "bf16_fwd": rel(bf, want),
            "dx": rel(g_got[0], g_want[0]), "dk": rel(g_got[1], g_want[1]),
            "dskip": rel(g_got[2], g_want[2]),
        })  # fmt: skip
        print("parity", rows[-1], flush=True)
    return rows


def _inputs(i, ksize, n=256, b=8, c=256):
    g = torch.Generator(device="cuda").manual_seed(200 + i)
    x = torch.randn(b, c, n, n, generator=g, device="cuda").bfloat16()
    k = torch.randn(c, ksize, ksize, generator=g, device="cuda") / ksize
    d = torch.randn(c, generator=g, device="cuda")
    return x, k, d


def _fwd_ms(fn, args) -> float:
    fn(*args)
    return triton.testing.do_bench(lambda: fn(*args), warmup=25, rep=200)


def _fwd_bwd_ms(fn, args) -> float:
    leaves = tuple(t.clone().requires_grad_() for t in args)
    gy = torch.randn_like(args[0])

    def step():
        torch.autograd.grad(fn(*leaves), leaves, gy)

    step()
    return triton.testing.do_bench(step, warmup=10, rep=200)


def speed() -> list[dict]:
    rows = []
    impls = {
        "baseline rfft2 s=2N": baseline,
        "fourstep": lambda x, k, d: ops._fft_conv_fourstep(x, k, d, MODES),
        "compiled": lambda x, k, d: ops._fft_conv_compiled(x, k, d, MODES),
    }
    for ksize in (256, 511):
        args = _inputs(0, ksize)
        for timer, suffix in ((_fwd_ms, ""), (_fwd_bwd_ms, " fwd+bwd")):
            base = None
            for name, fn in impls.items():
                ms = timer(fn, args)
                base = base or ms
                row = {"kernel": ksize, "impl": name + suffix, "ms": ms, "speedup": base / ms}
                rows.append(row)
                print("speed", row, flush=True)
    return rows


def steps(ksize: int) -> list[dict]:
    x, k, d = _inputs(0, ksize)
    s0 = (ksize // 2, ksize // 2)
    plan = s2.window_plan((256, 256), (ksize, ksize), s0, (256, 256))
    _, n2, q = plan
    spec = s2._spectrum(k, s0, plan)
    s = s2._fold_dft(x, (0, 0), plan)
    c = torch.fft.ifft2(s, norm="forward")
    gb = s.numel() * 8 / 1e9
    timed = {
        "1 fold+column DFT": (lambda: s2._fold_dft(x, (0, 0), plan), x.numel() * 2 / 1e9 + gb),
        "2 fft2": (lambda: torch.fft.fft2(s), 2 * gb),
        "3 product": (lambda: cmul_(s, spec), 2 * gb + spec.numel() * 8 / 1e9),
        "4 ifft2": (lambda: torch.fft.ifft2(s, norm="forward"), 2 * gb),
        "5 unfold+inverse DFT+skip": (
            lambda: s2._unfold_idft(c, x, d, (256, 256), x.dtype),
            gb + 2 * x.numel() * 2 / 1e9,
        ),
        "kernel spectrum": (lambda: s2._spectrum(k, s0, plan), None),
    }
    rows = []
    for name, (fn, gbytes) in timed.items():
        ms = triton.testing.do_bench(fn, warmup=25, rep=100)
        row = {"kernel": ksize, "step": name, "ms": ms, "N2": n2, "Q": q}
        if gbytes:
            row["TB/s"] = gbytes / ms
        rows.append(row)
        print("step", row, flush=True)
    return rows


def main() -> None:
    if os.environ.get("STEPS_ONLY"):
        print(json.dumps(steps(256) + steps(511), indent=1))
        return
    out = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "parity": parity(),
        "speed": speed(),
        "steps": steps(256) + steps(511),
    }
    path = Path(os.environ.get("OUT", ".")) / "fftconv2d_fourstep.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"\n{'kernel':>6}  {'impl':<28} {'ms':>8}  {'× baseline':>10}")
    for r in out["speed"]:
        print(f"{r['kernel']:>6}  {r['impl']:<28} {r['ms']:8.3f}  {r['speedup']:10.2f}")


if __name__ == "__main__":
    main()
