"""Norm ops on the lent GPU: parity of every CUDA backend with the reference, then timings.

Stage 1 (no quack): the ``torch`` backends against the reference, then the benchmarks.
Stage 2 (quack installed): the ``quack`` backends (forward and gradients) against the reference,
dispatch, ``torch.compile(fullgraph=True)`` and ``vmap`` of the quack path, then the benchmarks.
Stage 3 (no quack): the torch backends again, compile and vmap of the CUDA path, and the per-call
Python cost of the quack wrappers measured on the host's CPU.

    source .gpu/base/setup.sh stage && python3 bench/gpu_norm.py --stage 1   # carry base, quack_a
    source .gpu/base/setup.sh quack && python3 bench/gpu_norm.py --stage 2   # carry base, quack_b

Each error is a relative Frobenius error; a backend passes if its error against a float64 oracle
is at most twice the reference's own (float32 math, one rounding to the output dtype) plus 1e-6.
Results go to ``$OUT`` as JSON, after every step, so a timeout keeps what was done.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from pathlib import Path

import torch

T0 = time.time()
OUT = Path(os.environ.get("OUT", "out"))
CHECKS: list[dict] = []
# A CPU dry run of this script (--device cpu --backend reference) checks the script itself.
DEV = "cuda"


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def save() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "norm_checks.json").write_text(json.dumps(CHECKS, indent=1) + "\n")


def record(name: str, ok: bool, **info) -> None:
    CHECKS.append({"check": name, "ok": bool(ok), **info})
    log(f"{'PASS' if ok else 'FAIL'} {name} {info}")
    save()


def parity(kind: str, backend: str, dtype, shape, wdtype, bias: bool, eps: float = 1e-6) -> None:
    from subq.ops.norm import layer_norm_op, layer_norm_reference, rms_norm_op, rms_norm_reference
    from subq.testing import compute_relative_error

    op, ref = (
        (rms_norm_op, lambda x, w, b: rms_norm_reference(x, w, eps))
        if kind == "rms_norm"
        else (layer_norm_op, lambda x, w, b: layer_norm_reference(x, w, b, eps))
    )
    g = torch.Generator(device="cpu").manual_seed(1)
    n = shape[-1]
    x64 = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.3
    w64 = 1 + 0.2 * torch.randn(n, generator=g, dtype=torch.float64) if wdtype else None
    b64 = 0.1 * torch.randn(n, generator=g, dtype=torch.float64) if bias else None
    dy64 = torch.randn(shape, generator=g, dtype=torch.float64)
    # Round inputs to their dtypes first, so oracle, reference and backend see the same values.
    x = x64.to(dtype).to(DEV)
    w = w64.to(wdtype).to(DEV) if w64 is not None else None
    b = b64.to(wdtype).to(DEV) if b64 is not None else None
    dy = dy64.to(dtype).to(DEV)
    facts = {"device": x.device, "dtype": dtype, "n": n, "weight_ndim": 0 if w is None else 1}
    fn = op.select(facts, backend)

    def run(f, x, w, b, dy):
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, w, b) if t is not None]
        it = iter(leaves)
        args = [next(it) if t is not None else None for t in (x, w, b)]
        y = f(*args)
        return [y.detach(), *torch.autograd.grad(y, leaves, dy)]

    oracle = run(ref, *(t.double() if t is not None else None for t in (x, w, b, dy)))
    reference = run(ref, x, w, b, dy)
    if kind == "layer_norm":
        got = run(lambda x, w, b: fn(x, w, b, eps), x, w, b, dy)
    else:
        got = run(lambda x, w, b: fn(x, w, eps), x, w, b, dy)
    names = ["y", "dx", "dw", "db"][: len(got)]
    worst_ratio, errs = 0.0, {}
    ok = all(g_.dtype == r.dtype and g_.shape == r.shape for g_, r in zip(got, reference))
    for name, o, r, g_ in zip(names, oracle, reference, got, strict=True):
        e_ref, e_got = compute_relative_error(o, r), compute_relative_error(o, g_)
        e_vs_ref = compute_relative_error(r, g_)
        errs[name] = {
            "ref_vs_oracle": e_ref,
            "backend_vs_oracle": e_got,
            "backend_vs_ref": e_vs_ref,
        }
        ok = ok and e_got <= 2 * e_ref + 1e-6
        worst_ratio = max(worst_ratio, e_got / max(e_ref, 1e-12))
    label = (
        f"{kind}/{backend} {str(dtype)[6:]} x{tuple(shape)} "
        f"w={str(wdtype)[6:] if wdtype else None} bias={bias}"
    )
    record(label, ok, worst_err_ratio=round(worst_ratio, 3), errors=errs)


def step(name: str, fn, *args) -> None:
    try:
        fn(*args)
    except Exception as err:
        traceback.print_exc()
        record(name, False, error=f"{type(err).__name__}: {err}"[:500])


def parity_suite(backend: str) -> None:
    bf16, f16, f32 = torch.bfloat16, torch.float16, torch.float32
    cases = [
        ("rms_norm", bf16, (512, 4096), bf16, False),
        ("rms_norm", bf16, (3, 170, 1000), f32, False),
        ("rms_norm", f16, (256, 2048), None, False),
        ("rms_norm", f32, (256, 8192), f32, False),
        ("layer_norm", bf16, (512, 4096), bf16, True),
        ("layer_norm", f32, (3, 170, 1000), f32, False),
        ("layer_norm", bf16, (256, 8192), f32, True),
    ]
    if backend == "torch":
        cases.append(("layer_norm", bf16, (256, 1024), None, False))
    for kind, dtype, shape, wdtype, bias in cases:
        step(f"{kind}/{backend} parity", parity, kind, backend, dtype, shape, wdtype, bias)


def dispatch_check() -> None:
    import subq.ops as ops

    facts = {"device": "cuda", "dtype": torch.bfloat16, "n": 4096, "weight_ndim": 1}
    for op in ("rms_norm", "layer_norm"):
        text = ops.explain(op, **facts)
        log(text)
        with ops.strict():
            chosen = ops.get_op(op).decide(facts).chosen
        record(f"{op} dispatch on cuda bf16 (strict)", chosen == "quack", chosen=chosen)


def compile_and_vmap_check() -> None:
    from subq.functional.norm import LayerNormParams, RMSNormParams, layer_norm, rms_norm
    from subq.ops.norm import layer_norm_reference, rms_norm_reference
    from subq.testing import compute_relative_error

    g = torch.Generator(device="cpu").manual_seed(2)
    x = torch.randn(4, 64, 1024, generator=g).to(DEV).bfloat16()
    w = (1 + 0.1 * torch.randn(1024, generator=g)).to(DEV).bfloat16()
    b = (0.1 * torch.randn(1024, generator=g)).to(DEV).bfloat16()

    def f(x, w, b):
        rp, lp = RMSNormParams(weight=w), LayerNormParams(weight=w, bias=b)
        return rms_norm(rp, x) * layer_norm(lp, x, eps=1e-6)

    breaks = torch._dynamo.explain(f)(x, w, b).graph_break_count
    compiled = torch.compile(f, fullgraph=True)
    leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
    eager_leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
    y_c, y_e = compiled(*leaves), f(*eager_leaves)
    g_c = torch.autograd.grad(y_c.float().square().sum(), leaves)
    g_e = torch.autograd.grad(y_e.float().square().sum(), eager_leaves)
    errs = [compute_relative_error(y_e, y_c)] + [
        compute_relative_error(a, c) for a, c in zip(g_e, g_c, strict=True)
    ]
    record("compile(fullgraph) of rms_norm*layer_norm", breaks == 0 and max(errs) < 1e-2,
           graph_breaks=breaks, errors=errs)  # fmt: skip

    xs = torch.randn(3, 32, 512, generator=g).to(DEV)
    w32 = (1 + 0.1 * torch.randn(512, generator=g)).to(DEV)
    b32 = (0.1 * torch.randn(512, generator=g)).to(DEV)

    def loss(x, w, b):
        return (
            rms_norm(RMSNormParams(weight=w), x) * layer_norm(LayerNormParams(weight=w, bias=b), x)
        ).sum()

    def ref_loss(x, w, b):
        return (rms_norm_reference(x, w, 1e-6) * layer_norm_reference(x, w, b, 1e-5)).sum()

    got = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1, 2)), in_dims=(0, None, None))(
        xs, w32, b32
    )
    worst = 0.0
    for i in range(3):
        want = torch.func.grad(ref_loss, argnums=(0, 1, 2))(xs[i], w32, b32)
        worst = max(worst, *(compute_relative_error(r, gi[i]) for r, gi in zip(want, got)))
    record("vmap(grad) of the CUDA path vs reference, fp32", worst < 1e-5, worst_err=worst)


def overhead_check() -> None:
    """Per-call Python cost of the quack backend's wrappers, on tiny CPU tensors (CPU kernels)."""
    import torch.nn.functional as F

    import subq.ops.norm as on

    x = torch.randn(4, 64, requires_grad=True)
    w = torch.ones(64, requires_grad=True)
    dy = torch.randn(4, 64)

    def per_call_us(fn, n=2000):
        for _ in range(50):
            fn()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n * 1e6

    def fwd_bwd(fn):
        return lambda: torch.autograd.grad(fn(), (x, w), dy)

    paths = {
        "F.rms_norm": lambda: F.rms_norm(x, (64,), w, 1e-6),
        "eager path": lambda: on._RMSNormEager.apply(x, w, 1e-6),
        "transform path": lambda: on._RMSNormFused.apply(x, w, 1e-6)[0],
    }
    timings = {}
    for name, fn in paths.items():
        with torch.no_grad():
            fwd = per_call_us(fn)
        timings[name] = {"fwd_us": round(fwd, 1), "fwd+bwd_us": round(per_call_us(fwd_bwd(fn)), 1)}
    record("per-call overhead on this host (CPU tensors 4x64)", True, **timings)


def benchmarks(names: list[str]) -> None:
    from subq.bench import run_benchmarks

    for name in names:
        log(f"benchmark {name}")
        step(f"benchmark {name}", run_benchmarks, [name], None, OUT)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", type=int, choices=(1, 2, 3), required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backend", help="override the backend under test (dry runs)")
    args = parser.parse_args()
    global DEV
    DEV = args.device
    from subq.ops.capabilities import quack_unavailable_reason

    gpu = torch.cuda.get_device_name() if DEV == "cuda" else "cpu"
    log(f"torch {torch.__version__}, {gpu}, quack: "
        f"{quack_unavailable_reason('cuda') or 'available'}")  # fmt: skip
    if args.stage == 1:
        parity_suite(args.backend or "torch")
        if DEV == "cuda":
            benchmarks(["rms_norm", "layer_norm"])
    elif args.stage == 3:
        # No quack: the compile fix (capability check not traced), torch backends, overheads.
        parity_suite("torch")
        step("compile/vmap", compile_and_vmap_check)
        step("overhead", overhead_check)
    else:
        step("quack import", lambda: __import__("quack.rmsnorm"))
        parity_suite("quack")
        step("dispatch", dispatch_check)
        benchmarks(["rms_norm"])
        step("compile/vmap", compile_and_vmap_check)
        benchmarks(["layer_norm"])
    n_fail = sum(not c["ok"] for c in CHECKS)
    log(f"checks: {len(CHECKS) - n_fail} passed, {n_fail} failed")
    for c in CHECKS:
        if not c["ok"]:
            log(f"FAILED: {c['check']}: {c.get('error', c)}")


if __name__ == "__main__":
    main()
