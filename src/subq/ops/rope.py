"""The ``rope`` op: apply rotary position embeddings given a cos/sin cache.

Every backend takes ``(x, cos, sin, sections, pairing)``: ``x`` is ``[..., D]``; ``cos``/``sin`` are
``[..., W]`` and broadcast with ``x``'s leading axes without enlarging them (the caller,
:func:`subq.functional.rope.apply_rope`, has checked the shapes). ``sections`` lists the rotated
channels of each axis block; each block is rotated on its own (pairs never cross blocks).
Channels past ``sum(sections)`` pass through unchanged (partial rotary).

Pairings (per block of ``d`` channels, pair ``j < d/2``):

* ``"split_half"`` (GPT-NeoX): channels ``j`` and ``j + d/2`` form pair ``j``; ``W`` has ``d/2``
  columns per block.
* ``"interleaved"`` (GPT-J): channels ``2j`` and ``2j + 1`` form pair ``j``; ``d/2`` columns.
* ``"nvsubquadratic"``: the reference library's numerics (not a rotation): ``x·cos + rot(x)·sin``
  with the split-half ``rot`` and one column per *channel* (``W`` has ``d`` columns per block).

Backends, fastest first: ``triton`` (CUDA, a fused Triton kernel behind a
``torch.autograd.Function`` with a vmap rule) and ``reference`` (plain PyTorch, any device).
Inside ``torch.compile`` the ``triton`` backend emits the plain formula, which Inductor fuses
(with its neighbours too); the kernel serves eager mode, ``vmap`` and ``grad``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from subq.ops.capabilities import module_available
from subq.ops.dispatch import Backend, Op

__all__ = ["PAIRINGS", "rope_fused", "rope_op", "rope_reference"]

#: Valid pairing names.
PAIRINGS = ("split_half", "interleaved", "nvsubquadratic")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # float32 math for reduced precision; float64 stays float64 (exactness in tests).
    return torch.promote_types(dtype, torch.float32)


def _rotate_block(x: Tensor, cos: Tensor, sin: Tensor, pairing: str) -> Tensor:
    """Rotate one block of channels (all channels of ``x``) with its cos/sin columns."""
    if pairing == "interleaved":
        pairs = x.unflatten(-1, (-1, 2))
        a, b = pairs[..., 0], pairs[..., 1]
        return torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(-2)
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    if pairing == "split_half":
        return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)
    # nvsubquadratic: one angle per channel, so the two members of a "pair" turn by different
    # angles; reproduced as is for loading reference checkpoints.
    rotated = torch.cat((-b, a), dim=-1)
    return x * cos + rotated * sin


def rope_reference(
    x: Tensor, cos: Tensor, sin: Tensor, sections: tuple[int, ...], pairing: str
) -> Tensor:
    """Plain-PyTorch rotary embedding; the oracle of every other backend."""
    ct = _compute_dtype(x.dtype)
    x32, cos, sin = x.to(ct), cos.to(ct), sin.to(ct)
    per_channel = pairing == "nvsubquadratic"
    rot = sum(sections)
    if pairing == "interleaved" or len(sections) == 1:
        # Interleaved pairs never cross an (even-sized) block boundary: one call covers all.
        blocks = [_rotate_block(x32[..., :rot], cos, sin, pairing)]
    else:
        blocks, start, col = [], 0, 0
        for d in sections:
            width = d if per_channel else d // 2
            blocks.append(
                _rotate_block(
                    x32[..., start : start + d],
                    cos[..., col : col + width],
                    sin[..., col : col + width],
                    pairing,
                )
            )
            start, col = start + d, col + width
    if rot < x.shape[-1]:
        blocks.append(x32[..., rot:])
    out = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=-1)
    return out.to(x.dtype)


# --------------------------------------------------------------------------------------------
# Fused path: one Triton kernel, wrapped in an autograd.Function with a vmap rule
# --------------------------------------------------------------------------------------------

#: The kernel addresses rows through at most this many (merged) leading axes.
MAX_LEAD_DIMS = 4
_MODE_SPLIT, _MODE_INTERLEAVED, _MODE_GATHER = 0, 1, 2


def _merge_dims(sizes, *stride_lists) -> list[tuple[int, ...]]:
    """Drop size-1 axes and merge neighbours that are contiguous in every stride list.

    Returns ``[(size, stride_0, stride_1, ...)]``, outermost first.
    """
    merged: list[tuple[int, ...]] = []
    for i, n in enumerate(sizes):
        if n == 1:
            continue
        strides = tuple(sl[i] for sl in stride_lists)
        if merged and all(prev == s * n for prev, s in zip(merged[-1][1:], strides)):
            merged[-1] = (merged[-1][0] * n, *strides)
        else:
            merged.append((n, *strides))
    return merged


def _broadcast_strides(cache_shape: tuple[int, ...], lead: tuple[int, ...]) -> list[int]:
    """Strides (elements) of a contiguous ``[*cache_lead, W]`` cache expanded to ``lead``."""
    cache_lead = cache_shape[:-1]
    strides, step = [], cache_shape[-1]
    contiguous = []
    for n in reversed(cache_lead):
        contiguous.append(step)
        step *= n
    contiguous.reverse()
    pad = len(lead) - len(cache_lead)
    for i in range(len(lead)):
        j = i - pad
        strides.append(0 if j < 0 or cache_lead[j] == 1 else contiguous[j])
    return strides


@functools.lru_cache(maxsize=512)
def _contiguous_lead_dims(x_shape: tuple[int, ...], cache_shape: tuple[int, ...]) -> int:
    """Merged leading axes for a contiguous ``x`` (the worst case the launcher meets)."""
    lead = x_shape[:-1]
    x_strides, step = [], x_shape[-1]
    for n in reversed(lead):
        x_strides.append(step)
        step *= n
    x_strides.reverse()
    return len(_merge_dims(lead, x_strides, _broadcast_strides(cache_shape, lead)))


@functools.cache
def _triton_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def rope_kernel(
        X, COS, SIN, OUT, IA, IB,
        R, S1, S2, S3,
        XS0, XS1, XS2, XS3,
        CS0, CS1, CS2, CS3,
        W: tl.constexpr, D: tl.constexpr, MODE: tl.constexpr, NEGATE: tl.constexpr,
        BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
    ):  # fmt: skip
        # One program rotates BLOCK_R rows of D channels; a row's cache row comes from its
        # index over (up to) four leading axes, whose cache strides are 0 where it broadcasts.
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        row_ok = rows < R
        r = rows
        i3 = r % S3
        r = r // S3
        i2 = r % S2
        r = r // S2
        i1 = r % S1
        i0 = r // S1
        x_off = (
            i0.to(tl.int64) * XS0 + i1.to(tl.int64) * XS1
            + i2.to(tl.int64) * XS2 + i3.to(tl.int64) * XS3
        )  # fmt: skip
        c_off = (
            i0.to(tl.int64) * CS0 + i1.to(tl.int64) * CS1
            + i2.to(tl.int64) * CS2 + i3.to(tl.int64) * CS3
        )  # fmt: skip
        o_off = rows.to(tl.int64) * D
        w = tl.arange(0, BLOCK_W)
        w_ok = w < W
        mask = row_ok[:, None] & w_ok[None, :]
        c = tl.load(COS + c_off[:, None] + w[None, :], mask=mask, other=0.0).to(tl.float32)
        s = tl.load(SIN + c_off[:, None] + w[None, :], mask=mask, other=0.0).to(tl.float32)
        if NEGATE:
            s = -s  # the inverse rotation (backward)
        if MODE == 1:
            # Interleaved: load whole rows, then split even/odd channels in registers.
            cols = tl.arange(0, 2 * BLOCK_W)
            cmask = row_ok[:, None] & (cols < D)[None, :]
            xx = tl.load(X + x_off[:, None] + cols[None, :], mask=cmask, other=0.0)
            a, b = tl.split(tl.reshape(xx.to(tl.float32), (BLOCK_R, BLOCK_W, 2)))
            out = tl.reshape(tl.join(a * c - b * s, b * c + a * s), (BLOCK_R, 2 * BLOCK_W))
            tl.store(OUT + o_off[:, None] + cols[None, :], out.to(OUT.dtype.element_ty), mask=cmask)
        else:
            if MODE == 0:
                ia = w
                ib = w + W
            else:
                ia = tl.load(IA + w, mask=w_ok, other=0)
                ib = tl.load(IB + w, mask=w_ok, other=0)
            a = tl.load(X + x_off[:, None] + ia[None, :], mask=mask, other=0.0).to(tl.float32)
            b = tl.load(X + x_off[:, None] + ib[None, :], mask=mask, other=0.0).to(tl.float32)
            ty = OUT.dtype.element_ty
            tl.store(OUT + o_off[:, None] + ia[None, :], (a * c - b * s).to(ty), mask=mask)
            tl.store(OUT + o_off[:, None] + ib[None, :], (b * c + a * s).to(ty), mask=mask)

    # The launch is hidden from tracing by the custom op, so the raw kernel is launched.
    return rope_kernel, triton.next_power_of_2


@functools.lru_cache(maxsize=64)
def _pair_index(sections: tuple[int, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """Channel indices of the two members of each pair, for split-half blocks."""
    first, second, start = [], [], 0
    for d in sections:
        half = d // 2
        first += range(start, start + half)
        second += range(start + half, start + d)
        start += d
    return (
        torch.tensor(first, dtype=torch.int32, device=device),
        torch.tensor(second, dtype=torch.int32, device=device),
    )


def _launch_config(d: int) -> tuple[int, int]:
    """(rows per program, warps): up to 32 rows and 4K channels per program, 4 warps. On the
    H100 at D = 128 (``rope_tune`` benchmark) 8–128 rows were within 1% of each other, 4 rows
    16% slower."""
    rows = max(1, min(32, 4096 // max(d, 1)))
    return rows, 4


def _use_triton(device: torch.device) -> bool:
    # The fused path runs Triton on CUDA; on CPU only under the Triton interpreter (tests).
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET", "") == "1"


@functools.lru_cache(maxsize=512)
def _layout(
    lead: tuple[int, ...], x_strides: tuple[int, ...], cache_shape: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
    """(sizes, x strides, cache strides) of the kernel's four leading axes, or None if the
    axes do not merge into four. Cached: eager calls repeat the same few shapes."""
    c_strides = _broadcast_strides(cache_shape, lead)
    merged = _merge_dims(lead, list(x_strides), c_strides)
    if len(merged) > MAX_LEAD_DIMS:
        return None
    merged = [(1, 0, 0)] * (MAX_LEAD_DIMS - len(merged)) + merged
    return (
        tuple(m[0] for m in merged),
        tuple(m[1] for m in merged),
        tuple(m[2] for m in merged),
    )


def _launch(
    x: Tensor,
    cos: Tensor,
    sin: Tensor,
    sections: tuple[int, ...],
    pairing: str,
    negate: bool = False,
) -> Tensor:
    """Rotate with the fused kernel (by minus the angles if ``negate``).

    On CPU without the Triton interpreter this runs an emulation that uses the kernel's strided
    addressing, so the layout logic is tested without a GPU.
    """
    # The kernel reads float32 cos/sin (the emulation keeps float64 for exact CPU tests).
    wide = cos.dtype == torch.float64 and x.dtype == torch.float64
    cache_dtype = torch.float64 if wide else torch.float32
    cos = cos.to(cache_dtype).contiguous()
    sin = sin.to(cache_dtype).contiguous()
    if x.stride(-1) != 1:
        x = x.contiguous()
    lead = tuple(x.shape[:-1])
    layout = _layout(lead, tuple(x.stride()[:-1]), tuple(cos.shape))
    if layout is None:
        x = x.contiguous()
        layout = _layout(lead, tuple(x.stride()[:-1]), tuple(cos.shape))
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    sizes, x_strides, c_strides = layout
    d, w = x.shape[-1], cos.shape[-1]
    if not _use_triton(x.device):
        xv = x.as_strided((*sizes, d), (*x_strides, 1))  # keeps x's storage offset
        cv = cos.as_strided((*sizes, w), (*c_strides, 1))
        sv = sin.as_strided((*sizes, w), (*c_strides, 1))
        if negate:
            sv = -sv
        return out.copy_(rope_reference(xv, cv, sv, sections, pairing).reshape(x.shape))
    kernel, next_pow2 = _triton_kernel()
    if pairing == "interleaved":
        mode = _MODE_INTERLEAVED
    elif len(sections) == 1:
        mode = _MODE_SPLIT
    else:
        mode = _MODE_GATHER
    ia, ib = _pair_index(tuple(sections), x.device)
    rows = x.numel() // d
    block_r, warps = _launch_config(d)
    grid = (-(-rows // block_r),)
    kernel[grid](
        x, cos, sin, out, ia, ib,
        rows, sizes[1], sizes[2], sizes[3],
        *x_strides, *c_strides,
        W=w, D=d, MODE=mode, NEGATE=negate,
        BLOCK_R=block_r, BLOCK_W=next_pow2(w), num_warps=warps,
    )  # fmt: skip
    return out


def _reduce_to(grad: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Sum a broadcast gradient back to ``shape`` (right-aligned broadcasting)."""
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(dim=tuple(range(extra)))
    keep = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if keep:
        grad = grad.sum(dim=keep, keepdim=True)
    return grad


def _cache_grads(
    x: Tensor, g: Tensor, cache_shape: tuple[int, ...], sections: tuple[int, ...], pairing: str
) -> tuple[Tensor, Tensor]:
    """Gradients of ``⟨g, rope(x, cos, sin)⟩`` with respect to ``cos`` and ``sin``.

    The rotation is linear in (cos, sin): with a pair (a, b), ``y_a = a·c − b·s`` and
    ``y_b = b·c + a·s``, so ``∂/∂c = g_a·a + g_b·b`` and ``∂/∂s = g_b·a − g_a·b``.
    """
    ct = _compute_dtype(torch.promote_types(x.dtype, g.dtype))
    x32, g32 = x.to(ct), g.to(ct)
    if pairing == "interleaved":
        xa, xb = x32[..., 0::2], x32[..., 1::2]
        ga, gb = g32[..., 0::2], g32[..., 1::2]
    else:
        first, second, start = [], [], 0
        for d in sections:
            first.append(slice(start, start + d // 2))
            second.append(slice(start + d // 2, start + d))
            start += d
        xa = torch.cat([x32[..., s] for s in first], dim=-1)
        xb = torch.cat([x32[..., s] for s in second], dim=-1)
        ga = torch.cat([g32[..., s] for s in first], dim=-1)
        gb = torch.cat([g32[..., s] for s in second], dim=-1)
    gc = _reduce_to(ga * xa + gb * xb, cache_shape)
    gs = _reduce_to(gb * xa - ga * xb, cache_shape)
    return gc, gs


def _rope_backward(ctx, grad) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    x, cos, sin = ctx.saved_tensors
    gx = gc = gs = None
    if ctx.needs_input_grad[0]:
        # The inverse rotation. With create_graph (grad mode on here) or under a torch.func
        # transform it must itself be differentiable: rope_fused with the sines negated.
        if torch.is_grad_enabled() or torch._C._are_functorch_transforms_active():
            gx = rope_fused(grad, cos, -sin, ctx.sections, ctx.pairing)
        else:
            gx = _launch(grad, cos, sin, ctx.sections, ctx.pairing, negate=True)
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        gc, gs = _cache_grads(x, grad, ctx.cache_shape, ctx.sections, ctx.pairing)
        gc, gs = gc.to(cos.dtype), gs.to(sin.dtype)
    return gx, gc, gs


class _RopeFunction(torch.autograd.Function):
    """Fused rotary apply under torch.func transforms: differentiable in x and the cache, with a
    vmap rule that folds the vmapped axis into the kernel's leading axes (so vmap keeps the
    fused path). ``setup_context`` + ``backward`` + ``vmap`` is the combination that supports
    ``vmap``, ``grad`` and their compositions."""

    @staticmethod
    def forward(x, cos, sin, sections, pairing):
        return _launch(x, cos, sin, sections, pairing)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, cos, sin, sections, pairing = inputs
        ctx.sections, ctx.pairing = sections, pairing
        ctx.cache_shape = tuple(cos.shape)
        ctx.save_for_backward(x, cos, sin)

    @staticmethod
    def backward(ctx, grad):
        return (*_rope_backward(ctx, grad), None, None)

    @staticmethod
    def vmap(info, in_dims, x, cos, sin, sections, pairing):
        x_dim, cos_dim, sin_dim = in_dims[:3]
        size = info.batch_size
        x = x.movedim(x_dim, 0) if x_dim is not None else x.expand(size, *x.shape)

        def lead(t: Tensor, dim: int | None) -> Tensor:
            if dim is None:
                return t  # broadcasts right-aligned against x's new leading axis
            t = t.movedim(dim, 0)
            return t.reshape(size, *([1] * (x.ndim - t.ndim)), *t.shape[1:])

        cos, sin = lead(cos, cos_dim), lead(sin, sin_dim)
        if cos.shape != sin.shape:
            cos, sin = torch.broadcast_tensors(cos, sin)
        return rope_fused(x, cos, sin, sections, pairing), 0


class _RopeEagerFunction(torch.autograd.Function):
    """The same op for plain eager autograd. ``autograd.Function.apply`` with
    ``setup_context`` binds its arguments with ``inspect`` on every call (about 100 µs); this
    ctx-style twin skips that on the hot path."""

    @staticmethod
    def forward(ctx, x, cos, sin, sections, pairing):
        ctx.sections, ctx.pairing, ctx.cache_shape = sections, pairing, tuple(cos.shape)
        # x is only needed for the cache's gradient; do not keep it alive otherwise.
        keep_x = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        ctx.save_for_backward(x if keep_x else None, cos, sin)
        return _launch(x, cos, sin, sections, pairing)

    @staticmethod
    def backward(ctx, grad):
        return (*_rope_backward(ctx, grad), None, None)


def rope_fused(x: Tensor, cos: Tensor, sin: Tensor, sections: tuple[int, ...], pairing: str):
    """The fused backend (CUDA; on CPU an emulation used to test the plumbing)."""
    sections = tuple(sections)
    if torch.compiler.is_compiling():
        # Inside torch.compile the plain formula is emitted: Inductor fuses it into one kernel
        # (0.89-0.91 of copy bandwidth measured) that can also absorb neighbouring ops, which
        # an opaque kernel would block. Nothing here then needs tracing through Triton.
        return rope_reference(x, cos, sin, sections, pairing)
    if _contiguous_lead_dims(tuple(x.shape), tuple(cos.shape)) > MAX_LEAD_DIMS:
        return rope_reference(x, cos, sin, sections, pairing)
    if torch._C._are_functorch_transforms_active():
        return _RopeFunction.apply(x, cos, sin, sections, pairing)
    if torch.is_grad_enabled() and (x.requires_grad or cos.requires_grad or sin.requires_grad):
        return _RopeEagerFunction.apply(x, cos, sin, sections, pairing)
    return _launch(x, cos, sin, sections, pairing)


def _triton_check(facts: Mapping[str, Any]) -> str | None:
    if torch.compiler.is_compiling():
        # rope_fused emits the plain formula while compiling; do not trace the import probe.
        return None
    reason = module_available("triton")
    if reason is not None:
        return reason
    if facts["dtype"] not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {facts['dtype']} (the kernel takes float16/bfloat16/float32)"
    if facts["pairing"] == "nvsubquadratic":
        return "pairing 'nvsubquadratic' (compatibility numerics) has no fused kernel"
    if facts.get("rot_dim", facts.get("head_dim")) != facts.get("head_dim"):
        return "partial rotary (rot_dim < head_dim)"
    x_shape, cache_shape = facts.get("x_shape"), facts.get("cache_shape")
    if x_shape is not None and cache_shape is not None:
        n = _contiguous_lead_dims(tuple(x_shape), tuple(cache_shape))
        if n > MAX_LEAD_DIMS:
            return f"{n} independent leading axes (the kernel addresses at most {MAX_LEAD_DIMS})"
    return None


rope_op = Op(
    "rope",
    [
        Backend("triton", rope_fused, devices=("cuda",), check=_triton_check, forward_ad=False),
        Backend("reference", rope_reference),
    ],
    example_facts={
        "dtype": torch.bfloat16,
        "pairing": "split_half",
        "head_dim": 128,
        "rot_dim": 128,
        "x_shape": (8, 4096, 32, 128),
        "cache_shape": (4096, 1, 64),
    },
)
