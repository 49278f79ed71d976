"""The ``fourstep`` backend of ``fft_conv`` for two ``"zero"`` axes (folded four-step 2D "same"
convolution).

Its math runs on any machine as PyTorch (the decomposition the Triton kernels compute) and is
checked here against direct convolution in float64; the Triton kernels run under Triton's CPU
interpreter when Triton is installed, and on CUDA in ``bench/gpu_fftconv2d.py``.
"""

from __future__ import annotations

import textwrap

import pytest
import torch

from subq.ops import _compile
from subq.ops import _same_fftconv2d as s2
from subq.ops import fftconv as ops
from subq.ops.fftconv import fft_conv_direct, next_fast_len
from subq.testing import assert_close_rel

MODES = ("zero", "zero")
# Float32 spectra (complex64 tables built in float64): max-entry errors measured 0.4e-7 to
# 5.1e-7 of the largest output, forward and gradients (CPU, interpreter and H200, up to 256² by
# 511² taps); 2e-6 leaves a factor of 4.
FP32_BOUND = 2e-6


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _inputs(b, c, hw, khw, per_sample, seed=0):
    x = torch.randn(b, c, *hw, generator=_g(seed), dtype=torch.float64)
    shape = (b, c, *khw) if per_sample else (c, *khw)
    k = torch.randn(*shape, generator=_g(seed + 1), dtype=torch.float64) / (khw[0] * khw[1]) ** 0.5
    d = torch.randn(c, generator=_g(seed + 2), dtype=torch.float64)
    return x, k, d


CASES = [
    # (batch, channels, (H, W), (Kh, Kw), per-sample kernel)
    (2, 3, (16, 16), (16, 16), False),  # full-size even kernel (the benchmark's shape)
    (1, 2, (13, 17), (5, 30), False),  # odd sizes; kernel wider than the input
    (2, 2, (7, 9), (15, 3), True),  # per-sample kernels; taller than the input
    (1, 1, (1, 1), (1, 1), False),
    (2, 3, (20, 11), (4, 4), True),
    (1, 2, (5, 4), (3, 13), False),  # Kw > 2W: the kernel gradient's window starts before 0
    (1, 2, (9, 6), (23, 23), False),  # taps beyond ±(N − 1) never reach an output
]


@pytest.mark.parametrize(("b", "c", "hw", "khw", "per_sample"), CASES)
def test_matches_direct_convolution(b, c, hw, khw, per_sample):
    x, k, d = _inputs(b, c, hw, khw, per_sample)
    got = s2.same_fft_conv2d(x.float(), k.float(), d.float())
    assert got.dtype == torch.float32 and got.shape == x.shape
    assert_close_rel(fft_conv_direct(x, k, d, MODES), got, FP32_BOUND)
    assert_close_rel(fft_conv_direct(x, k, None, MODES), s2.same_fft_conv2d(x.float(), k, None),
                     FP32_BOUND)  # fmt: skip


@pytest.mark.parametrize(("b", "c", "hw", "khw", "per_sample"), CASES)
def test_gradients_match_direct_convolution(b, c, hw, khw, per_sample):
    x, k, d = _inputs(b, c, hw, khw, per_sample, seed=10)
    gy = torch.randn(x.shape, generator=_g(13), dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (x, k, d)]
    want = torch.autograd.grad(fft_conv_direct(*leaves, MODES), leaves, gy)
    leaves32 = [t.float().requires_grad_() for t in (x, k, d)]
    got = torch.autograd.grad(s2.same_fft_conv2d(*leaves32), leaves32, gy.float())
    for name, w, g in zip(("x", "kernel", "skip"), want, got, strict=True):
        assert g.dtype == torch.float32 and g.shape == w.shape, name
        assert_close_rel(w, g, FP32_BOUND)


@pytest.mark.parametrize("per_sample", [False, True])
def test_every_subset_of_gradients(per_sample):
    # The backward shares one plan and the output gradient's spectrum between ∂x and ∂k; each
    # subset of the leaves (with and without the skip) runs only its own part of it.
    x, k, d = _inputs(3, 2, (11, 9), (6, 13), per_sample, seed=14)
    gy = torch.randn(x.shape, generator=_g(15), dtype=torch.float64)
    for wanted in [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2)]:
        leaves = [t.clone().requires_grad_(i in wanted) for i, t in enumerate((x, k, d))]
        want = torch.autograd.grad(fft_conv_direct(*leaves, MODES), [leaves[i] for i in wanted], gy)
        leaves32 = [t.float().requires_grad_(i in wanted) for i, t in enumerate((x, k, d))]
        got = torch.autograd.grad(
            s2.same_fft_conv2d(*leaves32), [leaves32[i] for i in wanted], gy.float()
        )
        for w, g in zip(want, got, strict=True):
            assert g.shape == w.shape, wanted
            assert_close_rel(w, g, FP32_BOUND)


def _direct_window(x, kernel, s0, out):
    """Oracle for the window: the full linear convolution by ``F.conv2d``, cut at ``s0``."""
    kh, kw = kernel.shape[-2:]
    xp = torch.nn.functional.pad(x, (kw - 1, kw - 1, kh - 1, kh - 1))
    flipped = kernel.flip(-2, -1).unsqueeze(1)
    full = torch.nn.functional.conv2d(xp, flipped, groups=x.shape[1])  # [B, C, H+Kh-1, W+Kw-1]
    pads = (max(0, -s0[1]), max(0, s0[1] + out[1]), max(0, -s0[0]), max(0, s0[0] + out[0]))
    big = torch.nn.functional.pad(full, pads)
    r0, c0 = s0[0] + max(0, -s0[0]), s0[1] + max(0, -s0[1])
    return big[..., r0 : r0 + out[0], c0 : c0 + out[1]]


@pytest.mark.parametrize(
    ("s0", "out"),
    [
        ((0, 0), (12, 9)),
        ((4, 2), (3, 14)),
        ((-3, 5), (10, 10)),
        ((20, 1), (4, 6)),
        ((-9, -9), (5, 5)),
    ],
)
def test_window_matches_the_full_convolution(s0, out):
    # Any window of the linear convolution, also one starting before it or past its taps.
    x, k, _ = _inputs(2, 3, (10, 8), (7, 5), False, seed=20)
    got = s2.window_fft_conv2d(x.float(), k.float(), None, s0, out)
    want = _direct_window(x, k, s0, out)
    assert got.shape == want.shape
    if want.abs().max() == 0:
        assert got.abs().max() == 0
    else:
        assert_close_rel(want, got, FP32_BOUND)


def test_second_derivatives_match_direct_convolution():
    x, k, d = _inputs(2, 2, (9, 7), (5, 6), False, seed=30)
    v = torch.randn(x.shape, generator=_g(31), dtype=torch.float64)

    def second(conv, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (x, k, d)]
        y = conv(*leaves)
        (gx,) = torch.autograd.grad((y * y).sum(), leaves[0], create_graph=True)
        return torch.autograd.grad((gx * v.to(dtype)).sum(), leaves[1:])

    want = second(lambda *a: fft_conv_direct(*a, MODES), torch.float64)
    got = second(s2.same_fft_conv2d, torch.float32)
    for w, g in zip(want, got, strict=True):
        assert_close_rel(w, g, FP32_BOUND)


def test_bf16_input_within_output_rounding():
    x, k, d = _inputs(2, 3, (24, 20), (24, 20), False, seed=40)
    xb = x.bfloat16()
    got = s2.same_fft_conv2d(xb, k.float(), d.float())
    assert got.dtype == torch.bfloat16
    assert_close_rel(fft_conv_direct(xb.double(), k, d, MODES), got, 2**-8)


def test_plan_covers_the_exact_size_with_fast_sizes():
    n1, n2, q = s2.window_plan((256, 256), (256, 256), (128, 128), (256, 256))
    assert (n1 * n2, 2 * q) == (384, 384)  # N + K/2 per axis, as the reference path
    for n, k in [(97, 13), (5, 300), (1, 1)]:
        n1, n2, q = s2.window_plan((n, n), (k, k), (k // 2, k // 2), (n, n))
        exact = ops.fft_conv_plan((n,), (k,), ("zero",), fast=False)[0].fft_size
        assert n1 * n2 >= exact and 2 * q >= exact
        assert next_fast_len(n2) == n2 and next_fast_len(q) == q


def test_backend_chunked_gated_and_empty(monkeypatch):
    x, k, d = (t.float() for t in _inputs(2, 5, (11, 9), (11, 9), False, seed=50))
    whole = ops._fft_conv_fourstep(x, k, d, MODES)
    assert_close_rel(fft_conv_direct(x.double(), k.double(), d.double(), MODES), whole, FP32_BOUND)
    assert_close_rel(whole, ops._fft_conv_fourstep(x, k, d, MODES, chunk_size=2), 1e-6)
    # The gated form (Hyena 2D): the compiled gate passes as the plain functions here.
    monkeypatch.setattr(ops, "compiled_for", lambda name, fn, key: fn)
    g = _g(51)
    q, kk, v = (torch.randn(2, 10, 7, 6, generator=g) for _ in range(3))
    kern, d6 = torch.randn(6, 10, 7, generator=g) / 9, torch.randn(6, generator=g)
    want = ops.gated_fft_conv_reference(q.double(), kk.double(), v.double(), kern.double(),
                                        d6.double(), MODES)  # fmt: skip
    assert_close_rel(want, ops._gated_fourstep(q, kk, v, kern, d6, MODES, chunk_size=4), FP32_BOUND)
    empty = s2.same_fft_conv2d(torch.randn(0, 3, 4, 4), torch.randn(3, 2, 2), None)
    assert empty.shape == (0, 3, 4, 4)


def test_window_keeps_its_output_dtype_under_autograd():
    # With gradients on, the float32 result of a bf16 signal is not rounded through bf16 (the
    # kernel gradient of a second-order backward is such a window).
    x = torch.randn(2, 3, 9, 8, generator=_g(70)).bfloat16()
    k = torch.randn(3, 5, 5, generator=_g(71))
    plain = s2.window_fft_conv2d(x, k, None, (1, 2), (6, 7), torch.float32)
    tracked = s2.window_fft_conv2d(x, k.requires_grad_(), None, (1, 2), (6, 7), torch.float32)
    assert tracked.dtype == torch.float32
    torch.testing.assert_close(tracked.detach(), plain, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kernel_shape", "skip_shape", "out", "match"),
    [
        ((2, 3, 3), None, (5, 4), r"kernel's leading axes must be \[3\]"),
        ((3, 3), None, (5, 4), "x must be"),
        ((3, 3, 3), (3,), (4, 4), "out equal to x's size"),
        ((3, 3, 3), (2,), (5, 4), r"skip must be \[C\] = \[3\]"),
        ((3, 3, 3), None, (0, 4), "out must be two sizes"),
    ],
)
def test_window_refuses_mismatched_inputs(kernel_shape, skip_shape, out, match):
    x = torch.randn(2, 3, 5, 4)
    skip = None if skip_shape is None else torch.randn(skip_shape)
    with pytest.raises(ValueError, match=match):
        s2.window_fft_conv2d(x, torch.randn(kernel_shape), skip, (1, 1), out)


def test_dispatch_keeps_large_planes_and_forward_ad_off_fourstep(monkeypatch):
    monkeypatch.setattr(ops, "module_available", lambda name: None)
    monkeypatch.setattr(_compile, "module_available", lambda name: None)
    facts = {
        "device": "cuda",
        "dtype": torch.bfloat16,
        "kernel_dtype": torch.float32,
        "modes": MODES,
        "length": 256,
        "spatial": (256, 256),
    }
    assert ops.fft_conv_op.decide(facts).chosen == "fourstep"
    for spatial in [(ops.FOURSTEP_2D_MAX[0] + 1, 4), (4, ops.FOURSTEP_2D_MAX[1] + 1), (9000, 9000)]:
        reason = ops._fourstep_scope(facts | {"spatial": spatial})
        assert reason.startswith(f"a {spatial[0]}×{spatial[1]} plane"), reason
    with torch.autograd.forward_ad.dual_level():
        assert ops.fft_conv_op.decide(facts).rejected[0] == (
            "fourstep",
            "inside forward-mode AD (its kernels have no jvp)",
        )
        assert ops.fft_conv_op.decide(facts).chosen == "compiled"


def test_kernel_launch_refuses_planes_beyond_its_grid():
    pytest.importorskip("triton")
    from subq.ops._same_fftconv2d_kernel import _launch

    assert _launch(2048, 8, 48, 192, 128) == ((2048, 48, 2), 128, 1)
    with pytest.raises(ValueError, match="launch grid or int32 offsets"):
        _launch(1, 8, 70000, 1, 128)
    with pytest.raises(ValueError, match="launch grid or int32 offsets"):
        _launch(1, 8, 6000, 24000, 128)


INTERPRETED = textwrap.dedent(
    """
    import torch
    from subq.ops import _same_fftconv2d as s2
    from subq.ops.fftconv import fft_conv_direct

    def rel(want, got):
        return ((want - got.double()).abs().max() / want.abs().max()).item()

    torch.manual_seed(0)
    modes = ("zero", "zero")
    worst, low = 0.0, {}
    for b, c, hw, khw, per_sample in [
        ((2, 3, (16, 16), (16, 16), False)), ((1, 2, (5, 4), (3, 13), True)),
        ((2, 2, (7, 9), (15, 3), False)),
    ]:
        x = torch.randn(b, c, *hw, dtype=torch.float64, requires_grad=True)
        k = torch.randn(*((b, c) if per_sample else (c,)), *khw, dtype=torch.float64,
                        requires_grad=True)
        d = torch.randn(c, dtype=torch.float64, requires_grad=True)
        want = fft_conv_direct(x, k, d, modes)
        leaves = [t.detach().float().requires_grad_() for t in (x, k, d)]
        got = s2.same_fft_conv2d(*leaves)
        gy = torch.randn_like(want)
        gw = torch.autograd.grad(want, (x, k, d), gy)
        gg = torch.autograd.grad(got, leaves, gy.float())
        for w, g in [(want, got), *zip(gw, gg)]:
            worst = max(worst, rel(w, g))
        # A channels-last view (not contiguous) in half precision: output rounding only.
        for dtype in (torch.float16, torch.bfloat16):
            xl = x.detach().to(dtype).permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
            half = s2.same_fft_conv2d(xl, k.detach().float(), d.detach().float())
            assert half.dtype == dtype
            ref = fft_conv_direct(xl.double(), k.detach(), d.detach(), modes)
            low[dtype] = max(low.get(dtype, 0.0), rel(ref, half))
    # One gradient at a time (the shared pipeline without the other's spectra), with a skip.
    for per_sample in (False, True):
        x, d = torch.randn(2, 3, 9, 7, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
        k = torch.randn(*((2, 3) if per_sample else (3,)), 5, 12, dtype=torch.float64)
        gy = torch.randn(2, 3, 9, 7, dtype=torch.float64)
        for i in range(2):
            leaves = [t.clone().requires_grad_(j == i) for j, t in enumerate((x, k, d))]
            (want,) = torch.autograd.grad(fft_conv_direct(*leaves, modes), leaves[i], gy)
            leaves = [t.float().requires_grad_(j == i) for j, t in enumerate((x, k, d))]
            (got,) = torch.autograd.grad(s2.same_fft_conv2d(*leaves), leaves[i], gy.float())
            worst = max(worst, rel(want, got))
    print(worst, low[torch.float16], low[torch.bfloat16])
    """
)


def test_triton_kernels_in_interpreter(triton_interpreted):
    worst, fp16, bf16 = triton_interpreted(INTERPRETED, 3)
    assert worst < FP32_BOUND
    assert fp16 < 2**-10 and bf16 < 2**-7  # one ulp of the largest entry


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_kernels_match_reference_forward_and_gradients(gated_fourstep_errors):
    from subq.functional.fftconv import fft_conv

    def close_to_sum(terms, got):
        # y = K∗x + D·x and ∂x = K⋆g + D·g are float32 sums of two terms, whose rounding scales
        # with the terms, not with the sum, which can cancel (seed 60's 1×1 case has K ≈ −D: the
        # output is 1/53 of its terms, and even rounding the inputs to float32 moves it by 2.7e-7).
        err = (got.double() - sum(terms)).norm() / sum(t.norm() for t in terms)
        assert err < FP32_BOUND, f"error {err:.3e} of the terms' norm > {FP32_BOUND}"

    dev = torch.device("cuda")
    for b, c, hw, khw, per_sample in [*CASES, (1, 2, (256, 256), (511, 511), True)]:
        x, k, d = (t.to(dev) for t in _inputs(b, c, hw, khw, per_sample, seed=60))
        leaves = [t.clone().requires_grad_() for t in (x, k, d)]
        conv = ops.fft_conv_reference(leaves[0], leaves[1], None, MODES)
        gy = torch.randn(conv.shape, generator=_g(61), dtype=conv.dtype).to(dev)
        x_conv, k_want = torch.autograd.grad(conv, leaves[:2], gy)
        skip_x = d[:, None, None] * x
        leaves32 = [t.float().requires_grad_() for t in (x, k, d)]
        got = fft_conv(*leaves32, mode="zero", backend="fourstep")
        x_got, k_got, d_got = torch.autograd.grad(got, leaves32, gy.float())
        close_to_sum((conv.detach(), skip_x), got)
        close_to_sum((x_conv, d[:, None, None] * gy), x_got)
        assert_close_rel(k_want, k_got, FP32_BOUND)
        assert_close_rel((gy * x).sum((0, 2, 3)), d_got, FP32_BOUND)
        xb = x.bfloat16()
        want_bf = ops.fft_conv_reference(xb.double(), k, d, MODES)
        assert_close_rel(want_bf, fft_conv(xb, k.float(), d.float(), mode="zero"), 2**-8)
    # Hyena's gated form in 2D (channels last), with its Triton gate passes and their backward.
    g = _g(62)
    q, kk, v = (torch.randn(2, 40, 33, 8, generator=g).to(dev) for _ in range(3))
    kern, d = torch.randn(8, 40, 33, generator=g).to(dev) / 40, torch.randn(8, generator=g).to(dev)
    want = ops.gated_fft_conv_reference(q.double(), kk.double(), v.double(), kern.double(),
                                        d.double(), MODES)  # fmt: skip
    assert_close_rel(want, ops._gated_fourstep(q, kk, v, kern, d, MODES), FP32_BOUND)
    assert gated_fourstep_errors(q, kk, v, kern, d, MODES, value_gate="silu") < FP32_BOUND
