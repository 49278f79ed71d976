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
  statistics, when the weight and bias have ``x``'s dtype; otherwise (a float32 weight with
  bfloat16 ``x``) the reference, since rounding the weight would ruin its gradient.
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
from subq.ops.dispatch import Backend, Decision, Op

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


def _fits_torch_kernel(x: Tensor, *params: Tensor | None) -> bool:
    # PyTorch's fused kernels take parameters of one axis in x's dtype. Rounding a float32 weight
    # to bfloat16 would cost its gradient all but 8 bits, so other dtypes take the reference.
    return all(p is None or (p.ndim == 1 and p.dtype == x.dtype) for p in params)


def _rms_norm_torch(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    if not _fits_torch_kernel(x, weight):
        return rms_norm_reference(x, weight, eps)
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def _layer_norm_torch(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    if not _fits_torch_kernel(x, weight, bias):
        return layer_norm_reference(x, weight, bias, eps)
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def _torch_check(facts: Mapping[str, Any]) -> str | None:
    if facts["dtype"] not in _QUACK_DTYPES:
        return f"dtype {facts['dtype']} (the fused kernels are for float16/bfloat16/float32)"
    if facts.get("weight_ndim", 1) > 1:
        return "per-head weight (the fused kernels take one weight per channel)"
    return None


# --------------------------------------------------------------------------------------------
# Fused kernels. Each is a plain function on 2-D contiguous inputs ([rows, n]) with two
# implementations: quack's kernels on CUDA, and the same outputs computed in plain PyTorch on CPU,
# so that every wrapper below (autograd, vmap, fake tensors, compile) is testable without a GPU.


def _empty_grad(x: Tensor) -> Tensor:
    # Custom ops cannot return None: an absent weight/bias gradient is an empty tensor.
    return x.new_empty(0)


def _rms_fwd_cuda(x: Tensor, weight: Tensor | None, eps: float) -> tuple[Tensor, Tensor]:
    from quack.rmsnorm import rmsnorm_fwd

    y, _, rstd = rmsnorm_fwd(x, weight, eps=eps, store_rstd=True)
    return y, rstd


def _rms_fwd_cpu(x: Tensor, weight: Tensor | None, eps: float) -> tuple[Tensor, Tensor]:
    x32 = x.to(_acc(x))
    rstd = torch.rsqrt(x32.square().mean(-1) + eps)
    y = x32 * rstd[:, None]
    if weight is not None:
        y = y * weight.to(x32.dtype)
    return y.to(x.dtype), rstd


def _rms_bwd_cuda(
    x: Tensor, weight: Tensor | None, dy: Tensor, rstd: Tensor
) -> tuple[Tensor, Tensor]:
    from quack.rmsnorm import rmsnorm_bwd

    dx, dw, _, _ = rmsnorm_bwd(x, weight, dy, rstd)
    return dx, dw if dw is not None else _empty_grad(x)


def _rms_bwd_cpu(
    x: Tensor, weight: Tensor | None, dy: Tensor, rstd: Tensor
) -> tuple[Tensor, Tensor]:
    # y = x̂·w with x̂ = x·rstd: dx = rstd·(g − x̂·mean(g·x̂)), g = dy·w; dw = Σ_rows dy·x̂.
    xhat = x.to(rstd.dtype) * rstd[:, None]
    dy32 = dy.to(rstd.dtype)
    g = dy32 * weight.to(rstd.dtype) if weight is not None else dy32
    dx = rstd[:, None] * (g - xhat * (g * xhat).mean(-1, keepdim=True))
    dw = (dy32 * xhat).sum(0).to(weight.dtype) if weight is not None else _empty_grad(x)
    return dx.to(x.dtype), dw


def _ln_fwd_cuda(
    x: Tensor, weight: Tensor, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    from quack.rmsnorm import layernorm_fwd

    # quack's LayerNorm takes float32 weight and bias (it computes the affine step in float32).
    b = bias.float() if bias is not None else None
    y, rstd, mean = layernorm_fwd(x, weight.float(), b, eps, return_rstd=True, return_mean=True)
    return y, mean, rstd


def _ln_fwd_cpu(
    x: Tensor, weight: Tensor, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    x32 = x.to(_acc(x))
    mean = x32.mean(-1)
    centred = x32 - mean[:, None]
    rstd = torch.rsqrt(centred.square().mean(-1) + eps)
    y = centred * rstd[:, None] * weight.to(x32.dtype)
    if bias is not None:
        y = y + bias.to(x32.dtype)
    return y.to(x.dtype), mean, rstd


def _ln_bwd_cuda(
    x: Tensor, weight: Tensor, dy: Tensor, mean: Tensor, rstd: Tensor, has_bias: bool
) -> tuple[Tensor, Tensor, Tensor]:
    from quack.rmsnorm import layernorm_bwd

    dx, dw, db = layernorm_bwd(x, weight.float(), dy, rstd, mean, has_bias=has_bias)
    db = db.to(weight.dtype) if db is not None else _empty_grad(x)
    return dx, dw.to(weight.dtype), db


def _ln_bwd_cpu(
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


_KERNELS: dict[str, dict[str, Callable[..., Any]]] = {
    "cuda": {"rms_fwd": _rms_fwd_cuda, "rms_bwd": _rms_bwd_cuda},
    "cpu": {"rms_fwd": _rms_fwd_cpu, "rms_bwd": _rms_bwd_cpu},
}
_KERNELS["cuda"] |= {"ln_fwd": _ln_fwd_cuda, "ln_bwd": _ln_bwd_cuda}
_KERNELS["cpu"] |= {"ln_fwd": _ln_fwd_cpu, "ln_bwd": _ln_bwd_cpu}


# --------------------------------------------------------------------------------------------
# Eager path: a classic autograd.Function straight onto the kernels. Its per-call Python cost is
# a fraction of the transform-safe path below (which adds a setup_context Function, whose apply
# binds arguments through inspect.signature, and a custom-op dispatch per kernel); at 32768 × 1024
# that cost, not the GPU, bounded the step time on the lent H100.


class _RMSNormEager(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
        y, rstd = _KERNELS[x.device.type]["rms_fwd"](x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, dy: Tensor) -> tuple:
        x, weight, rstd = ctx.saved_tensors
        dx, dw = _KERNELS[x.device.type]["rms_bwd"](x, weight, dy.contiguous(), rstd)
        return dx, (dw if weight is not None else None), None


class _LayerNormEager(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, eps: float) -> Tensor:
        y, mean, rstd = _KERNELS[x.device.type]["ln_fwd"](x, weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, dy: Tensor) -> tuple:
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = _KERNELS[x.device.type]["ln_bwd"](
            x, weight, dy.contiguous(), mean, rstd, ctx.has_bias
        )
        return dx, dw, (db if ctx.has_bias else None), None


# --------------------------------------------------------------------------------------------
# Transform-safe path, used under torch.compile and torch.func transforms: the kernels as custom
# ops (opaque to the compiler, with fake-tensor and vmap rules) inside setup_context-style
# autograd.Functions (which torch.func.grad requires; a custom op's own register_autograd is not
# supported under torch.func transforms in torch 2.11–2.13).

_rms_norm_fused = torch.library.custom_op(
    "subq::rms_norm_fused", _rms_fwd_cuda, mutates_args=(), device_types="cuda"
)
_rms_norm_fused.register_kernel("cpu")(_rms_fwd_cpu)
_rms_norm_fused_bwd = torch.library.custom_op(
    "subq::rms_norm_fused_bwd", _rms_bwd_cuda, mutates_args=(), device_types="cuda"
)
_rms_norm_fused_bwd.register_kernel("cpu")(_rms_bwd_cpu)
_layer_norm_fused = torch.library.custom_op(
    "subq::layer_norm_fused", _ln_fwd_cuda, mutates_args=(), device_types="cuda"
)
_layer_norm_fused.register_kernel("cpu")(_ln_fwd_cpu)
_layer_norm_fused_bwd = torch.library.custom_op(
    "subq::layer_norm_fused_bwd", _ln_bwd_cuda, mutates_args=(), device_types="cuda"
)
_layer_norm_fused_bwd.register_kernel("cpu")(_ln_bwd_cpu)


@_rms_norm_fused.register_fake
def _(x: Tensor, weight: Tensor | None, eps: float) -> tuple[Tensor, Tensor]:
    return torch.empty_like(x), x.new_empty(x.shape[0], dtype=_acc(x))


@_rms_norm_fused_bwd.register_fake
def _(x: Tensor, weight: Tensor | None, dy: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(x), torch.empty_like(weight) if weight is not None else _empty_grad(x)


@_layer_norm_fused.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    stat = x.new_empty(x.shape[0], dtype=_acc(x))
    return torch.empty_like(x), stat, torch.empty_like(stat)


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
    # The statistics are returned as a non-differentiable output so that backward can use them;
    # the caller discards them.
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


# --------------------------------------------------------------------------------------------
# The quack backends


def _transforms_active() -> bool:
    # torch.compile traces the custom ops (opaque, with fake rules); torch.func transforms need the
    # setup_context Functions. Both are modes of the call, not values of the data.
    if torch.compiler.is_compiling():
        return True
    probe = getattr(torch._C, "_are_functorch_transforms_active", None)
    return True if probe is None else bool(probe())


def _rows(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-1]).contiguous()


def _quack_weight(x: Tensor, weight: Tensor | None) -> Tensor | None:
    # quack's kernels read float16/bfloat16/float32 weights; other dtypes go through float32
    # (float64 ones stay float64 next to float64 inputs, which only the CPU kernels take).
    if weight is None or weight.dtype in _QUACK_DTYPES or weight.dtype == x.dtype:
        return weight
    return weight.float()


def _rms_norm_quack(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    if weight is not None and weight.ndim > 1:
        return rms_norm_reference(x, weight, eps)
    rows, w = _rows(x), _quack_weight(x, weight)
    if _transforms_active():
        y, _ = _RMSNormFused.apply(rows, w, eps)
    else:
        y = _RMSNormEager.apply(rows, w, eps)
    return y.reshape(x.shape)


def _layer_norm_quack(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    if weight is None or any(p is not None and p.ndim > 1 for p in (weight, bias)):
        return _layer_norm_torch(x, weight, bias, eps)
    rows, w = _rows(x), _quack_weight(x, weight)
    if _transforms_active():
        y, _, _ = _LayerNormFused.apply(rows, w, bias, eps)
    else:
        y = _LayerNormEager.apply(rows, w, bias, eps)
    return y.reshape(x.shape)


# Below these row lengths PyTorch's kernels were faster on the lent H100 (bf16, 32768 rows:
# RMSNorm at 1024 vs 4096; LayerNorm forward+backward at 4096 vs 8192): quack's per-call Python
# work is then not hidden behind the GPU time. See docs/benchmarks.md.
_QUACK_MIN_N = {"rms_norm": 4096, "layer_norm": 8192}


def _quack_check_for(op: str) -> Callable[[Mapping[str, Any]], str | None]:
    def check(facts: Mapping[str, Any]) -> str | None:
        reason = quack_unavailable_reason(str(torch.device(facts["device"])))
        if reason is not None:
            return reason
        dtype, n = facts["dtype"], facts.get("n", 0)
        if dtype not in _QUACK_DTYPES:
            return f"dtype {dtype} (quack takes float16/bfloat16/float32)"
        weight_ndim = facts.get("weight_ndim", 1)
        if weight_ndim > 1:
            return "per-head weight (quack's per-head layout is not wired here)"
        if op == "layer_norm" and weight_ndim == 0:
            return "no weight (quack's LayerNorm needs one)"
        if dtype == torch.float32 and n > _QUACK_MAX_N_FP32:
            return f"n = {n} > {_QUACK_MAX_N_FP32} with float32 (quack's backward limit)"
        return None

    return check


class _NormOp(Op):
    """An op whose quack backend is passed over below a row length by preference.

    Short rows go to the ``torch`` backend when quack could run but PyTorch's kernel was measured
    faster. That is a choice, not a missing capability, so strict mode does not treat it as a
    fallback (it still raises if ``torch`` itself cannot run).
    """

    def decide(self, facts: Mapping[str, Any], backend: str | None = None) -> Decision:
        min_n = _QUACK_MIN_N[self.name]
        if (
            backend is None
            and torch.device(facts["device"]).type == "cuda"
            and facts.get("n", 0) < min_n
            and self.backends[0].check(facts) is None
            and self.backends[1].check(facts) is None
        ):
            why = f"n = {facts.get('n', 0)} < {min_n}: PyTorch's kernel was measured faster"
            return Decision(self.name, "torch", (("quack", why),))
        return super().decide(facts, backend)


rms_norm_op = _NormOp(
    "rms_norm",
    [
        Backend(
            "quack",
            _rms_norm_quack,
            devices=("cuda",),
            check=_quack_check_for("rms_norm"),
            forward_ad=False,
        ),
        Backend("torch", _rms_norm_torch, devices=("cuda",), check=_torch_check),
        Backend("reference", rms_norm_reference),
    ],
    example_facts={"n": 4096, "weight_ndim": 1},
)

layer_norm_op = _NormOp(
    "layer_norm",
    [
        Backend(
            "quack",
            _layer_norm_quack,
            devices=("cuda",),
            check=_quack_check_for("layer_norm"),
            forward_ad=False,
        ),
        Backend("torch", _layer_norm_torch, devices=("cuda",), check=_torch_check),
        Backend("reference", layer_norm_reference),
    ],
    example_facts={"n": 8192, "weight_ndim": 1},
)
