"""The ``rms_norm`` and ``layer_norm`` ops, over the last axis.

``rms_norm``: ``x * rsqrt(mean(x²) + eps) * weight``. ``layer_norm``:
``(x - mean) * rsqrt(var + eps) * weight + bias``. Statistics and the affine step run in float32
(float64 for float64 inputs); the output is rounded once, to ``x.dtype``.

Backends, fastest first:

* ``quack`` (CUDA, compute capability ≥ 9, quack installed; float16/bfloat16/float32; weight of
  one axis). quack's fused forward and backward kernels, wrapped as the custom ops
  ``subq::rms_norm_fused`` / ``subq::layer_norm_fused`` with fake-tensor, autograd and vmap rules,
  so they stay whole inside ``torch.compile`` graphs and work under ``torch.func.vmap``. quack
  multiplies by the weight in float32 before the final cast, like the reference. For LayerNorm
  quack ships kernels but no autograd wrapper; the one here saves ``x``, the row means and the
  reciprocal standard deviations, and calls quack's backward kernel. It needs a weight
  (quack's LayerNorm entry point requires one).
* ``torch`` (CUDA): ``F.rms_norm`` / ``F.layer_norm``, PyTorch's fused kernels with float32
  statistics. The weight is cast to ``x.dtype`` first (so the fused kernel runs), which rounds it
  once: up to an ulp of difference from the reference when weights are float32 and ``x`` is not.
* ``reference`` (any device): the formula in float32; the oracle for tests.

A per-head weight (``[heads, head_dim]``) normalises over the last axis and scales per head; only
the reference handles it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from subq.ops.capabilities import quack_unavailable_reason
from subq.ops.dispatch import Backend, Op

__all__ = [
    "layer_norm_op",
    "layer_norm_reference",
    "rms_norm_op",
    "rms_norm_reference",
]

_QUACK_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# quack's backward kernel refuses rows longer than 128 Ki elements of 32-bit data.
_QUACK_MAX_N_FP32 = 128 * 1024


# --------------------------------------------------------------------------------------------
# References (the oracles)


def _acc(x: Tensor) -> torch.dtype:
    # Statistics in float32, or float64 for float64 inputs (so the oracle stays exact there).
    return torch.promote_types(x.dtype, torch.float32)


def rms_norm_reference(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """The formula in float32 (float64 for float64 inputs); ``weight`` broadcasts over ``x``'s
    trailing axes."""
    acc = _acc(x)
    x32 = x.to(acc)
    y = x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(acc)
    return y.to(x.dtype)


def layer_norm_reference(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """The formula in float32 (float64 for float64 inputs) over the last axis; ``weight`` and
    ``bias`` broadcast over ``x``'s trailing axes."""
    acc = _acc(x)
    x32 = x.to(acc)
    centred = x32 - x32.mean(-1, keepdim=True)
    y = centred * torch.rsqrt(centred.square().mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(acc)
    if bias is not None:
        y = y + bias.to(acc)
    return y.to(x.dtype)


# --------------------------------------------------------------------------------------------
# PyTorch fused kernels


def _rms_norm_torch(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    if weight is not None and weight.ndim > 1:
        return rms_norm_reference(x, weight, eps)
    w = weight.to(x.dtype) if weight is not None else None
    return F.rms_norm(x, (x.shape[-1],), w, eps)


def _layer_norm_torch(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    if any(p is not None and p.ndim > 1 for p in (weight, bias)):
        return layer_norm_reference(x, weight, bias, eps)
    w = weight.to(x.dtype) if weight is not None else None
    b = bias.to(x.dtype) if bias is not None else None
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


def _torch_check(facts: Mapping[str, Any]) -> str | None:
    if facts["dtype"] not in _QUACK_DTYPES:
        return f"dtype {facts['dtype']} (the fused kernels are for float16/bfloat16/float32)"
    if facts.get("weight_ndim", 1) > 1:
        return "per-head weight (the fused kernels take one weight per channel)"
    return None


# --------------------------------------------------------------------------------------------
# quack kernels as custom ops. Inputs are 2-D and contiguous ([rows, n]); the CPU kernels compute
# the same outputs in plain PyTorch so the autograd, vmap and fake rules are testable without a GPU.


def _empty_grad(x: Tensor) -> Tensor:
    # Custom ops cannot return None: an absent weight/bias gradient is an empty tensor.
    return x.new_empty(0)


@torch.library.custom_op("subq::rms_norm_fused", mutates_args=(), device_types="cuda")
def _rms_norm_fused(x: Tensor, weight: Tensor | None, eps: float) -> tuple[Tensor, Tensor]:
    from quack.rmsnorm import rmsnorm_fwd

    y, _, rstd = rmsnorm_fwd(x, weight, eps=eps, store_rstd=True)
    return y, rstd


@_rms_norm_fused.register_kernel("cpu")
def _(x: Tensor, weight: Tensor | None, eps: float) -> tuple[Tensor, Tensor]:
    x32 = x.to(_acc(x))
    rstd = torch.rsqrt(x32.square().mean(-1) + eps)
    y = x32 * rstd[:, None]
    if weight is not None:
        y = y * weight.to(x32.dtype)
    return y.to(x.dtype), rstd


@_rms_norm_fused.register_fake
def _(x: Tensor, weight: Tensor | None, eps: float) -> tuple[Tensor, Tensor]:
    return torch.empty_like(x), x.new_empty(x.shape[0], dtype=_acc(x))


@torch.library.custom_op("subq::rms_norm_fused_bwd", mutates_args=(), device_types="cuda")
def _rms_norm_fused_bwd(
    x: Tensor, weight: Tensor | None, dy: Tensor, rstd: Tensor
) -> tuple[Tensor, Tensor]:
    from quack.rmsnorm import rmsnorm_bwd

    dx, dw, _, _ = rmsnorm_bwd(x, weight, dy, rstd)
    return dx, dw if dw is not None else _empty_grad(x)


@_rms_norm_fused_bwd.register_kernel("cpu")
def _(x: Tensor, weight: Tensor | None, dy: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor]:
    # y = x̂·w with x̂ = x·rstd: dx = rstd·(g − x̂·mean(g·x̂)), g = dy·w; dw = Σ_rows dy·x̂.
    xhat = x.to(rstd.dtype) * rstd[:, None]
    dy32 = dy.to(rstd.dtype)
    g = dy32 * weight.to(rstd.dtype) if weight is not None else dy32
    dx = rstd[:, None] * (g - xhat * (g * xhat).mean(-1, keepdim=True))
    dw = (dy32 * xhat).sum(0).to(weight.dtype) if weight is not None else _empty_grad(x)
    return dx.to(x.dtype), dw


@_rms_norm_fused_bwd.register_fake
def _(x: Tensor, weight: Tensor | None, dy: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(x), torch.empty_like(weight) if weight is not None else _empty_grad(x)


@torch.library.custom_op("subq::layer_norm_fused", mutates_args=(), device_types="cuda")
def _layer_norm_fused(
    x: Tensor, weight: Tensor, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    from quack.rmsnorm import layernorm_fwd

    # quack's LayerNorm takes float32 weight and bias (it computes the affine step in float32).
    b = bias.float() if bias is not None else None
    y, rstd, mean = layernorm_fwd(x, weight.float(), b, eps, return_rstd=True, return_mean=True)
    return y, mean, rstd


@_layer_norm_fused.register_kernel("cpu")
def _(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    x32 = x.to(_acc(x))
    mean = x32.mean(-1)
    centred = x32 - mean[:, None]
    rstd = torch.rsqrt(centred.square().mean(-1) + eps)
    y = centred * rstd[:, None] * weight.to(x32.dtype)
    if bias is not None:
        y = y + bias.to(x32.dtype)
    return y.to(x.dtype), mean, rstd


@_layer_norm_fused.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    stat = x.new_empty(x.shape[0], dtype=_acc(x))
    return torch.empty_like(x), stat, torch.empty_like(stat)


@torch.library.custom_op("subq::layer_norm_fused_bwd", mutates_args=(), device_types="cuda")
def _layer_norm_fused_bwd(
    x: Tensor, weight: Tensor, dy: Tensor, mean: Tensor, rstd: Tensor, has_bias: bool
) -> tuple[Tensor, Tensor, Tensor]:
    from quack.rmsnorm import layernorm_bwd

    dx, dw, db = layernorm_bwd(x, weight.float(), dy, rstd, mean, has_bias=has_bias)
    db = db.to(weight.dtype) if db is not None else _empty_grad(x)
    return dx, dw.to(weight.dtype), db


@_layer_norm_fused_bwd.register_kernel("cpu")
def _(
    x: Tensor, weight: Tensor, dy: Tensor, mean: Tensor, rstd: Tensor, has_bias: bool
) -> tuple[Tensor, Tensor, Tensor]:
    # With x̂ = (x − mean)·rstd, y = x̂·w + b: dx = rstd·(g − mean(g) − x̂·mean(g·x̂)), g = dy·w.
    xhat = (x.to(rstd.dtype) - mean[:, None]) * rstd[:, None]
    dy32 = dy.to(rstd.dtype)
    g = dy32 * weight.to(rstd.dtype)
    dx = rstd[:, None] * (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True))
    dw = (dy32 * xhat).sum(0).to(weight.dtype)
    db = dy32.sum(0).to(weight.dtype) if has_bias else _empty_grad(x)
    return dx.to(x.dtype), dw, db


@_layer_norm_fused_bwd.register_fake
def _(
    x: Tensor, weight: Tensor, dy: Tensor, mean: Tensor, rstd: Tensor, has_bias: bool
) -> tuple[Tensor, Tensor, Tensor]:
    db = torch.empty_like(weight) if has_bias else _empty_grad(x)
    return torch.empty_like(x), torch.empty_like(weight), db


# vmap rules. The norms are row-wise, so with shared parameters a vmapped call is one call over
# more rows; with batched parameters (or any backward, whose parameter gradients sum over rows
# per example) it loops over the vmapped axis.


def _loop_rule(op: Callable[..., Any]) -> Callable[..., Any]:
    def rule(info: Any, in_dims: Sequence[int | None], *args: Any) -> tuple[Any, Any]:
        outs = []
        for i in range(info.batch_size):
            sliced = [
                a.select(d, i) if isinstance(a, Tensor) and d is not None else a
                for a, d in zip(args, in_dims, strict=True)
            ]
            outs.append(op(*sliced))
        stacked = tuple(torch.stack(parts) for parts in zip(*outs, strict=True))
        return stacked, (0,) * len(stacked)

    return rule


def _rows_rule(op: Callable[..., Any]) -> Callable[..., Any]:
    loop = _loop_rule(op)

    def rule(info: Any, in_dims: Sequence[int | None], x: Tensor, *rest: Any) -> tuple[Any, Any]:
        if in_dims[0] is None or any(d is not None for d in in_dims[1:]):
            return loop(info, in_dims, x, *rest)
        xb = x.movedim(in_dims[0], 0)
        batch, rows, n = xb.shape
        outs = op(xb.reshape(batch * rows, n).contiguous(), *rest)
        return tuple(o.reshape(batch, rows, *o.shape[1:]) for o in outs), (0,) * len(outs)

    return rule


_rms_norm_fused.register_vmap(_rows_rule(_rms_norm_fused))
_layer_norm_fused.register_vmap(_rows_rule(_layer_norm_fused))
_rms_norm_fused_bwd.register_vmap(_loop_rule(_rms_norm_fused_bwd))
_layer_norm_fused_bwd.register_vmap(_loop_rule(_layer_norm_fused_bwd))


def _rows(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-1]).contiguous()


# Autograd over the custom ops. An autograd.Function with setup_context (rather than the custom
# op's register_autograd) also works under torch.func transforms (grad, vjp); its vmap rule is
# generated from the custom ops' vmap rules. The statistics are returned as non-differentiable
# outputs so that backward can use them; the wrappers below discard them.


class _RMSNormFusedBwd(torch.autograd.Function):
    """The backward custom op behind an autograd.Function; double backward raises.

    Under ``torch.func.grad`` a backward runs at a transform level where a bare custom op
    without an autograd formula cannot run, so it too goes through an autograd.Function.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor | None, dy: Tensor, rstd: Tensor) -> tuple:
        return _rms_norm_fused_bwd(x, weight, dy, rstd)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple:
        raise RuntimeError("rms_norm (quack backend): double backward is not supported")


class _LayerNormFusedBwd(torch.autograd.Function):
    """As :class:`_RMSNormFusedBwd`, for LayerNorm."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        x: Tensor, weight: Tensor, dy: Tensor, mean: Tensor, rstd: Tensor, has_bias: bool
    ) -> tuple:
        return _layer_norm_fused_bwd(x, weight, dy, mean, rstd, has_bias)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple:
        raise RuntimeError("layer_norm (quack backend): double backward is not supported")


class _RMSNormFused(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor | None, eps: float) -> tuple[Tensor, Tensor]:
        return _rms_norm_fused(x, weight, eps)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        x, weight, _ = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(x, weight, output[1])

    @staticmethod
    def backward(ctx: Any, dy: Tensor, _drstd: Tensor) -> tuple:
        x, weight, rstd = ctx.saved_tensors
        dx, dw = _RMSNormFusedBwd.apply(x, weight, dy.contiguous(), rstd)
        return dx, (dw if weight is not None else None), None


class _LayerNormFused(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(
        x: Tensor, weight: Tensor, bias: Tensor | None, eps: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        return _layer_norm_fused(x, weight, bias, eps)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        x, weight, bias, _ = inputs
        _, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx: Any, dy: Tensor, _dmean: Tensor, _drstd: Tensor) -> tuple:
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = _LayerNormFusedBwd.apply(x, weight, dy.contiguous(), mean, rstd, ctx.has_bias)
        return dx, dw, (db if ctx.has_bias else None), None


def _quack_weight(x: Tensor, weight: Tensor | None) -> Tensor | None:
    # quack's kernels read float16/bfloat16/float32 weights; other dtypes go through float32
    # (float64 ones stay float64 next to float64 inputs, which only the CPU kernels take).
    if weight is None or weight.dtype in _QUACK_DTYPES or weight.dtype == x.dtype:
        return weight
    return weight.float()


def _rms_norm_quack(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    if weight is not None and weight.ndim > 1:
        return _rms_norm_torch(x, weight, eps)
    w = _quack_weight(x, weight)
    y, _ = _RMSNormFused.apply(_rows(x), w, eps)
    y = y.reshape(x.shape)
    return y


def _layer_norm_quack(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    if weight is None or any(p is not None and p.ndim > 1 for p in (weight, bias)):
        return _layer_norm_torch(x, weight, bias, eps)
    y, _, _ = _LayerNormFused.apply(_rows(x), _quack_weight(x, weight), bias, eps)
    return y.reshape(x.shape)


def _quack_check(facts: Mapping[str, Any]) -> str | None:
    reason = quack_unavailable_reason(facts["device"])
    if reason is not None:
        return reason
    if facts["dtype"] not in _QUACK_DTYPES:
        return f"dtype {facts['dtype']} (quack takes float16/bfloat16/float32)"
    if facts.get("weight_ndim", 1) > 1:
        return "per-head weight (quack's per-head layout is not wired here)"
    if facts["dtype"] == torch.float32 and facts.get("n", 0) > _QUACK_MAX_N_FP32:
        return f"n = {facts['n']} > {_QUACK_MAX_N_FP32} with float32 (quack's backward limit)"
    return None


def _quack_layer_norm_check(facts: Mapping[str, Any]) -> str | None:
    if facts.get("weight_ndim", 1) == 0:
        return "no weight (quack's LayerNorm needs one)"
    return _quack_check(facts)


rms_norm_op = Op(
    "rms_norm",
    [
        Backend("quack", _rms_norm_quack, devices=("cuda",), check=_quack_check),
        Backend("torch", _rms_norm_torch, devices=("cuda",), check=_torch_check),
        Backend("reference", rms_norm_reference),
    ],
    example_facts={"n": 4096, "weight_ndim": 1},
)

layer_norm_op = Op(
    "layer_norm",
    [
        Backend("quack", _layer_norm_quack, devices=("cuda",), check=_quack_layer_norm_check),
        Backend("torch", _layer_norm_torch, devices=("cuda",), check=_torch_check),
        Backend("reference", layer_norm_reference),
    ],
    example_facts={"n": 4096, "weight_ndim": 1},
)
