"""FFT convolution against direct convolution (the oracle), for every mode, rank and odd size."""

from __future__ import annotations

import pytest
import torch

from subq.functional.fftconv import fft_conv
from subq.ops.fftconv import fft_conv_direct, fft_conv_plan, next_fast_len
from subq.testing import (
    assert_causal,
    assert_close_rel,
    assert_compiles,
    assert_equivariant,
    assert_vmap_matches_loop,
    compute_relative_error,
)

DT = torch.float64


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def direct_conv(x, kernel, modes, skip=None):
    return fft_conv_direct(x, kernel, skip, modes)


CASES = [
    # (modes, spatial, kernel)
    (("causal",), (7,), (3,)),
    (("causal",), (13,), (13,)),
    (("causal",), (5,), (11,)),  # kernel longer than the input
    (("causal",), (1,), (4,)),
    (("zero",), (7,), (4,)),
    (("zero",), (11,), (21,)),  # the double grid
    (("zero",), (6,), (20,)),  # longer than the double grid
    (("zero",), (8,), (1,)),
    (("circular",), (7,), (4,)),
    (("circular",), (5,), (13,)),  # folded modulo N
    (("circular",), (12,), (12,)),
    (("zero", "zero"), (5, 7), (9, 3)),
    (("circular", "circular"), (4, 5), (4, 5)),
    (("zero", "circular"), (5, 6), (4, 9)),
    (("circular", "zero"), (3, 8), (7, 2)),
    (("zero", "zero", "zero"), (3, 4, 5), (5, 7, 9)),
    (("zero", "zero", "circular"), (3, 4, 5), (2, 7, 3)),
]


@pytest.mark.parametrize(("modes", "spatial", "ksize"), CASES)
def test_matches_direct_convolution(modes, spatial, ksize):
    x = torch.randn(2, 3, *spatial, generator=_g(0), dtype=DT)
    k = torch.randn(3, *ksize, generator=_g(1), dtype=DT)
    d = torch.randn(3, generator=_g(2), dtype=DT)
    got = fft_conv(x, k, d, mode=modes if len(modes) > 1 else modes[0])
    assert_close_rel(direct_conv(x, k, modes, d), got, 1e-12)


@pytest.mark.parametrize(("modes", "spatial", "ksize"), [CASES[2], CASES[6], CASES[13]])
def test_gradients_match_direct_convolution(modes, spatial, ksize):
    x = torch.randn(2, 3, *spatial, generator=_g(0), dtype=DT, requires_grad=True)
    k = torch.randn(3, *ksize, generator=_g(1), dtype=DT, requires_grad=True)
    d = torch.randn(3, generator=_g(2), dtype=DT, requires_grad=True)
    cot = torch.randn(2, 3, *spatial, generator=_g(3), dtype=DT)
    got = torch.autograd.grad((fft_conv(x, k, d, mode=modes) * cot).sum(), (x, k, d))
    want = torch.autograd.grad((direct_conv(x, k, modes, d) * cot).sum(), (x, k, d))
    assert_close_rel(want, got, 1e-11, what="gradients")


@pytest.mark.parametrize("modes", [("causal",), ("zero", "circular")])
def test_per_sample_kernels(modes):
    spatial = (9,) if len(modes) == 1 else (5, 6)
    ksize = (9,) if len(modes) == 1 else (9, 6)
    x = torch.randn(3, 2, *spatial, generator=_g(0), dtype=DT)
    k = torch.randn(3, 2, *ksize, generator=_g(1), dtype=DT)
    assert_close_rel(direct_conv(x, k, modes), fft_conv(x, k, mode=modes), 1e-12)


def test_chunked_equals_unchunked_and_channels_last():
    x = torch.randn(2, 7, 5, 6, generator=_g(0), dtype=DT)
    k = torch.randn(7, 9, 11, generator=_g(1), dtype=DT)
    d = torch.randn(7, generator=_g(2), dtype=DT)
    full = fft_conv(x, k, d, mode="zero")
    assert_close_rel(full, fft_conv(x, k, d, mode="zero", chunk_size=3), 1e-13)
    last = fft_conv(x.movedim(1, -1), k, d, mode="zero", channels_last=True, chunk_size=2)
    assert_close_rel(full, last.movedim(-1, 1), 1e-13)


def test_circular_is_exactly_shift_equivariant():
    x = torch.randn(2, 3, 6, 7, generator=_g(0), dtype=DT)
    k = torch.randn(3, 6, 7, generator=_g(1), dtype=DT)
    for shift in [(1, 0), (2, 3), (5, 6)]:
        assert_equivariant(
            lambda t: fft_conv(t, k, mode="circular"),
            x,
            lambda t, s=shift: torch.roll(t, s, dims=(2, 3)),
            rtol=1e-13,
        )


def test_causal_is_causal():
    k = torch.randn(4, 20, generator=_g(1), dtype=DT)
    x = torch.randn(2, 4, 17, generator=_g(0), dtype=DT)
    assert_causal(lambda t: fft_conv(t, k, mode="causal"), x, time_axis=2, atol=1e-12)


def test_fft_sizes_are_minimal_and_fast():
    assert [next_fast_len(n) for n in (1, 7, 11, 13, 97, 1025, 8191)] == [
        1,
        7,
        12,
        14,
        98,
        1029,
        8192,
    ]
    (causal,) = fft_conv_plan((4096,), (4096,), ("causal",))
    assert causal.fft_size == 8192  # n ≥ L + K − 1 = 8191
    (zero,) = fft_conv_plan((4096,), (8191,), ("zero",))
    assert zero.fft_size == next_fast_len(4096 + 4095)
    (short,) = fft_conv_plan((4096,), (5,), ("zero",))
    assert short.fft_size == next_fast_len(4096 + 2)
    (circ,) = fft_conv_plan((100,), (300,), ("circular",))
    assert circ.fft_size == 100
    (exact,) = fft_conv_plan((4096,), (4096,), ("causal",), fast=False)
    assert exact.fft_size == 8191


def test_bfloat16_io_and_float32_spectral_math():
    x = torch.randn(2, 8, 256, generator=_g(0))
    k = torch.randn(8, 256, generator=_g(1)) / 16
    y = fft_conv(x.bfloat16(), k.bfloat16(), mode="causal")
    assert y.dtype == torch.bfloat16
    ref = direct_conv(x.bfloat16().double(), k.bfloat16().double(), ("causal",))
    # Only the output rounding to bfloat16 (at most 2^-9 relative per element) remains: the
    # spectral math is float32 (its error, ~1e-6, is the margin).
    assert compute_relative_error(ref, y) < 2**-9 + 1e-5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_auto = fft_conv(x.bfloat16(), k, mode="causal")
    assert y_auto.dtype == torch.bfloat16
    ref_auto = direct_conv(x.bfloat16().double(), k.double(), ("causal",))
    assert compute_relative_error(ref_auto, y_auto) < 2**-9 + 1e-5


def test_vmap_over_batch_of_kernels_and_grad_via_func():
    x = torch.randn(2, 3, 10, generator=_g(0), dtype=DT)
    ks = torch.randn(4, 3, 10, generator=_g(1), dtype=DT)
    assert_vmap_matches_loop(
        lambda k, t: fft_conv(t, k, mode="zero"), (ks, x), (0, None), rtol=1e-12
    )
    g = torch.func.grad(lambda k: fft_conv(x, k, mode="causal").square().sum())(ks[0])
    k0 = ks[0].clone().requires_grad_(True)
    (want,) = torch.autograd.grad(direct_conv(x, k0, ("causal",)).square().sum(), k0)
    assert_close_rel(want, g, 1e-11)


def test_compiles_without_graph_breaks():
    x = torch.randn(2, 3, 9, 5, generator=_g(0))
    k = torch.randn(3, 17, 5, generator=_g(1))
    d = torch.randn(3, generator=_g(2))
    assert_compiles(lambda t, kk, dd: fft_conv(t, kk, dd, mode=("zero", "circular")), x, k, d)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "same"}, r"mode must be one of \['causal', 'zero', 'circular'\], got 'same'"),
        ({"mode": ("zero",)}, "one per spatial axis"),
        ({"mode": ("causal", "zero")}, "'causal' needs exactly one spatial axis"),
        ({"mode": ("causal", "circular")}, "'causal' needs exactly one spatial axis"),
        ({"mode": "zero", "chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_modes(kwargs, message):
    x = torch.randn(1, 2, 4, 4)
    k = torch.randn(2, 3, 3)
    with pytest.raises(ValueError, match=message):
        fft_conv(x, k, **kwargs)


def test_bad_shapes():
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match=r"with 2 spatial axes like x \(rank 3 or 4\), got rank 2"):
        fft_conv(x, torch.randn(2, 3), mode="zero")
    with pytest.raises(ValueError, match="kernel channels must equal x's channels 2"):
        fft_conv(x, torch.randn(3, 3, 3), mode="zero")
    with pytest.raises(ValueError, match="per-sample kernel's batch"):
        fft_conv(x, torch.randn(2, 2, 3, 3), mode="zero")
    with pytest.raises(ValueError, match="skip must be"):
        fft_conv(x, torch.randn(2, 3, 3), torch.randn(3), mode="zero")
    with pytest.raises(ValueError, match="1 to 3 spatial axes"):
        fft_conv(torch.randn(2, 3), torch.randn(3, 1))


def test_fused_cores_trace_and_match_reference_with_gradients():
    """The compiled backend's cores (real-view product, gates folded in) under aot_eager.

    Inductor itself runs on the GPU benchmark (which checks every variant against the float64
    reference before timing); here the traced graph and its autograd are checked on CPU.
    """
    from subq.ops import fftconv as ops

    x = torch.randn(2, 3, 11, generator=_g(0), dtype=DT, requires_grad=True)
    k = torch.randn(3, 11, generator=_g(1), dtype=DT, requires_grad=True)
    d = torch.randn(3, generator=_g(2), dtype=DT)
    plans = ops.fft_conv_plan((11,), (11,), ("causal",))
    core = torch.compile(ops._conv_core_k, fullgraph=True, backend="aot_eager")
    got = core(x, k, d, plans, DT)
    want = direct_conv(x, k, ("causal",), d)
    assert_close_rel(want, got, 1e-12)
    cot = torch.randn(got.shape, generator=_g(3), dtype=DT)
    assert_close_rel(
        torch.autograd.grad((want * cot).sum(), (x, k)),
        torch.autograd.grad((got * cot).sum(), (x, k)),
        1e-11,
    )
    q, kk, v = (torch.randn(2, 11, 3, generator=_g(s), dtype=DT) for s in (4, 5, 6))
    gated = torch.compile(ops._gated_core_k, fullgraph=True, backend="aot_eager")
    got = gated(q, kk, v, k.detach(), d, plans, "silu")
    z = (q * torch.sigmoid(kk)).movedim(-1, 1)
    h = direct_conv(z, k.detach(), ("causal",), d).movedim(1, -1)
    assert_close_rel(h * torch.nn.functional.silu(v), got, 1e-12)


def test_cuda_dispatch_traces_inside_an_outer_compile():
    """Regression (found on the GPU): choosing the compiled CUDA backend inside an outer
    torch.compile probed an import, which dynamo cannot trace."""
    from subq.ops import fftconv as ops

    facts = {"device": "cuda", "dtype": torch.bfloat16, "modes": ("causal",), "length": 64}
    facts["kernel_dtype"] = torch.float32

    def choose(x):
        ops.gated_fft_conv_op.decide(facts)
        ops.fft_conv_op.decide(facts)
        return x + 1

    from subq.ops.capabilities import module_available

    module_available.cache_clear()  # the GPU failure happened on the first, uncached probe
    torch._dynamo.reset()
    assert torch.compile(choose, fullgraph=True, backend="eager")(torch.ones(2)).sum() == 4
    assert ops.fft_conv_op.decide(facts).chosen in ("fourstep", "compiled", "reference")


# The FFTs themselves stay extern calls; Inductor warns that it does not generate complex code.
@pytest.mark.filterwarnings("ignore:Torchinductor does not support code generation for complex")
def test_compiled_backend_with_inductor_matches_reference_forward_and_gradients():
    """The ``compiled`` backend's functions built by Inductor (on CPU here; the GPU benchmark
    checks CUDA forward outputs), forward and gradients, plain and gated."""
    from subq.ops import fftconv as ops

    x = torch.randn(2, 3, 9, generator=_g(0), requires_grad=True)
    k = torch.randn(3, 9, generator=_g(1), requires_grad=True)
    d = torch.randn(3, generator=_g(2), requires_grad=True)
    got = ops._fft_conv_compiled(x, k, d, ("causal",))
    want = ops.fft_conv_reference(x, k, d, ("causal",))
    assert_close_rel(want, got, 1e-6)
    assert_close_rel(
        torch.autograd.grad(want.square().sum(), (x, k, d)),
        torch.autograd.grad(got.square().sum(), (x, k, d)),
        1e-5,
    )
    q, kk, v = (torch.randn(2, 9, 3, generator=_g(s), requires_grad=True) for s in (3, 4, 5))
    got = ops._gated_compiled(q, kk, v, k, d, ("causal",))
    want = ops.gated_fft_conv_reference(q, kk, v, k, d, ("causal",))
    assert_close_rel(want, got, 1e-6)
    inputs = (q, kk, v, k, d)
    assert_close_rel(
        torch.autograd.grad(want.square().sum(), inputs),
        torch.autograd.grad(got.square().sum(), inputs),
        1e-5,
    )


@pytest.mark.parametrize("shape", [(0, 3, 40), (2, 0, 40), (2, 3, 0), (0, 3, 4, 5)])
def test_empty_inputs_give_empty_outputs(shape):
    nd = len(shape) - 2
    kernel = torch.randn(shape[1], *([3] * nd), requires_grad=True)
    skip = torch.randn(shape[1], requires_grad=True)
    x = torch.randn(*shape, requires_grad=True)
    mode = "causal" if nd == 1 else "zero"
    y = fft_conv(x, kernel, skip, mode=mode)
    assert y.shape == x.shape and y.dtype == x.dtype
    y.sum().backward()
    for t in (x, kernel, skip):  # every input gets a (zero) gradient, none raises
        assert t.grad is not None and t.grad.shape == t.shape and not t.grad.any()
    with pytest.raises(ValueError, match="backend must be one of"):
        fft_conv(x, kernel, mode=mode, backend="bogus")


def test_kernel_without_taps_is_refused():
    with pytest.raises(ValueError, match="at least one tap along each spatial axis"):
        fft_conv(torch.randn(1, 2, 8), torch.randn(2, 0), mode="causal")
