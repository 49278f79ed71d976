"""The rms_norm and layer_norm ops: backend parity with the reference, the fused custom ops'
autograd/vmap/fake rules (through their CPU kernels), and dispatcher decisions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import subq.ops.norm as opnorm
from subq.functional.norm import LayerNormParams, layer_norm
from subq.ops import BackendUnavailableError, explain, strict
from subq.ops.norm import (
    layer_norm_op,
    layer_norm_reference,
    rms_norm_op,
    rms_norm_reference,
)
from subq.testing import compute_relative_error

EPS = 1e-5
# Relative-error bounds: float64 paths differ by reassociation only; bf16 paths by a few ulps of
# the output (2**-8 relative per element).
TOL = {torch.float64: 1e-12, torch.bfloat16: 1e-2}


def _inputs(shape, dtype, *, weight=True, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = shape[-1]
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 0.5).to(dtype)
    w = (1 + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)).to(dtype) if weight else None
    b = (0.2 * torch.randn(n, generator=g, dtype=torch.float64)).to(dtype) if bias else None
    dy = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    return x, w, b, dy


def _value_and_grads(fn, tensors, dy):
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in tensors]
    out = fn(*leaves)
    diff = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(out, diff, dy)
    return out.detach(), grads


def _assert_parity(ref_fn, fn, tensors, dy, tol):
    ref, ref_grads = _value_and_grads(ref_fn, tensors, dy)
    out, grads = _value_and_grads(fn, tensors, dy)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    err = compute_relative_error(ref, out)
    assert err <= tol, f"forward rel err {err:.2e} > {tol:.0e}"
    for i, (r, g) in enumerate(zip(ref_grads, grads, strict=True)):
        assert g.dtype == r.dtype
        err = compute_relative_error(r, g)
        assert err <= tol, f"grad {i} rel err {err:.2e} > {tol:.0e}"


# --- references against independent oracles ------------------------------------------------


def test_rms_norm_reference_matches_an_independent_formula():
    x, w, _, _ = _inputs((5, 7, 33), torch.float64)
    oracle = x / torch.sqrt((x * x).sum(-1, keepdim=True) / x.shape[-1] + EPS) * w
    assert compute_relative_error(oracle, rms_norm_reference(x, w, EPS)) < 1e-14


def test_layer_norm_reference_matches_torch_layer_norm():
    x, w, b, _ = _inputs((5, 7, 33), torch.float64)
    oracle = F.layer_norm(x, (33,), w, b, EPS)
    assert compute_relative_error(oracle, layer_norm_reference(x, w, b, EPS)) < 1e-14


def test_references_compute_in_float32_and_return_the_input_dtype():
    x, w, b, _ = _inputs((4, 64), torch.bfloat16)
    for y in (rms_norm_reference(x, w, EPS), layer_norm_reference(x, w, b, EPS)):
        assert y.dtype == torch.bfloat16
    exact = F.layer_norm(x.double(), (64,), w.double(), b.double(), EPS)
    # One rounding to bf16 at the end: within half an ulp (2**-9 relative) per element, roughly.
    assert compute_relative_error(exact, layer_norm_reference(x, w, b, EPS)) < 2**-8


# --- backends runnable on CPU, against the reference, forward and gradients ------------------

RMS_BACKENDS = {"torch": opnorm._rms_norm_torch, "quack (cpu kernels)": opnorm._rms_norm_quack}
LN_BACKENDS = {"torch": opnorm._layer_norm_torch, "quack (cpu kernels)": opnorm._layer_norm_quack}


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("weight", [True, False])
@pytest.mark.parametrize("name", list(RMS_BACKENDS))
def test_rms_norm_backend_parity(name, weight, dtype):
    x, w, _, dy = _inputs((3, 5, 48), dtype, weight=weight, bias=False)
    fn = RMS_BACKENDS[name]

    def ref(x, w=None):
        return rms_norm_reference(x, w, EPS)

    def impl(x, w=None):
        return fn(x, w, EPS)

    _assert_parity(ref, impl, (x, w), dy, TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("affine", ["weight+bias", "weight", "none"])
@pytest.mark.parametrize("name", list(LN_BACKENDS))
def test_layer_norm_backend_parity(name, affine, dtype):
    x, w, b, dy = _inputs((3, 5, 48), dtype, weight=affine != "none", bias=affine == "weight+bias")
    fn = LN_BACKENDS[name]

    def ref(x, w=None, b=None):
        return layer_norm_reference(x, w, b, EPS)

    def impl(x, w=None, b=None):
        return fn(x, w, b, EPS)

    args = tuple(t for t in (x, w, b) if t is not None)
    if affine == "none":
        _assert_parity(lambda x: ref(x), lambda x: impl(x), args, dy, TOL[dtype])
    else:
        _assert_parity(ref, impl, args, dy, TOL[dtype])


def test_fused_backends_keep_float32_weights_with_bf16_inputs():
    # quack's kernels read the weight in its own dtype; so must the wrapper, and dw keeps it.
    x, _, _, dy = _inputs((6, 32), torch.bfloat16)
    w = torch.linspace(0.5, 1.5, 32, dtype=torch.float32)
    _assert_parity(
        lambda x, w: rms_norm_reference(x, w, EPS),
        lambda x, w: opnorm._rms_norm_quack(x, w, EPS),
        (x, w),
        dy,
        # Tight: a weight rounded to bf16 on the way would show up at ~1e-3.
        1e-6,
    )


def test_per_head_weights_fall_back_to_the_reference():
    x, _, _, dy = _inputs((2, 3, 4, 16), torch.float64)
    w = torch.rand(4, 16, dtype=torch.float64) + 0.5
    for fn in (opnorm._rms_norm_quack, opnorm._rms_norm_torch):
        _assert_parity(
            lambda x, w: rms_norm_reference(x, w, EPS), lambda x, w, f=fn: f(x, w, EPS),
            (x, w), dy, 1e-14,
        )  # fmt: skip
    for fn in (opnorm._layer_norm_quack, opnorm._layer_norm_torch):
        _assert_parity(
            lambda x, w: layer_norm_reference(x, w, w, EPS), lambda x, w, f=fn: f(x, w, w, EPS),
            (x, w), dy, 1e-14,
        )  # fmt: skip


def test_fused_ops_do_not_mutate_inputs():
    x, w, b, dy = _inputs((4, 16), torch.float64)
    copies = [t.clone() for t in (x, w, b, dy)]
    _, mean, rstd = opnorm._layer_norm_fused(x, w, b, EPS)
    opnorm._layer_norm_fused_bwd(x, w, dy, mean, rstd, True)
    opnorm._rms_norm_fused_bwd(x, w, dy, opnorm._rms_norm_fused(x, w, EPS)[1])
    for before, after in zip(copies, (x, w, b, dy), strict=True):
        assert torch.equal(before, after)


# --- the custom ops' registrations: schema, fake tensors, autograd, vmap, compile ------------


def test_fused_ops_pass_opcheck():
    x, w, b, dy = _inputs((6, 16), torch.float64)
    # Autograd lives in an autograd.Function around the ops (see subq.ops.norm), not in them.
    torch.library.opcheck(torch.ops.subq.rms_norm_fused, (x, w, EPS))
    torch.library.opcheck(torch.ops.subq.rms_norm_fused, (x, None, EPS))
    torch.library.opcheck(torch.ops.subq.layer_norm_fused, (x, w, b, EPS))
    torch.library.opcheck(torch.ops.subq.layer_norm_fused, (x, w, None, EPS))
    _, rstd = opnorm._rms_norm_fused(x, w, EPS)
    _, mean, rstd_ln = opnorm._layer_norm_fused(x, w, b, EPS)
    torch.library.opcheck(torch.ops.subq.rms_norm_fused_bwd, (x, w, dy, rstd))
    torch.library.opcheck(torch.ops.subq.layer_norm_fused_bwd, (x, w, dy, mean, rstd_ln, True))


@pytest.mark.parametrize("batched_weight", [False, True])
def test_fused_rms_norm_under_vmap_matches_a_loop(batched_weight):
    x, w, _, _ = _inputs((3, 5, 16), torch.float64, bias=False)
    ws = torch.stack([w, w * 2, w + 1]) if batched_weight else w

    def f(x, w):
        return opnorm._rms_norm_quack(x, w, EPS)

    in_dims = (0, 0 if batched_weight else None)
    got = torch.func.vmap(f, in_dims=in_dims)(x, ws)
    want = torch.stack([f(x[i], ws[i] if batched_weight else w) for i in range(3)])
    assert torch.equal(got, want)
    # Per-example gradients: vmap over grad runs the backward op's vmap rule.
    grad_fn = torch.func.grad(lambda x, w: f(x, w).square().sum(), argnums=(0, 1))
    gx, gw = torch.func.vmap(grad_fn, in_dims=in_dims)(x, ws)
    for i in range(3):
        wi = ws[i] if batched_weight else w
        rx, rw = torch.func.grad(
            lambda x, w: rms_norm_reference(x, w, EPS).square().sum(), argnums=(0, 1)
        )(x[i], wi)
        assert compute_relative_error(rx, gx[i]) < 1e-12
        assert compute_relative_error(rw, gw[i]) < 1e-12


def test_fused_layer_norm_under_vmap_with_grad():
    x, w, b, _ = _inputs((3, 4, 16), torch.float64)

    def loss(x, w, b):
        return opnorm._layer_norm_quack(x, w, b, EPS).square().sum()

    def ref_loss(x, w, b):
        return layer_norm_reference(x, w, b, EPS).square().sum()

    got = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1, 2)), in_dims=(0, None, None))(
        x, w, b
    )
    for i in range(3):
        want = torch.func.grad(ref_loss, argnums=(0, 1, 2))(x[i], w, b)
        for g, r in zip(got, want, strict=True):
            assert compute_relative_error(r, g[i]) < 1e-12


def test_fused_ops_compile_without_graph_breaks():
    x, w, b, dy = _inputs((2, 3, 32), torch.float32)

    def f(x, w, b):
        return opnorm._rms_norm_quack(x, w, EPS) + opnorm._layer_norm_quack(x, w, b, EPS)

    explanation = torch._dynamo.explain(f)(x, w, b)
    assert explanation.graph_break_count == 0
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
    out = compiled(*leaves)
    grads = torch.autograd.grad(out, leaves, dy)
    ref_leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
    ref = rms_norm_reference(ref_leaves[0], ref_leaves[1], EPS) + layer_norm_reference(
        *ref_leaves, EPS
    )
    ref_grads = torch.autograd.grad(ref, ref_leaves, dy)
    assert compute_relative_error(ref, out) < 1e-6
    for r, g in zip(ref_grads, grads, strict=True):
        assert compute_relative_error(r, g) < 1e-5


# --- dispatcher decisions ---------------------------------------------------------------------

CUDA_BF16 = {"device": "cuda", "dtype": torch.bfloat16, "n": 8192, "weight_ndim": 1}


@pytest.fixture
def quack_available(monkeypatch):
    monkeypatch.setattr(opnorm, "quack_unavailable_reason", lambda device: None)


@pytest.fixture
def quack_missing(monkeypatch):
    monkeypatch.setattr(opnorm, "quack_unavailable_reason", lambda device: "no quack here")


@pytest.mark.parametrize("op", [rms_norm_op, layer_norm_op])
def test_cpu_uses_the_reference(op):
    d = op.decide({"device": "cpu", "dtype": torch.bfloat16, "n": 64, "weight_ndim": 1})
    assert d.chosen == "reference"
    assert dict(d.rejected) == {"quack": "targets cuda, not cpu", "torch": "targets cuda, not cpu"}


@pytest.mark.parametrize("op", [rms_norm_op, layer_norm_op])
def test_cuda_with_quack_uses_quack(op, quack_available):
    assert op.decide(CUDA_BF16).chosen == "quack"
    assert op.decide(CUDA_BF16 | {"dtype": torch.float32}).chosen == "quack"


@pytest.mark.parametrize("op", [rms_norm_op, layer_norm_op])
def test_cuda_without_quack_uses_torch_and_says_why(op, quack_missing):
    d = op.decide(CUDA_BF16)
    assert d.chosen == "torch" and dict(d.rejected) == {"quack": "no quack here"}
    with strict(), pytest.raises(BackendUnavailableError, match="no quack here"):
        op.decide(CUDA_BF16)


@pytest.mark.parametrize("op", [rms_norm_op, layer_norm_op])
def test_cuda_decisions_on_static_facts(op, quack_available):
    per_head = op.decide(CUDA_BF16 | {"weight_ndim": 2})
    assert per_head.chosen == "reference"
    assert "per-head" in dict(per_head.rejected)["quack"]
    f64 = op.decide(CUDA_BF16 | {"dtype": torch.float64})
    assert f64.chosen == "reference" and "float64" in dict(f64.rejected)["torch"]
    long_fp32 = op.decide(CUDA_BF16 | {"dtype": torch.float32, "n": 200_000})
    assert long_fp32.chosen == "torch" and "131072" in dict(long_fp32.rejected)["quack"]
    assert op.decide(CUDA_BF16 | {"n": 200_000}).chosen == "quack"


@pytest.mark.parametrize(("op", "min_n"), [(rms_norm_op, 4096), (layer_norm_op, 8192)])
def test_short_rows_prefer_torch_without_counting_as_a_fallback(op, min_n, quack_available):
    assert op.decide(CUDA_BF16 | {"n": min_n}).chosen == "quack"
    with strict():  # a measured preference, not a missing capability: strict mode accepts it
        d = op.decide(CUDA_BF16 | {"n": min_n - 1})
    assert d.chosen == "torch" and "measured faster" in dict(d.rejected)["quack"]
    # Forcing quack on short rows is allowed; a short float64 row still goes to the reference.
    assert op.decide(CUDA_BF16 | {"n": 64}, backend="quack").chosen == "quack"
    assert op.decide(CUDA_BF16 | {"n": 64, "dtype": torch.float64}).chosen == "reference"


def test_short_rows_without_quack_fall_back_as_usual(quack_missing):
    with strict(), pytest.raises(BackendUnavailableError, match="no quack here"):
        rms_norm_op.decide(CUDA_BF16 | {"n": 64})


def test_quack_capability_check_compiles_without_tracing_imports(monkeypatch):
    import importlib

    from subq.ops import capabilities

    def reason_with_import(device_index):
        importlib.import_module("json")  # what the real check does (dynamo refuses to trace it)
        return None

    # Patch the probe *inside* the public, constant-marked quack_unavailable_reason.
    monkeypatch.setattr(capabilities, "_quack_reason", reason_with_import)

    def f(x):
        return x + (1.0 if rms_norm_op.decide(CUDA_BF16).chosen == "quack" else 2.0)

    torch._dynamo.reset()
    out = torch.compile(f, backend="aot_eager", fullgraph=True)(torch.zeros(2))
    assert torch.equal(out, torch.ones(2))


def test_layer_norm_without_weight_skips_quack(quack_available):
    d = layer_norm_op.decide(CUDA_BF16 | {"weight_ndim": 0})
    assert d.chosen == "torch" and "needs one" in dict(d.rejected)["quack"]
    assert rms_norm_op.decide(CUDA_BF16 | {"weight_ndim": 0}).chosen == "quack"


def test_forcing_an_unavailable_backend_raises(quack_missing):
    with pytest.raises(BackendUnavailableError, match="no quack here"):
        rms_norm_op.decide(CUDA_BF16, backend="quack")
    with pytest.raises(BackendUnavailableError, match="targets cuda"):
        layer_norm_op.decide({"device": "cpu", "dtype": torch.float32, "n": 8}, backend="torch")


def test_explain_lists_layer_norm_backends():
    text = explain("layer_norm", device="cpu", dtype=torch.float32, n=64)
    assert text.splitlines()[0] == "layer_norm: using 'reference'"
    assert "not 'quack'" in text and "not 'torch'" in text


def test_functional_layer_norm_dispatches_through_the_op(monkeypatch):
    calls = []
    real = layer_norm_op.decide

    def spy(facts, backend=None):
        calls.append(dict(facts))
        return real(facts, backend)

    monkeypatch.setattr(layer_norm_op, "decide", spy)
    x, w, b, _ = _inputs((2, 3, 8), torch.float64)
    y = layer_norm(LayerNormParams(weight=w, bias=b), x, eps=EPS)
    assert compute_relative_error(F.layer_norm(x, (8,), w, b, EPS), y) < 1e-14
    layer_norm(LayerNormParams(), x, eps=EPS)
    assert [c["weight_ndim"] for c in calls] == [1, 0]
    assert calls[0]["n"] == 8 and calls[0]["dtype"] == torch.float64


def test_fused_double_backward_raises():
    x, w, b, _ = _inputs((3, 8), torch.float64)
    w.requires_grad_(True)
    # Eager path: once_differentiable.
    for y in (opnorm._rms_norm_quack(x, w, EPS), opnorm._layer_norm_quack(x, w, b, EPS)):
        (gw,) = torch.autograd.grad(y.square().sum(), w, create_graph=True)
        with pytest.raises(RuntimeError, match="once_differentiable"):
            gw.sum().backward()
    # Transform path (torch.func): the backward Functions refuse.
    for f in (
        lambda x: opnorm._rms_norm_quack(x, w.detach(), EPS).square().sum(),
        lambda x: opnorm._layer_norm_quack(x, w.detach(), b, EPS).square().sum(),
    ):
        with pytest.raises(RuntimeError, match="double backward is not supported"):
            torch.func.grad(lambda x, f=f: torch.func.grad(f)(x).sum())(x)


def test_eager_and_transform_paths_agree_exactly(monkeypatch):
    x, w, b, dy = _inputs((4, 5, 24), torch.float32)
    results = []
    for active in (False, True):
        monkeypatch.setattr(opnorm, "_transforms_active", lambda active=active: active)
        leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
        y = opnorm._rms_norm_quack(leaves[0], leaves[1], EPS) + opnorm._layer_norm_quack(
            *leaves, EPS
        )
        results.append([y, *torch.autograd.grad(y, leaves, dy)])
    for eager, transform in zip(*results, strict=True):
        assert torch.equal(eager, transform)
