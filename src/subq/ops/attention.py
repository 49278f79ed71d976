"""The ``sdpa`` op: PyTorch's fused scaled-dot-product-attention kernels behind the dispatcher.

Backends, fastest first on Hopper: ``cudnn``, ``flash``, ``efficient`` (CUDA, chosen from dtype,
head_dim and whether a mask is present) and ``math`` (any device: PyTorch's reference kernel).
``subq.ops.explain("sdpa", device="cuda", dtype=torch.bfloat16, head_dim=128, has_mask=False)``
says which one a call would use.

:func:`sdpa_attention` is the ``flash``/``pallas_flash`` backend of
:func:`subq.functional.attention.attention`. It maps the shared options onto SDPA: plain causal
attention with aligned positions becomes ``is_causal``; every other mask and bias is materialised
as one ``attn_mask`` (an O(T·S) tensor, which moves SDPA from the flash to the efficient/cuDNN
kernels). Options SDPA cannot express (soft-capping, subq's reproducible dropout) raise instead
of falling back.

Under ``torch.func.vmap`` SDPA drops to its slow math path; :class:`_FoldedSDPA` is an
``autograd.Function`` whose ``vmap`` rule folds the vmapped axis into the batch, so an ensemble or
per-example gradient keeps the fused kernel.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from subq.ops.dispatch import Backend, Op

__all__ = ["attention_op", "sdpa_attention", "sdpa_op", "sdpa_unsupported_reason"]

_HALF = (torch.float16, torch.bfloat16)


def _cudnn_check(facts: Mapping[str, Any]) -> str | None:
    if facts["dtype"] not in _HALF:
        return f"dtype {facts['dtype']} (cuDNN attention needs float16/bfloat16)"
    if facts.get("head_dim", 64) % 8 or facts.get("head_dim", 64) > 128:
        return f"head_dim {facts.get('head_dim')} (cuDNN path here: multiple of 8, ≤ 128)"
    if facts.get("has_mask", False):
        return "an explicit attn_mask (the cuDNN path is used for unmasked/causal calls only)"
    if not _cuda_capability_at_least(facts, 9):
        return "compute capability < 9.0"
    return None


def _flash_check(facts: Mapping[str, Any]) -> str | None:
    if facts["dtype"] not in _HALF:
        return f"dtype {facts['dtype']} (flash needs float16/bfloat16)"
    if facts.get("head_dim", 64) % 8 or facts.get("head_dim", 64) > 256:
        return f"head_dim {facts.get('head_dim')} (flash: multiple of 8, ≤ 256)"
    if facts.get("has_mask", False):
        return "an explicit attn_mask (flash supports is_causal only)"
    return None


def _efficient_check(facts: Mapping[str, Any]) -> str | None:
    if facts["dtype"] not in (*_HALF, torch.float32):
        return f"dtype {facts['dtype']} (efficient: float16/bfloat16/float32)"
    if facts.get("head_dim", 64) % 8:
        return f"head_dim {facts.get('head_dim')} (efficient: multiple of 8)"
    return None


def _cuda_capability_at_least(facts: Mapping[str, Any], major: int) -> bool:
    device = torch.device(facts["device"])
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device)[0] >= major


def _kernel(name: str):
    from torch.nn.attention import SDPBackend

    return {
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }[name]


def _run_sdpa(name: str):
    def run(q, k, v, attn_mask, is_causal, scale, enable_gqa):
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel([_kernel(name)]):
            return F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=attn_mask,
                is_causal=is_causal,
                scale=scale,
                enable_gqa=enable_gqa,
            )

    run.__name__ = f"sdpa_{name}"
    return run


sdpa_op = Op(
    "sdpa",
    [
        Backend("cudnn", _run_sdpa("cudnn"), devices=("cuda",), check=_cudnn_check),
        Backend("flash", _run_sdpa("flash"), devices=("cuda",), check=_flash_check),
        Backend("efficient", _run_sdpa("efficient"), devices=("cuda",), check=_efficient_check),
        Backend("math", _run_sdpa("math")),
    ],
    example_facts={"dtype": torch.bfloat16, "head_dim": 128, "has_mask": False},
)


def sdpa_unsupported_reason(mods: Any, query: Tensor, key: Tensor, dropout_p: float) -> str | None:
    """None if the SDPA backends can express these options, else which option they cannot."""
    del query, key
    if mods.softcap is not None:
        return "softcap (SDPA has no logit soft-capping)"
    if dropout_p > 0.0:
        return "dropout_p > 0 (SDPA's dropout does not use subq's reproducible dropout_seed)"
    return None


def _attention_flash_check(facts: Mapping[str, Any]) -> str | None:
    if facts.get("softcap", False):
        return "softcap (SDPA has no logit soft-capping)"
    if facts.get("dropout", False):
        return "dropout (SDPA's dropout does not use subq's reproducible dropout_seed)"
    return None


def _run_attention_backend(name: str):
    def run(query, key, value, **options):
        from subq.functional.attention import attention

        return attention(query, key, value, backend=name, **options)

    run.__name__ = f"attention_{name}"
    return run


#: Which :class:`~subq.functional.attention.AttentionType` ``attention(..., backend=None)`` uses:
#: ``flash`` (SDPA, then the ``sdpa`` op picks the kernel) on CUDA when the options allow it,
#: else ``standard``. Facts: ``device``, ``dtype``, ``softcap`` and ``dropout`` (bools).
attention_op = Op(
    "attention",
    [
        Backend(
            "flash",
            _run_attention_backend("flash"),
            devices=("cuda",),
            check=_attention_flash_check,
        ),
        Backend("standard", _run_attention_backend("standard")),
    ],
    example_facts={"dtype": torch.bfloat16, "softcap": False, "dropout": False},
)


def _plain_causal(mods: Any) -> bool:
    """Whether the options are exactly SDPA's ``is_causal`` (top-left aligned) or no mask.

    Alignment only matters with ``causal``: unmasked cross-attention with ``T != S`` needs no
    ``attn_mask`` either (which keeps it on the flash/cuDNN kernels).
    """
    return (
        mods.q_pos is None
        and (mods.q_offset == 0 or not mods.causal)
        and mods.window is None
        and mods.prefix is None
        and mods.alibi is None
        and mods.key_valid is None
        and mods.mask is None
        and mods.q_seg is None
        and mods.bias is None
    )


def _to_4d(t: Tensor, heads: int) -> Tensor:
    """``[B|1, KVH|1, G|1, T, S]`` -> ``[B|1, heads|1, T, S]``."""
    b, kvh, g, tq, s = t.shape
    if kvh == 1 and g == 1:
        return t.reshape(b, 1, tq, s)
    return t.expand(b, heads // g if kvh == 1 else kvh, g, tq, s).reshape(b, heads, tq, s)


def sdpa_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mods: Any,
    scale: float,
    dropout_p: float,
    *,
    fastest: bool = False,
    backend: str | None = None,
) -> Tensor:
    """Attention through SDPA with the options of ``mods`` (see the module docstring)."""
    from subq.functional.attention import _block_mask_and_bias

    reason = sdpa_unsupported_reason(mods, query, key, dropout_p)
    if reason is not None:
        raise ValueError(f"attention: the flash/pallas_flash backends do not support {reason}")
    del fastest  # both names use the dispatcher's order, which puts the fastest kernel first
    _, heads, t, d = query.shape
    s = key.shape[2]
    gqa = key.shape[1] != heads
    if _plain_causal(mods):
        facts = {"device": query.device, "dtype": query.dtype, "head_dim": d, "has_mask": False}
        fn, key, value, gqa = _select_kernel(facts, backend, key, value, heads)
        return _fused(fn, query, key, value, None, mods.causal and t > 0, scale, gqa)
    allowed, additive = _block_mask_and_bias(mods, slice(0, t), slice(0, s), query.device)
    row_ok = None
    if allowed is not None:
        allowed = _to_4d(allowed.expand(*allowed.shape[:3], t, s), heads)
        row_ok = allowed.any(-1, keepdim=True)
        # A row with no visible key would make the kernel return NaN (or its mean of V); open the
        # row for the kernel and zero its output below, which also zeroes its gradients.
        allowed = allowed | ~row_ok
    if additive is not None:
        additive = _to_4d(additive.expand(*additive.shape[:3], t, s), heads).to(query.dtype)
        attn_mask = additive if allowed is None else additive.masked_fill(~allowed, float("-inf"))
    else:
        attn_mask = allowed
    facts = {"device": query.device, "dtype": query.dtype, "head_dim": d, "has_mask": True}
    fn, key, value, gqa = _select_kernel(facts, backend, key, value, heads)
    out = _fused(fn, query, key, value, attn_mask, False, scale, gqa)
    if row_ok is not None:
        out = torch.where(row_ok, out, torch.zeros_like(out))
    return out


#: Route calls made inside ``torch.func`` transforms through :class:`_FoldedSDPA` where PyTorch
#: has no batching rule of its own (benchmarks switch this off to compare).
FOLD_UNDER_VMAP = True


def _needs_fold(q: Tensor, attn_mask: Tensor | None) -> bool:
    """Whether plain SDPA under vmap would leave the fused kernel.

    Measured on the lent H100 (torch 2.11, bf16, B4 x 16 heads x T4096 x 128, causal): PyTorch
    batches unmasked cuDNN/flash SDPA under vmap itself (587 TFLOP/s, as fast as without vmap),
    and folding there only adds host overhead (284 TFLOP/s). CPU SDPA has no batching rule
    (functorch's per-example fallback), and masked calls are folded so that one fused call with
    one mask is made; the masked CUDA case is not yet measured.
    """
    return q.device.type != "cuda" or attn_mask is not None


#: Kernels given ``enable_gqa`` directly; the others get K/V repeated to ``heads`` (PyTorch's
#: flash and math kernels support grouped K/V; cuDNN and efficient are not relied on to).
_NATIVE_GQA = ("flash", "math")


def _select_kernel(facts, backend, key, value, heads):
    """The chosen kernel, with K/V repeated for kernels that are not given grouped heads."""
    name = sdpa_op.decide(facts, backend).chosen
    fn = next(b.fn for b in sdpa_op.backends if b.name == name)
    gqa = key.shape[1] != heads
    if gqa and name not in _NATIVE_GQA:
        groups = heads // key.shape[1]
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
        gqa = False
    return fn, key, value, gqa


def _fused(fn, q, k, v, attn_mask, is_causal, scale, gqa):
    # Inside torch.func transforms, route through the Function whose vmap rule folds the
    # vmapped axes into the batch where PyTorch lacks a batching rule. Dynamo cannot trace the
    # wrapper query; compiled code keeps plain SDPA.
    if (
        FOLD_UNDER_VMAP
        and not torch.compiler.is_compiling()
        and _needs_fold(q, attn_mask)
        and any(
            torch._C._functorch.is_functorch_wrapped_tensor(x)
            for x in (q, k, v, attn_mask)
            if x is not None
        )
    ):
        return _FoldedSDPA.apply(q, k, v, attn_mask, fn, is_causal, scale, gqa)
    return fn(q, k, v, attn_mask, is_causal, scale, gqa)


class _FoldedSDPA(torch.autograd.Function):
    """SDPA whose vmap rule folds vmapped axes into the batch (keeps the fused kernel)."""

    @staticmethod
    def forward(q, k, v, attn_mask, fn, is_causal, scale, gqa):
        return fn(q, k, v, attn_mask, is_causal, scale, gqa)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, attn_mask, fn, is_causal, scale, gqa = inputs
        ctx.save_for_backward(q, k, v, attn_mask)
        ctx.fn, ctx.is_causal, ctx.scale, ctx.gqa = fn, is_causal, scale, gqa

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, mask = ctx.saved_tensors
        mask_grad = mask is not None and mask.is_floating_point() and ctx.needs_input_grad[3]

        def forward(q, k, v, *m):
            return ctx.fn(q, k, v, m[0] if m else mask, ctx.is_causal, ctx.scale, ctx.gqa)

        # Recompute the forward under torch.func.vjp (requires_grad_ is not allowed inside
        # functorch transforms); the fused kernel's own backward then runs.
        primals = (q, k, v, mask) if mask_grad else (q, k, v)
        _, pullback = torch.func.vjp(forward, *primals)
        grads = pullback(grad_out)
        dmask = grads[3] if mask_grad else None
        return grads[0], grads[1], grads[2], dmask, None, None, None, None

    @staticmethod
    def vmap(info, in_dims, q, k, v, attn_mask, fn, is_causal, scale, gqa):
        n = info.batch_size
        qd, kd, vd, md = in_dims[:4]
        b = q.shape[0] if qd is None else q.movedim(qd, 0).shape[1]

        def fold(x, d):
            x = x.unsqueeze(0).expand(n, *x.shape) if d is None else x.movedim(d, 0)
            if x.shape[1] != b:  # a broadcast batch axis of a mask
                x = x.expand(n, b, *x.shape[2:])
            return x.reshape(n * b, *x.shape[2:])

        mask = attn_mask
        if mask is not None and (md is not None or mask.shape[0] != 1):
            mask = fold(mask, md)
        out = _FoldedSDPA.apply(
            fold(q, qd), fold(k, kd), fold(v, vd), mask, fn, is_causal, scale, gqa
        )
        return out.reshape(n, b, *out.shape[1:]), 0
