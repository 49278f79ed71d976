"""The ``fft_conv`` op: depthwise long convolution of ``[B, C, *spatial]`` by FFT.

Semantics (per spatial axis of length ``N`` with a kernel of ``K`` taps, centre ``c``):

``y[i] = Σ_m k[m] · x[i − (m − c)]`` (a convolution, not a cross-correlation), where the boundary
mode says what ``x`` is outside ``[0, N)``:

* ``"causal"`` (1D only): ``c = 0``, ``x`` is zero before 0, so ``y[t]`` uses ``x[≤ t]`` only;
* ``"zero"``: ``c = K // 2`` (PyTorch's ``padding="same"`` centre), ``x`` is zero outside;
* ``"circular"``: ``c = K // 2``, ``x`` is periodic with period ``N``.

The oracle is ``F.conv{1,2,3}d`` of the flipped kernel with ``padding="same"`` (zero),
circular padding (circular) or left padding ``K − 1`` (causal). Kernel taps that cannot reach an
output are dropped and a circular kernel longer than ``N`` is folded modulo ``N``, so any kernel
length works. Each axis uses the smallest FFT size that is exact for its mode, rounded up to a
product of 2, 3, 5 and 7 (:func:`next_fast_len`). Spectral math runs in float32 (float64 stays
float64); the output has the input's dtype.

Backends, first choice first: ``fourstep`` (CUDA, 1D causal and 2D zero-padded: Triton kernels
for short column DFTs, fused with reading ``x`` and writing ``y``, around short cuFFT transforms;
in 1D a twisted transform with P-point complex spectra instead of 2L-point zero-padded real ones,
see :mod:`subq.ops._causal_fftconv`; in 2D a transform folded along the last axis into half as
many complex points, see :mod:`subq.ops._same_fftconv2d`), ``compiled`` (CUDA: the same math as
the reference under ``torch.compile``, so the cast and zero padding fuse into the pass before the
forward FFT and the crop, skip and cast into the pass after it; the FFTs stay cuFFT calls; also
what runs inside an outer ``torch.compile``, a ``torch.func`` transform or forward-mode AD, as
plain math) and ``reference``
(plain ``torch.fft``, any device; the oracle). The kernel spectrum is computed once per call and
shared by the batch.

``gated_fft_conv`` is Hyena's long convolution with its gates folded in:
``(K ∗ z + D ⊙ z) ⊙ σ₂(v)`` with ``z = q ⊙ σ(k)``, on channels-last inputs, with the same
backends (the gates and the layout change fuse into the passes around the FFTs; for
``fourstep``, into one pass before and one after, with ``z`` kept in float32: Triton kernels
without autograd, compiled ones with it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from subq.ops._compile import compiled_check, compiled_for, tensor_signature
from subq.ops.capabilities import module_available
from subq.ops.dispatch import Backend, Op

__all__ = [
    "MODES",
    "fft_conv_direct",
    "fft_conv_op",
    "fft_conv_plan",
    "fft_conv_reference",
    "gated_fft_conv_op",
    "gated_fft_conv_reference",
    "kernel_spectrum",
    "next_fast_len",
]

#: Valid boundary modes.
MODES = ("causal", "zero", "circular")


def next_fast_len(n: int) -> int:
    """The smallest integer ``≥ n`` whose prime factors are all in {2, 3, 5, 7}.

    Example:
        >>> next_fast_len(1025), next_fast_len(11)
        (1029, 12)
    """
    if n <= 1:
        return 1
    m = n
    while True:
        r = m
        for p in (2, 3, 5, 7):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


class AxisPlan(NamedTuple):
    """How one spatial axis is convolved (static facts only; a NamedTuple so compile traces it).

    Attributes:
        mode: boundary mode.
        n_in: input length along the axis.
        k_lo: first kernel tap that can reach an output.
        k_hi: one past the last such tap.
        centre: index (in the kept taps) of offset 0.
        fft_size: FFT length for the axis.
    """

    mode: str
    n_in: int
    k_lo: int
    k_hi: int
    centre: int
    fft_size: int


def _axis_plan(mode: str, n_in: int, k_len: int, fast: bool) -> AxisPlan:
    rounder = next_fast_len if fast else (lambda v: v)
    if mode == "causal":
        # Taps at lags ≥ N never reach an output inside [0, N).
        lo, hi, centre = 0, min(k_len, n_in), 0
        keff = hi - lo
        size = rounder(n_in + keff - 1)
    elif mode == "zero":
        c = k_len // 2
        # Offsets m − c beyond ±(N − 1) only reach outputs outside [0, N).
        lo, hi = max(0, c - (n_in - 1)), min(k_len, c + n_in)
        centre = c - lo
        keff = hi - lo
        # No wrap-around onto outputs [0, N): n > N − 1 + centre and n > N + keff − 2 − centre.
        size = rounder(max(n_in + centre, n_in + keff - 1 - centre))
    elif mode == "circular":
        lo, hi, centre = 0, k_len, k_len // 2
        size = n_in  # exact by definition; the kernel is folded modulo N
    else:
        raise ValueError(f"fft_conv: mode must be one of {list(MODES)}, got {mode!r}")
    return AxisPlan(mode, n_in, lo, hi, centre, size)


def fft_conv_plan(
    spatial: Sequence[int], kernel_sizes: Sequence[int], modes: Sequence[str], fast: bool = True
) -> tuple[AxisPlan, ...]:
    """FFT plan for each spatial axis (static: depends on sizes and modes only).

    ``fast=False`` uses the minimal exact size instead of the next 2·3·5·7-smooth one.
    """
    return tuple(
        _axis_plan(m, int(n), int(k), fast) for m, n, k in zip(modes, spatial, kernel_sizes)
    )


def _wrap_axis(kernel: Tensor, axis: int, plan: AxisPlan) -> Tensor:
    """Kernel along ``axis`` → length-``fft_size`` buffer with offset 0 at index 0 (mod size)."""
    k = kernel.narrow(axis, plan.k_lo, plan.k_hi - plan.k_lo)
    keff, size = k.shape[axis], plan.fft_size
    reps = -(-keff // size)
    if reps * size != keff:
        pad = [0, 0] * (k.ndim - 1 - axis % k.ndim) + [0, reps * size - keff]
        k = torch.nn.functional.pad(k, pad)
    # Tap m goes to (m − centre) mod (reps·size); summing the reps blocks folds it mod size
    # (circular kernels longer than the input wrap around; otherwise reps == 1).
    k = torch.roll(k, -plan.centre, dims=axis)
    if reps > 1:
        shape = list(k.shape)
        k = k.reshape([*shape[:axis], reps, size, *shape[axis + 1 :]]).sum(axis)
    return k


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def kernel_spectrum(kernel: Tensor, plans: Sequence[AxisPlan]) -> Tensor:
    """``rfftn`` of the wrapped kernel ``[..., *K]`` (last ``len(plans)`` axes spatial), fp32+."""
    nd = len(plans)
    k = kernel.to(_compute_dtype(kernel.dtype))
    for i, plan in enumerate(plans):
        k = _wrap_axis(k, k.ndim - nd + i, plan)
    dims = tuple(range(-nd, 0))
    return torch.fft.rfftn(k, s=[p.fft_size for p in plans], dim=dims)


def _cmul(a: Tensor, b: Tensor) -> Tensor:
    """Complex product; under compile written on real views, so Inductor fuses it as ordinary
    pointwise math (Inductor does not generate code for complex ops). Eager uses the native op."""
    if not torch.compiler.is_compiling():
        return a * b
    ar, br = torch.view_as_real(a), torch.view_as_real(b)
    re = ar[..., 0] * br[..., 0] - ar[..., 1] * br[..., 1]
    im = ar[..., 0] * br[..., 1] + ar[..., 1] * br[..., 0]
    return torch.view_as_complex(torch.stack((re, im), dim=-1))


def _conv_core(
    x: Tensor, kspec: Tensor, skip: Tensor | None, sizes: tuple[int, ...], out_dtype: torch.dtype
) -> Tensor:
    """``irfftn(rfftn(x) · kspec)`` cropped, plus ``skip ⊙ x``, on channels-first ``x``.

    Written so that under ``torch.compile`` the cast and the zero padding fuse into one pass
    before the forward FFT, and the crop, skip and output cast into one pass after the inverse.
    """
    nd = len(sizes)
    spatial = x.shape[2:]
    dims = tuple(range(-nd, 0))
    x_c = x.to(kspec.real.dtype)
    y = torch.fft.irfftn(_cmul(torch.fft.rfftn(x_c, s=sizes, dim=dims), kspec), s=sizes, dim=dims)
    for i, n in enumerate(spatial):
        y = y.narrow(2 + i, 0, n)
    if skip is not None:
        y = y + x_c * skip.to(x_c.dtype).reshape(-1, *([1] * nd))
    return y.to(out_dtype)


def _chunks(channels: int, chunk_size: int | None) -> list[tuple[int, int]]:
    if chunk_size is None or chunk_size >= channels:
        return [(0, channels)]
    return [(s, min(chunk_size, channels - s)) for s in range(0, channels, chunk_size)]


def fft_conv_reference(
    x: Tensor,
    kernel: Tensor,
    skip: Tensor | None,
    modes: tuple[str, ...],
    chunk_size: int | None = None,
    fast_sizes: bool = True,
) -> Tensor:
    """Plain ``torch.fft`` implementation on channels-first ``x`` ``[B, C, *spatial]``.

    ``kernel`` is ``[C, *K]`` or per-sample ``[B, C, *K]``; ``skip`` is ``[C]`` or None.
    ``chunk_size`` processes that many channels at a time (bounds the spectral buffers).
    """
    return _fft_conv_with(_conv_core, x, kernel, skip, modes, chunk_size, fast_sizes)


def _fft_conv_with(core, x, kernel, skip, modes, chunk_size, fast_sizes) -> Tensor:
    nd = len(modes)
    plans = fft_conv_plan(tuple(x.shape[2:]), kernel.shape[-nd:], modes, fast_sizes)
    sizes = tuple(p.fft_size for p in plans)
    kspec = kernel_spectrum(kernel, plans)  # once per call, shared by the batch
    outs = []
    for start, width in _chunks(x.shape[1], chunk_size):
        xs = x.narrow(1, start, width)
        ks = kspec.narrow(kspec.ndim - nd - 1, start, width)
        ss = None if skip is None else skip.narrow(0, start, width)
        outs.append(core(xs, ks, ss, sizes, x.dtype))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


def value_gate_fn(kind: str, v: Tensor) -> Tensor:
    """Hyena's value gate ``σ₂``: ``"sigmoid"``, ``"silu"`` or anything else for none."""
    if kind == "sigmoid":
        return torch.sigmoid(v)
    if kind == "silu":
        return torch.nn.functional.silu(v)
    return v


def _gated_core(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kspec: Tensor,
    skip: Tensor,
    sizes: tuple[int, ...],
    value_gate: str,
) -> Tensor:
    """``(K ∗ z + D ⊙ z) ⊙ σ₂(v)`` with ``z = q ⊙ σ(k)``, channels-last in and out.

    Under ``torch.compile`` the gate, transpose, cast and padding fuse into the pass before the
    forward FFT, and the crop, skip, value gate, transpose and cast into the pass after.
    """
    cdt = kspec.real.dtype
    h = _conv_core(_gate_in(q, k, cdt), kspec, skip, sizes, cdt)
    return _gate_out(h, v, value_gate, q.dtype)


def gated_fft_conv_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel: Tensor,
    skip: Tensor,
    modes: tuple[str, ...],
    value_gate: str = "sigmoid",
    chunk_size: int | None = None,
) -> Tensor:
    """Hyena's gated long convolution on channels-last ``[B, *spatial, C]`` inputs (plain)."""
    return _gated_with(_gated_core, q, k, v, kernel, skip, modes, value_gate, chunk_size)


def _gated_with(core, q, k, v, kernel, skip, modes, value_gate, chunk_size) -> Tensor:
    nd = len(modes)
    plans = fft_conv_plan(tuple(q.shape[1:-1]), kernel.shape[-nd:], modes)
    sizes = tuple(p.fft_size for p in plans)
    kspec = kernel_spectrum(kernel, plans)
    outs = []
    for start, width in _chunks(q.shape[-1], chunk_size):
        qs, ks_, vs = (t.narrow(-1, start, width) for t in (q, k, v))
        spec = kspec.narrow(kspec.ndim - nd - 1, start, width)
        outs.append(core(qs, ks_, vs, spec, skip.narrow(0, start, width), sizes, value_gate))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)


def _conv_core_k(x, kernel, skip, plans, out_dtype):
    # The kernel spectrum inside the compiled region: one graph, no eager launches per call.
    sizes = tuple(p.fft_size for p in plans)
    return _conv_core(x, kernel_spectrum(kernel, plans), skip, sizes, out_dtype)


def _gated_core_k(q, k, v, kernel, skip, plans, value_gate):
    sizes = tuple(p.fft_size for p in plans)
    return _gated_core(q, k, v, kernel_spectrum(kernel, plans), skip, sizes, value_gate)


def _channel_chunks(x, kernel, skip, nd, chunk_size):
    """``(x, kernel, skip)`` for each block of channels (channels-first ``x``)."""
    if chunk_size is None or chunk_size >= x.shape[1]:  # no views to make (host time)
        yield x, kernel, skip
        return
    for start, width in _chunks(x.shape[1], chunk_size):
        yield (
            x.narrow(1, start, width),
            kernel.narrow(kernel.ndim - nd - 1, start, width),
            None if skip is None else skip.narrow(0, start, width),
        )


def _fft_conv_compiled(x, kernel, skip, modes, chunk_size=None, fast_sizes=True) -> Tensor:
    nd = len(modes)
    plans = fft_conv_plan(tuple(x.shape[2:]), kernel.shape[-nd:], modes, fast_sizes)
    outs = []
    for xs, ks, ss in _channel_chunks(x, kernel, skip, nd, chunk_size):
        fn = compiled_for("conv", _conv_core_k, (*tensor_signature(xs, ks, ss), plans, x.dtype))
        outs.append(fn(xs, ks, ss, plans, x.dtype))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


def _fourstep_conv(x: Tensor, kernel: Tensor, skip: Tensor | None, modes) -> Tensor:
    """The four-step convolution for ``modes`` (in ``_fourstep_scope``): 1D causal or 2D zero."""
    if tuple(modes) == ("causal",):
        from subq.ops._causal_fftconv import causal_fft_conv_fourstep

        return causal_fft_conv_fourstep(x, kernel, skip)
    from subq.ops._same_fftconv2d import same_fft_conv2d

    return same_fft_conv2d(x, kernel, skip)


def _fft_conv_fourstep(x, kernel, skip, modes, chunk_size=None, fast_sizes=True) -> Tensor:
    outs = [
        _fourstep_conv(xs, ks, ss, modes)
        for xs, ks, ss in _channel_chunks(x, kernel, skip, len(modes), chunk_size)
    ]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


def _gate_in(q: Tensor, k: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``z = q ⊙ σ(k)`` in ``dtype``, channels first (one pass when compiled)."""
    return (q.to(dtype) * torch.sigmoid(k.to(dtype))).movedim(-1, 1)


def _gate_in_rows(q: Tensor, k: Tensor) -> Tensor:
    """``z`` in float32 as contiguous ``[B, C, *spatial]`` rows: the four-step path's input gate
    off CUDA (on CUDA a Triton pass, :mod:`subq.ops._fourstep_gates`)."""
    return _gate_in(q, k).contiguous()


def _gate_out(h: Tensor, v: Tensor, value_gate: str, dtype: torch.dtype) -> Tensor:
    """``h ⊙ σ₂(v)`` back to channels last, computed in ``h``'s dtype, returned in ``dtype``."""
    return (h.movedim(1, -1) * value_gate_fn(value_gate, v.to(h.dtype))).to(dtype)


def _gated_fourstep(q, k, v, kernel, skip, modes, value_gate="sigmoid", chunk_size=None):
    from subq.ops._causal_fftconv import _use_triton

    nd = len(modes)
    # The gates are one Triton pass each way (and one each for the backward): compiled regions
    # cost more host time (guards, wrappers) than the whole convolution's GPU time at 4k.
    # Off CUDA (the four-step math in PyTorch) they are the plain formulas.
    if _use_triton(q.device):
        from subq.ops._fourstep_gates import gate_in_rows, gate_out
    else:
        gate_in_rows, gate_out = _gate_in_rows, _gate_out
    outs = []
    for start, width in _chunks(q.shape[-1], chunk_size):
        qs, ks_, vs = (t.narrow(-1, start, width) for t in (q, k, v))
        kern = kernel.narrow(kernel.ndim - nd - 1, start, width)
        h = _fourstep_conv(gate_in_rows(qs, ks_), kern, skip.narrow(0, start, width), modes)
        outs.append(gate_out(h, vs, value_gate, q.dtype))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)


#: Longest row the dispatcher gives to ``fourstep``: the longest measured faster than ``compiled``
#: (H200: 5.2 vs 12.1 ms for the gated convolution at B1 × C1024 × 131072).
FOURSTEP_MAX_LENGTH = 131072


#: Largest 2D planes for ``fourstep`` (H, W, H·W): the launch grid's second and third axes
#: (``N2`` ≤ 2H / 8 and ``Q / 64`` blocks, CUDA's limit 65535) and the kernels' int32 in-plane
#: offsets (``S_H · S_W ≤ ~4 H W`` floats) stay in range with a wide margin.
FOURSTEP_2D_MAX = (1 << 17, 1 << 21, 1 << 26)


def _fourstep_scope(facts: Mapping[str, Any]) -> str | None:
    """What the ``fourstep`` backend is for: eager 1D causal or 2D zero-padded convolution in
    float32 or narrower (2D planes within :data:`FOURSTEP_2D_MAX`).

    Outside it another backend is the intended path, not a fallback: inside ``torch.compile`` and
    under ``torch.func`` transforms the ``compiled`` backend traces the plain math.
    """
    if tuple(facts["modes"]) not in (("causal",), ("zero", "zero")):
        return (
            f"modes {tuple(facts['modes'])} (the four-step kernels are for 1D causal and 2D "
            "zero-padded convolutions)"
        )
    for key in ("dtype", "kernel_dtype"):
        if facts[key] == torch.float64:
            return f"{key} float64 (the four-step path computes in float32)"
    if torch.compiler.is_compiling():
        return "inside torch.compile (the compiled backend traces its math into the graph)"
    if torch._C._functorch.maybe_current_level() is not None:
        return "under a torch.func transform (its kernels have no batching or functional rule)"
    if len(facts["modes"]) == 2 and facts.get("spatial") is not None:
        h, w = facts["spatial"]
        if h > FOURSTEP_2D_MAX[0] or w > FOURSTEP_2D_MAX[1] or h * w > FOURSTEP_2D_MAX[2]:
            return (
                f"a {h}×{w} plane (the 2D kernels index planes up to H {FOURSTEP_2D_MAX[0]}, "
                f"W {FOURSTEP_2D_MAX[1]}, H·W {FOURSTEP_2D_MAX[2]})"
            )
    return None


def _fourstep_prefer(facts: Mapping[str, Any]) -> str | None:
    """Where the dispatcher prefers ``compiled``: causal rows longer than any measured faster."""
    if tuple(facts["modes"]) == ("causal",) and facts["length"] > FOURSTEP_MAX_LENGTH:
        return (
            f"length {facts['length']} > {FOURSTEP_MAX_LENGTH} (not measured faster than "
            "'compiled' there; backend='fourstep' still runs it)"
        )
    return None


def _fourstep_check(facts: Mapping[str, Any]) -> str | None:
    """Whether the ``fourstep`` backend can run: a float16/bfloat16/float32 input and Triton."""
    if facts["dtype"] not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {facts['dtype']} (the four-step path is for float16/bfloat16/float32)"
    return module_available("triton")


_FOURSTEP = {
    "scope": _fourstep_scope,
    "prefer": _fourstep_prefer,
    "check": _fourstep_check,
    "forward_ad": False,
}


def _gated_compiled(q, k, v, kernel, skip, modes, value_gate="sigmoid", chunk_size=None):
    nd = len(modes)
    plans = fft_conv_plan(tuple(q.shape[1:-1]), kernel.shape[-nd:], modes)
    outs = []
    for start, width in _chunks(q.shape[-1], chunk_size):
        qs, ks_, vs = (t.narrow(-1, start, width) for t in (q, k, v))
        kern = kernel.narrow(kernel.ndim - nd - 1, start, width)
        ss = skip.narrow(0, start, width)
        key = (*tensor_signature(qs, ks_, vs, kern, ss), plans, value_gate)
        outs.append(
            compiled_for("gated", _gated_core_k, key)(qs, ks_, vs, kern, ss, plans, value_gate)
        )
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)


def fft_conv_direct(x: Tensor, kernel: Tensor, skip: Tensor | None, modes: Sequence[str]) -> Tensor:
    """Independent oracle: ``F.conv{1,2,3}d`` of the flipped kernel with each mode's padding.

    ``O(N·K)`` per axis; for tests. Circular padding tiles the input, so kernels longer than the
    input work too. ``kernel`` is ``[C, *K]`` or per-sample ``[B, C, *K]``.
    """
    nd = len(modes)
    xp = x
    for i, m in enumerate(modes):
        k, n, ax = kernel.shape[kernel.ndim - nd + i], x.shape[2 + i], 2 + i
        lo, hi = (k - 1, 0) if m == "causal" else (k - 1 - k // 2, k // 2)
        if m == "circular":
            reps = -(-max(lo, hi) // n) + 1
            xp = torch.cat([xp] * (2 * reps + 1), dim=ax).narrow(ax, reps * n - lo, n + lo + hi)
        else:
            pad = [0, 0] * (xp.ndim - 1 - ax) + [lo, hi]
            xp = torch.nn.functional.pad(xp, pad)
    conv = (torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d)[
        nd - 1
    ]
    flipped = kernel.flip(list(range(-nd, 0)))
    groups = x.shape[1]
    if kernel.ndim == nd + 2:  # per sample: one grouped convolution per sample
        y = torch.cat(
            [conv(xp[b : b + 1], flipped[b].unsqueeze(1), groups=groups) for b in range(x.shape[0])]
        )
    else:
        y = conv(xp, flipped.unsqueeze(1), groups=groups)
    if skip is not None:
        y = y + x * skip.reshape(-1, *([1] * nd))
    return y


fft_conv_op = Op(
    "fft_conv",
    [
        Backend("fourstep", _fft_conv_fourstep, devices=("cuda",), **_FOURSTEP),
        Backend("compiled", _fft_conv_compiled, devices=("cuda",), check=compiled_check),
        Backend("reference", fft_conv_reference),
    ],
    example_facts={
        "dtype": torch.bfloat16,
        "kernel_dtype": torch.float32,
        "modes": ("causal",),
        "length": 4096,
    },
)

gated_fft_conv_op = Op(
    "gated_fft_conv",
    [
        Backend("fourstep", _gated_fourstep, devices=("cuda",), **_FOURSTEP),
        Backend("compiled", _gated_compiled, devices=("cuda",), check=compiled_check),
        Backend("reference", gated_fft_conv_reference),
    ],
    example_facts={
        "dtype": torch.bfloat16,
        "kernel_dtype": torch.float32,
        "modes": ("causal",),
        "length": 4096,
    },
)
