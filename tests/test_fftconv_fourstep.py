"""The ``fourstep`` backend of ``fft_conv`` (twisted four-step causal convolution).

Its math runs on any machine as PyTorch (the same decomposition the Triton kernels compute) and
is checked here against direct convolution in float64; the Triton kernels themselves run under
Triton's CPU interpreter when Triton is installed, and on CUDA in ``bench/gpu_fftconv_fused.py``.
"""

from __future__ import annotations

import textwrap

import pytest
import torch

from subq.ops import _causal_fftconv as fs
from subq.ops import _compile
from subq.ops import fftconv as ops
from subq.ops.dispatch import BackendUnavailableError, strict
from subq.ops.fftconv import fft_conv_direct, next_fast_len
from subq.testing import assert_causal, assert_close_rel

# Spectral math is float32 (complex64 tables and cuFFT-sized transforms): measured max-entry
# errors are 1e-7 to 4e-7 of the largest output (up to 65536 samples on CUDA); the norm-wise
# error assert_close_rel checks measured 0.5e-7 to 1.8e-7 on CASES; 2e-6 leaves a factor of 5+.
FP32_BOUND = 2e-6


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _inputs(b, c, length, taps, per_sample, seed=0):
    x = torch.randn(b, c, length, generator=_g(seed), dtype=torch.float64)
    shape = (b, c, taps) if per_sample else (c, taps)
    k = torch.randn(*shape, generator=_g(seed + 1), dtype=torch.float64) / taps**0.5
    d = torch.randn(c, generator=_g(seed + 2), dtype=torch.float64)
    return x, k, d


@pytest.mark.parametrize("length", [1, 2, 100, 997, 4096, 5000])
def test_plan_covers_the_length_with_fast_sizes(length):
    n1, n2 = fs.fourstep_plan(length)
    assert n1 * n2 >= length and next_fast_len(n2) == n2
    assert n1 == 8  # short rows keep the smallest column DFT


def test_plan_grows_the_column_dft_for_long_rows():
    assert fs.fourstep_plan(40000) == (16, 2500)
    assert fs.fourstep_plan(32768) == (8, 4096)
    assert fs.fourstep_plan(1 << 20) == (16, 65536)


CASES = [
    # (batch, channels, length, taps, per-sample kernel)
    (2, 3, 1, 4, False),
    (2, 3, 97, 97, False),  # prime length: N2 = 14, P = 112
    (1, 2, 300, 20, False),  # kernel shorter than the input
    (2, 2, 250, 700, False),  # kernel longer: taps past L never reach an output
    (2, 3, 513, 513, True),  # per-sample kernels (FiLM)
]


@pytest.mark.parametrize(("b", "c", "length", "taps", "per_sample"), CASES)
def test_matches_direct_convolution(b, c, length, taps, per_sample):
    x, k, d = _inputs(b, c, length, taps, per_sample)
    want = fft_conv_direct(x, k, d, ("causal",))
    got = fs.causal_fft_conv_fourstep(x.float(), k.float(), d.float())
    assert got.dtype == torch.float32
    assert_close_rel(want, got, FP32_BOUND)
    assert_close_rel(
        fft_conv_direct(x, k, None, ("causal",)), fs._causal(x.float(), k, None), FP32_BOUND
    )


@pytest.mark.parametrize("n1", [16, 32])
def test_wider_column_dfts(monkeypatch, n1):
    # Long rows use N1 = 16 (32 is not planned, but the kernels take it); the same math on a
    # short row, with the plan forced.
    monkeypatch.setattr(fs, "fourstep_plan", lambda length: (n1, next_fast_len(-(-length // n1))))
    x, k, d = _inputs(2, 2, 611, 611, False, seed=5)
    got = fs.causal_fft_conv_fourstep(x.float(), k.float(), d.float())
    assert_close_rel(fft_conv_direct(x, k, d, ("causal",)), got, FP32_BOUND)


@pytest.mark.parametrize(("b", "c", "length", "taps", "per_sample"), CASES[1:])
def test_gradients_match_direct_convolution(b, c, length, taps, per_sample):
    x, k, d = _inputs(b, c, length, taps, per_sample, seed=10)
    gy = torch.randn(b, c, length, generator=_g(13), dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (x, k, d)]
    want = torch.autograd.grad(fft_conv_direct(*leaves, ("causal",)), leaves, gy)
    leaves32 = [t.float().requires_grad_() for t in (x, k, d)]
    got = torch.autograd.grad(fs.causal_fft_conv_fourstep(*leaves32), leaves32, gy.float())
    for name, w, g in zip(("x", "kernel", "skip"), want, got, strict=True):
        assert g.dtype == torch.float32 and g.shape == w.shape, name
        assert_close_rel(w, g, FP32_BOUND)


def test_kernel_gradient_alone():
    # Only the kernel needs a gradient (a frozen input, no skip): the backward skips the rest.
    x, k, _ = _inputs(2, 2, 150, 60, False, seed=15)
    k64 = k.clone().requires_grad_()
    (want,) = torch.autograd.grad(fft_conv_direct(x, k64, None, ("causal",)).square().sum(), k64)
    k32 = k.float().requires_grad_()
    y = fs.causal_fft_conv_fourstep(x.float(), k32, None)
    (got,) = torch.autograd.grad(y.square().sum(), k32)
    assert_close_rel(want, got, FP32_BOUND)


@pytest.mark.parametrize("per_sample", [False, True])
def test_input_gradient_alone_and_with_kernel(per_sample):
    # A frozen kernel with a skip (the skip folded into the kernel's lag 0 in the backward too),
    # then every subset of the leaves; the gradients share one pipeline.
    x, k, d = _inputs(3, 2, 140, 50, per_sample, seed=16)
    gy = torch.randn(3, 2, 140, generator=_g(17), dtype=torch.float64)
    for wanted in [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2)]:
        leaves = [t.clone().requires_grad_(i in wanted) for i, t in enumerate((x, k, d))]
        want = torch.autograd.grad(
            fft_conv_direct(*leaves, ("causal",)), [leaves[i] for i in wanted], gy
        )
        leaves32 = [t.float().requires_grad_(i in wanted) for i, t in enumerate((x, k, d))]
        y = fs.causal_fft_conv_fourstep(*leaves32)
        got = torch.autograd.grad(y, [leaves32[i] for i in wanted], gy.float())
        for w, g in zip(want, got, strict=True):
            assert g.shape == w.shape
            assert_close_rel(w, g, FP32_BOUND)


def test_bf16_input_within_output_rounding():
    x, k, d = _inputs(2, 4, 777, 777, False, seed=20)
    xb = x.bfloat16()
    got = fs.causal_fft_conv_fourstep(xb, k.float(), d.float())
    assert got.dtype == torch.bfloat16
    # The only rounding that matters is the bf16 output's: at most 2^-8 of each entry, so of the
    # norm too.
    assert_close_rel(fft_conv_direct(xb.double(), k, d, ("causal",)), got, 2**-8)


def test_causal():
    # Float32 spectra: the future leaks in only at rounding level (≈1e-7 of unit-size outputs;
    # an acausal term would move earlier outputs by O(1)).
    _, k, d = (t.float() for t in _inputs(1, 2, 200, 200, False, seed=30))
    x = torch.randn(1, 2, 200, generator=_g(31), dtype=torch.float64)
    fn = lambda t: fs.causal_fft_conv_fourstep(t.float(), k, d).double()  # noqa: E731
    assert_causal(fn, x, time_axis=2, atol=1e-5)


def test_chunked_backend_equals_unchunked():
    x, k, d = (t.float() for t in _inputs(2, 5, 130, 130, False, seed=40))
    whole = ops._fft_conv_fourstep(x, k, d, ("causal",))
    chunked = ops._fft_conv_fourstep(x, k, d, ("causal",), chunk_size=2)
    assert_close_rel(whole, chunked, 1e-6)


def test_gated_backend_matches_reference(gated_fourstep_errors):
    # Off CUDA the gates are the plain formulas around the four-step math (the Triton passes
    # run in the interpreter test below).
    g = _g(50)
    q, k, v = (torch.randn(2, 90, 6, generator=g) for _ in range(3))
    kern = torch.randn(6, 90, generator=g) / 9
    d = torch.randn(6, generator=g)
    for gate in ("sigmoid", "silu", "none"):
        want = ops.gated_fft_conv_reference(q.double(), k.double(), v.double(), kern.double(),
                                            d.double(), ("causal",), gate)  # fmt: skip
        got = ops._gated_fourstep(q, k, v, kern, d, ("causal",), gate, chunk_size=4)
        assert got.dtype == torch.float32
        assert_close_rel(want, got, FP32_BOUND)
        errors = gated_fourstep_errors(q, k, v, kern, d, ("causal",), value_gate=gate)
        assert errors < FP32_BOUND


FACTS = {
    "device": "cuda",
    "dtype": torch.bfloat16,
    "kernel_dtype": torch.float32,
    "modes": ("causal",),
    "length": 4096,
}


def test_dispatch_reasons(monkeypatch):
    monkeypatch.setattr(ops, "module_available", lambda name: None)
    facts = FACTS
    assert ops._fourstep_scope(facts) is None and ops._fourstep_check(facts) is None
    assert ops.fft_conv_op.decide(facts).chosen == "fourstep"
    assert ops.gated_fft_conv_op.decide(facts).chosen == "fourstep"
    assert "1D causal and 2D zero" in ops._fourstep_scope(facts | {"modes": ("zero", "circular")})
    assert ops._fourstep_scope(facts | {"modes": ("zero", "zero")}) is None
    assert ops._fourstep_scope(facts | {"dtype": torch.float64}).startswith("dtype float64")
    assert ops._fourstep_scope(facts | {"kernel_dtype": torch.float64}).startswith(
        "kernel_dtype float64"
    )
    seen = []
    torch.func.vmap(lambda t: seen.append(ops._fourstep_scope(facts)) or t)(torch.zeros(2))
    assert "torch.func" in seen[0]
    assert ops.fft_conv_op.decide(facts | {"modes": ("zero",)}).chosen == "compiled"
    # The 2D zero-padded path has no length preference (the 1D row limit is not its).
    assert ops.fft_conv_op.decide(facts | {"modes": ("zero", "zero"), "length": 10**6}).chosen == (
        "fourstep"
    )
    assert ops.fft_conv_op.decide(facts | {"length": ops.FOURSTEP_MAX_LENGTH}).chosen == "fourstep"
    too_long = facts | {"length": ops.FOURSTEP_MAX_LENGTH + 1}
    assert ops._fourstep_prefer(too_long).startswith(f"length {ops.FOURSTEP_MAX_LENGTH + 1} > ")
    assert ops.fft_conv_op.decide(too_long).chosen == "compiled"
    # A named backend runs past the dispatcher's preference, but not out of its scope.
    assert ops.fft_conv_op.decide(too_long, "fourstep").chosen == "fourstep"
    with pytest.raises(BackendUnavailableError, match="1D causal and 2D zero"):
        ops.fft_conv_op.decide(facts | {"modes": ("zero",)}, "fourstep")
    monkeypatch.setattr(ops, "module_available", lambda name: f"{name} is not installed")
    assert ops._fourstep_check(facts) == "triton is not installed"
    assert ops.fft_conv_op.decide({**facts, "device": "cpu"}).chosen == "reference"


def test_forward_mode_ad_runs_the_plain_math(monkeypatch):
    # The kernels have no jvp and a compiled region's outputs carry no tangent: inside a
    # forward-AD level fourstep is out of scope and compiled_for hands back the plain function.
    monkeypatch.setattr(ops, "module_available", lambda name: None)
    fn = lambda t: t  # noqa: E731
    with torch.autograd.forward_ad.dual_level():
        assert ops.fft_conv_op.decide(FACTS).rejected[0] == (
            "fourstep",
            "inside forward-mode AD (its kernels have no jvp)",
        )
        assert _compile.compiled_for("test", fn, ("key",)) is fn
        x, k, d = (t.float() for t in _inputs(1, 2, 30, 30, False, seed=80))
        tx = torch.randn(x.shape, generator=_g(81))
        y = ops._fft_conv_compiled(torch.autograd.forward_ad.make_dual(x, tx), k, d, ("causal",))
        tangent = torch.autograd.forward_ad.unpack_dual(y).tangent
    # The convolution is linear in x: its tangent is the convolution of the tangent.
    want = fft_conv_direct(tx.double(), k.double(), d.double(), ("causal",))
    assert_close_rel(want, tangent, FP32_BOUND)


def test_strict_dispatch_passes_over_fourstep_without_a_fallback(monkeypatch):
    # Out of scope (other modes, float64, long rows) is the intended path, not a fallback; only
    # a missing capability (Triton) is refused under strict dispatch.
    monkeypatch.setattr(ops, "module_available", lambda name: None)
    monkeypatch.setattr(_compile, "module_available", lambda name: None)
    with strict():
        for other in (
            {"modes": ("zero", "circular")},
            {"length": ops.FOURSTEP_MAX_LENGTH + 1},
            {"kernel_dtype": torch.float64, "dtype": torch.float32},
        ):
            assert ops.fft_conv_op.decide(FACTS | other).chosen == "compiled", other
        monkeypatch.setattr(ops, "module_available", lambda name: f"{name} is not installed")
        with pytest.raises(BackendUnavailableError, match="refusing to fall back"):
            ops.fft_conv_op.decide(FACTS)


INTERPRETED = textwrap.dedent(
    """
    import torch
    from subq.ops import _causal_fftconv as fs
    from subq.ops.fftconv import fft_conv_direct, next_fast_len

    def rel(want, got):
        return ((want - got.double()).abs().max() / want.abs().max()).item()

    torch.manual_seed(0)
    worst, low = 0.0, {}
    for b, c, length, taps, per_sample, skip in [
        (2, 3, 97, 97, False, "plain"), (1, 2, 700, 30, True, None),
        (2, 2, 250, 700, False, "strided"), (2, 3, 1, 4, False, "expanded"),
        (2, 3, 90, 40, True, "plain"),  # the skip folded into per-sample kernels' lag 0
    ]:
        x = torch.randn(b, c, length, dtype=torch.float64, requires_grad=True)
        k = torch.randn(*((b, c) if per_sample else (c,)), taps, dtype=torch.float64,
                        requires_grad=True)
        d = torch.randn(c, dtype=torch.float64, requires_grad=True) if skip else None
        leaves = [t for t in (x, k, d) if t is not None]
        want = fft_conv_direct(x, k, d, ("causal",))
        x32, k32 = x.detach().float().requires_grad_(), k.detach().float().requires_grad_()
        d32 = None if d is None else d.detach().float().requires_grad_()
        d_in = d32
        if skip == "strided":  # every other entry of a longer buffer
            d_in = torch.stack([d32, torch.full_like(d32, 1e3)], -1)[:, 0]
        if skip == "expanded":  # one value for every channel, stride 0
            d = d.detach()[:1].expand(c).clone().requires_grad_()
            want = fft_conv_direct(x, k, d, ("causal",))
            leaves = [x, k, d]
            d32 = d.detach()[:1].float().requires_grad_()
            d_in = d32.expand(c)
        got = fs.causal_fft_conv_fourstep(x32, k32, d_in)
        gy = torch.randn_like(want)
        gw = torch.autograd.grad(want, leaves, gy)
        gg = torch.autograd.grad(got, [t for t in (x32, k32, d32) if t is not None], gy.float())
        if skip == "expanded":
            gw = (*gw[:2], gw[2].sum(0, keepdim=True))
        for w, g in [(want, got), *zip(gw, gg)]:
            worst = max(worst, rel(w, g))
        # A channels-last view (not contiguous) in half precision: output rounding only.
        for dtype in (torch.float16, torch.bfloat16):
            xl = x.detach().to(dtype).transpose(1, 2).contiguous().transpose(1, 2)
            half = fs.causal_fft_conv_fourstep(xl, k.detach().float(), None)
            assert half.dtype == dtype
            ref = fft_conv_direct(xl.double(), k.detach(), None, ("causal",))
            low[dtype] = max(low.get(dtype, 0.0), rel(ref, half))
    # One gradient at a time (the shared pipeline without the other's rows), with a skip.
    for per_sample in (False, True):
        x, d = torch.randn(2, 3, 70, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
        k = torch.randn(*((2, 3) if per_sample else (3,)), 30, dtype=torch.float64)
        for i in range(2):
            leaves = [t.clone().requires_grad_(j == i) for j, t in enumerate((x, k, d))]
            gy = torch.randn(2, 3, 70, dtype=torch.float64)
            (w,) = torch.autograd.grad(fft_conv_direct(*leaves, ("causal",)), leaves[i], gy)
            leaves32 = [t.float().requires_grad_(j == i) for j, t in enumerate((x, k, d))]
            (g,) = torch.autograd.grad(fs.causal_fft_conv_fourstep(*leaves32), leaves32[i],
                                       gy.float())
            worst = max(worst, rel(w, g))
    # N1 = 16 (long rows) on a short row, with the plan forced.
    fs.fourstep_plan = lambda n: (16, next_fast_len(-(-n // 16)))
    x, k = torch.randn(2, 2, 611, dtype=torch.float64), torch.randn(2, 611, dtype=torch.float64)
    worst = max(worst, rel(fft_conv_direct(x, k, None, ("causal",)),
                           fs.causal_fft_conv_fourstep(x.float(), k.float(), None)))
    print(worst, low[torch.float16], low[torch.bfloat16])
    """
)


def test_triton_kernels_in_interpreter(triton_interpreted):
    worst, fp16, bf16 = triton_interpreted(INTERPRETED, 3)
    assert worst < FP32_BOUND
    assert fp16 < 2**-10 and bf16 < 2**-7  # one ulp of the largest entry


GATES_INTERPRETED = textwrap.dedent(
    """
    import torch
    from subq.ops import fftconv as ops

    def rel(want, got):
        return ((want - got.double()).abs().max() / want.abs().max()).item()

    def second(conv, leaves, kern, d, modes):
        # d/d(k, v) of a function of ∂q (create_graph): the gates' backward as PyTorch math.
        y = conv(*leaves, kern, d, modes, "silu")
        (gq,) = torch.autograd.grad(y.square().sum(), leaves[0], create_graph=True)
        return torch.autograd.grad(gq.sum(), leaves[1:])

    torch.manual_seed(0)
    worst, low = 0.0, 0.0
    for shape, modes, kshape in [
        ((2, 90, 6), ("causal",), (6, 90)),
        ((2, 9, 7, 5), ("zero", "zero"), (5, 9, 7)),
    ]:
        q, k, v = (torch.randn(*shape, dtype=torch.float64) for _ in range(3))
        kern, d = torch.randn(*kshape, dtype=torch.float64) / 9, torch.randn(shape[-1])
        for gate in ("sigmoid", "silu", "none"):
            for chunk in (None, 4):  # chunks: channel slices, not contiguous
                want = ops.gated_fft_conv_reference(q, k, v, kern, d.double(), modes, gate)
                with torch.no_grad():
                    got = ops._gated_fourstep(q.float(), k.float(), v.float(), kern.float(), d,
                                              modes, gate, chunk_size=chunk)
                worst = max(worst, rel(want, got))
            # Gradients of every input through the gates' backward passes.
            leaves = [t.clone().requires_grad_() for t in (q, k, v, kern)]
            want = ops.gated_fft_conv_reference(*leaves, d.double(), modes, gate)
            gy = torch.randn_like(want)
            g_want = torch.autograd.grad(want, leaves, gy)
            leaves32 = [t.detach().float().requires_grad_() for t in leaves]
            got = ops._gated_fourstep(*leaves32, d, modes, gate, chunk_size=4)
            g_got = torch.autograd.grad(got, leaves32, gy.float())
            for w, g in [(want, got), *zip(g_want, g_got)]:
                worst = max(worst, rel(w, g))
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        want = second(ops.gated_fft_conv_reference, leaves, kern, d.double(), modes)
        leaves = [t.detach().float().requires_grad_() for t in leaves]
        got = second(ops._gated_fourstep, leaves, kern.float(), d, modes)
        for w, g in zip(want, got):
            worst = max(worst, rel(w, g))
        # Channels-last views of channels-first storage (unit stride along positions, not
        # channels) and every other position of a longer buffer.
        views = [t.movedim(-1, 1).contiguous().movedim(1, -1) for t in (q, k)]
        views.append(torch.stack([v, v + 1e3], -2)[..., 0, :])
        want = ops.gated_fft_conv_reference(q, k, v, kern, d.double(), modes)
        with torch.no_grad():
            got = ops._gated_fourstep(*(t.float() for t in views), kern.float(), d, modes)
        worst = max(worst, rel(want, got))
        qb, kb, vb = (t.bfloat16() for t in (q, k, v))
        with torch.no_grad():
            half = ops._gated_fourstep(qb, kb, vb, kern.float(), d, modes)
        assert half.dtype == torch.bfloat16
        want = ops.gated_fft_conv_reference(qb.double(), kb.double(), vb.double(), kern,
                                            d.double(), modes)
        low = max(low, rel(want, half))
    print(worst, low)
    """
)


def test_gate_kernels_in_interpreter(triton_interpreted):
    # Hyena's gates as Triton passes, 1D causal and 2D, every value gate, channel chunks
    # (strided views), bf16 in and out; gradients through their backward passes and second
    # derivatives through the PyTorch form of those.
    worst, bf16 = triton_interpreted(GATES_INTERPRETED, 2)
    assert worst < FP32_BOUND
    assert bf16 < 2**-7  # one ulp of the largest entry


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_kernels_match_reference_forward_and_gradients(gated_fourstep_errors):
    from subq.functional.fftconv import fft_conv

    dev = torch.device("cuda")
    for b, c, length, taps, per_sample in [*CASES, (1, 2, 40000, 40000, False)]:
        x, k, d = (t.to(dev) for t in _inputs(b, c, length, taps, per_sample, seed=60))
        leaves = [t.clone().requires_grad_() for t in (x, k, d)]
        want = ops.fft_conv_reference(*leaves, ("causal",))
        gy = torch.randn(want.shape, generator=_g(61), dtype=want.dtype).to(dev)
        g_want = torch.autograd.grad(want, leaves, gy)
        leaves32 = [t.float().requires_grad_() for t in (x, k, d)]
        got = fft_conv(*leaves32, mode="causal", backend="fourstep")
        g_got = torch.autograd.grad(got, leaves32, gy.float())
        for w, g in [(want, got), *zip(g_want, g_got, strict=True)]:
            assert_close_rel(w, g, FP32_BOUND)
        xb = x.bfloat16()
        want_bf = ops.fft_conv_reference(xb.double(), k, d, ("causal",))
        assert_close_rel(want_bf, fft_conv(xb, k.float(), d.float(), mode="causal"), 2**-8)
    q, kk, v = (torch.randn(2, 3000, 8, device=dev) for _ in range(3))
    kern, d = torch.randn(8, 3000, device=dev) / 50, torch.randn(8, device=dev)
    want = ops.gated_fft_conv_reference(q.double(), kk.double(), v.double(), kern.double(),
                                        d.double(), ("causal",))  # fmt: skip
    assert_close_rel(want, ops._gated_fourstep(q, kk, v, kern, d, ("causal",)), FP32_BOUND)
    # With gradients (the gates' Triton backward passes), channel chunks, and q, k, v in the
    # channels-first storage that Hyena's short convolution leaves.
    assert gated_fourstep_errors(q, kk, v, kern, d, ("causal",), chunk_size=4) < FP32_BOUND
    q, kk, v = (t.movedim(-1, 1).contiguous().movedim(1, -1) for t in (q, kk, v))
    assert gated_fourstep_errors(q, kk, v, kern, d, ("causal",), value_gate="silu") < FP32_BOUND


def test_empty_batch_and_empty_rows():
    k = torch.randn(3, 5)
    assert fs.causal_fft_conv_fourstep(torch.randn(0, 3, 40), k, None).shape == (0, 3, 40)
    assert fs.causal_fft_conv_fourstep(torch.randn(2, 3, 0), k, None).shape == (2, 3, 0)


def test_second_derivatives_match_direct_convolution():
    # The backward is built from the same differentiable convolution, so create_graph works:
    # d/dk of a function of ∂x (as in a gradient penalty) against the float64 oracle.
    x, k, d = _inputs(2, 2, 40, 25, False, seed=70)
    v = torch.randn(2, 2, 40, generator=_g(71), dtype=torch.float64)

    def second(conv, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (x, k, d)]
        y = conv(*leaves)
        (gx,) = torch.autograd.grad((y * y).sum(), leaves[0], create_graph=True)
        return torch.autograd.grad((gx * v.to(dtype)).sum(), leaves[1:])

    want = second(lambda *a: fft_conv_direct(*a, ("causal",)), torch.float64)
    got = second(fs.causal_fft_conv_fourstep, torch.float32)
    for w, g in zip(want, got, strict=True):
        assert_close_rel(w, g, FP32_BOUND)  # measured 1.3e-7 and 1.4e-7
