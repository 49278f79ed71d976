"""Softmax attention: one functional core, several backends, the multi-head layer and inner mixer.

The core :func:`attention` takes ``query [B, heads, T, head_dim]``, ``key``/``value``
``[B, kv_heads, S, head_dim]`` (or channels-last ``[B, T, heads, head_dim]`` with
``layout="bthd"``) and a set of options that all backends interpret the same way:

* every option is expressed through the *positions* of queries and keys. By default keys sit at
  ``0 … S-1`` and queries at ``S-T … S-1`` (bottom-right alignment: the last query sees the last
  key, as in decoding and chunked prefill) or ``0 … T-1`` (``alignment="top_left"``). A KV cache
  passes explicit per-batch positions instead;
* ``causal`` keeps keys with ``k ≤ q``; ``window=w`` keeps ``q - w < k`` (and, without ``causal``,
  ``|q - k| < w``); ``prefix_length`` makes keys ``k < prefix`` visible to every query (prefix-LM);
* ``key_padding_mask`` (``[B, S]``, True = real token), ``mask`` (boolean, broadcastable to
  ``[B, heads, T, S]``, True = attend), ``segment_ids`` (packed documents attend within their
  segment) restrict the keys further;
* logits are ``scale · q·k`` (``scale`` defaults to ``1/sqrt(head_dim)``), then soft-capped
  (``softcap · tanh(logit / softcap)``), then ``bias`` and ALiBi (``-slope · |q - k|`` over global
  positions) are added;
* a query row with no visible key returns zeros (never NaN, never mean(V));
* dropout on the attention weights uses a counter-based hash of ``dropout_seed`` and the element
  index, so every backend drops the same weights and a run is reproducible;
* GQA/MQA: ``kv_heads`` divides ``heads``. ``standard``, ``memory_efficient`` and SDPA's flash and
  math kernels use the grouped K/V as they are; SDPA's cuDNN and efficient kernels get K/V
  repeated to ``heads`` (see :mod:`subq.ops.attention`).

Backends (:class:`AttentionType`): ``standard`` (the naive formula, the oracle), ``memory_efficient``
(blockwise online softmax in plain PyTorch, O(T·block) memory), ``flash`` (PyTorch SDPA, the
kernel chosen by the ``sdpa`` op of :mod:`subq.ops.attention`), ``pallas_flash`` (the fastest fused
kernel available here; the reference name is kept) and ``linear`` (see
:mod:`subq.functional.linear_attention`).
"""

from __future__ import annotations

import enum
import math
from typing import Any, NamedTuple

import attrs
import torch
from attrs import validators as av

from subq import _validators as check
from subq._pytree import pytree_node
from subq._typing import Bool, Float, Int, Tensor, shapecheck
from subq.functional.linear_attention import linear_attention, linear_attention_flop_count
from subq.functional.norm import RMSNormConfig, RMSNormParams, init_rms_norm, l2_norm, rms_norm
from subq.ops.linear_attention import FEATURE_MAPS

__all__ = [
    "AttentionConfig",
    "AttentionMixerConfig",
    "AttentionMixerParams",
    "AttentionParams",
    "AttentionType",
    "attention",
    "attention_flop_count",
    "attention_mixer",
    "init_attention",
    "init_attention_mixer",
    "multi_head_attention",
    "multi_head_attention_flop_count",
]


class AttentionType(str, enum.Enum):
    """Attention backend names of the reference ``TransformerConfig``."""

    STANDARD = "standard"
    MEMORY_EFFICIENT = "memory_efficient"
    FLASH = "flash"
    PALLAS_FLASH = "pallas_flash"
    LINEAR = "linear"


_ALIGNMENTS = ("bottom_right", "top_left")
_LAYOUTS = ("bhtd", "bthd")


# --------------------------------------------------------------------------------------------
# Option bundle shared by the backends
# --------------------------------------------------------------------------------------------


class _Mods(NamedTuple):
    """Score modifiers, in the layout of the 5-D scores ``[B, kv_heads, groups, T, S]``.

    A NamedTuple (not attrs) because it is built inside compiled regions.
    """

    causal: bool
    window: int | None
    q_pos: Tensor | None  # [B|1, T] int64 (None: implicit arange + offset)
    k_pos: Tensor | None  # [B|1, S]
    q_offset: int  # implicit query positions are arange(T) + q_offset
    key_valid: Tensor | None  # [B, S] bool
    mask: Tensor | None  # [B|1, KVH|1, G|1, T|1, S|1] bool
    q_seg: Tensor | None  # [B, T]
    k_seg: Tensor | None  # [B, S]
    prefix: Tensor | None  # [B|1] int64
    bias: Tensor | None  # [B|1, KVH|1, G|1, T|1, S|1] float
    alibi: Tensor | None  # [1, KVH, G, 1, 1] float
    softcap: float | None

    @property
    def needs_positions(self) -> bool:
        return (
            self.causal
            or self.window is not None
            or self.prefix is not None
            or self.alibi is not None
        )

    @property
    def any_mask(self) -> bool:
        return (
            self.needs_positions
            or self.key_valid is not None
            or self.mask is not None
            or self.q_seg is not None
        )


def _positions(mods: _Mods, q_sl: slice, k_sl: slice, device: torch.device):
    """Query positions ``[B|1, tq, 1]`` and key positions ``[B|1, 1, sk]`` for the block."""
    if mods.q_pos is not None:
        qp = mods.q_pos[:, q_sl]
    else:
        qp = torch.arange(q_sl.start, q_sl.stop, device=device)[None] + mods.q_offset
    if mods.k_pos is not None:
        kp = mods.k_pos[:, k_sl]
    else:
        kp = torch.arange(k_sl.start, k_sl.stop, device=device)[None]
    return qp[:, :, None], kp[:, None, :]


def _block(t: Tensor | None, q_sl: slice, k_sl: slice) -> Tensor | None:
    """Slice a broadcastable 5-D tensor on its last two axes, leaving size-1 axes whole."""
    if t is None:
        return None
    if t.shape[-2] != 1:
        t = t[..., q_sl, :]
    if t.shape[-1] != 1:
        t = t[..., k_sl]
    return t


def _block_mask_and_bias(
    mods: _Mods, q_sl: slice, k_sl: slice, device: torch.device
) -> tuple[Tensor | None, Tensor | None]:
    """(allowed, additive) for one block, each broadcastable to ``[B, KVH, G, tq, sk]``."""
    allowed: Tensor | None = None

    def both(a: Tensor | None, b: Tensor) -> Tensor:
        return b if a is None else a & b

    additive = _block(mods.bias, q_sl, k_sl)
    if mods.needs_positions:
        qp, kp = _positions(mods, q_sl, k_sl, device)
        rel = qp - kp  # [B|1, tq, sk]
        pos_ok: Tensor | None = None
        if mods.causal:
            pos_ok = rel >= 0
        if mods.window is not None:
            win = rel < mods.window if mods.causal else rel.abs() < mods.window
            pos_ok = win if pos_ok is None else pos_ok & win
        if mods.prefix is not None and pos_ok is not None:
            pos_ok = pos_ok | (kp < mods.prefix[:, None, None])
        if pos_ok is not None:
            allowed = both(allowed, pos_ok[:, None, None])
        if mods.alibi is not None:
            ab = -mods.alibi * rel.abs()[:, None, None].to(mods.alibi.dtype)
            additive = ab if additive is None else additive + ab
    if mods.key_valid is not None:
        allowed = both(allowed, mods.key_valid[:, None, None, None, k_sl])
    if mods.q_seg is not None and mods.k_seg is not None:
        same = mods.q_seg[:, q_sl, None] == mods.k_seg[:, None, k_sl]
        allowed = both(allowed, same[:, None, None])
    blk = _block(mods.mask, q_sl, k_sl)
    if blk is not None:
        allowed = both(allowed, blk)
    return allowed, additive


def _modified_scores(scores: Tensor, mods: _Mods, q_sl: slice, k_sl: slice) -> Tensor:
    """Soft-cap, add biases and set disallowed logits to -inf."""
    if mods.softcap is not None:
        scores = mods.softcap * torch.tanh(scores / mods.softcap)
    allowed, additive = _block_mask_and_bias(mods, q_sl, k_sl, scores.device)
    if additive is not None:
        scores = scores + additive.to(scores.dtype)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return scores


# --------------------------------------------------------------------------------------------
# Dropout by hashing (identical across backends and blocks)
# --------------------------------------------------------------------------------------------

_M32 = 0xFFFFFFFF


def _hash32(x: Tensor) -> Tensor:
    # A 32-bit integer mixer evaluated in int64; multipliers < 2**27 keep every product < 2**59,
    # so nothing overflows.
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    return (x >> 16) ^ x


def _dropout_keep(
    seed: Tensor, shape: tuple[int, int, int, int, int], q_sl: slice, k_sl: slice, p: float
) -> Tensor:
    """Keep-mask ``[B, KVH, G, tq, sk]`` for a block; a function of the global element index."""
    b, kvh, g, t, _ = shape
    dev = seed.device
    row = torch.arange(b * kvh * g, device=dev).view(b, kvh, g, 1, 1) * t + torch.arange(
        q_sl.start, q_sl.stop, device=dev
    ).view(1, 1, 1, -1, 1)
    col = torch.arange(k_sl.start, k_sl.stop, device=dev).view(1, 1, 1, 1, -1)
    h = _hash32((row & _M32) ^ (seed & _M32))
    h = _hash32(h ^ (col & _M32))
    h = _hash32(h ^ ((row >> 32) * 0x9E3779B & _M32))
    threshold = int(p * 2**32)
    return h >= threshold


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _standard(
    q5: Tensor,
    k: Tensor,
    v: Tensor,
    mods: _Mods,
    scale: float,
    dropout_p: float,
    seed: Tensor | None,
) -> Tensor:
    """Naive attention over the full ``[B, KVH, G, T, S]`` score tensor (the oracle)."""
    b, kvh, g, t, d = q5.shape
    s = k.shape[2]
    cd = _compute_dtype(q5.dtype)
    qf, kf, vf = q5.to(cd), k.to(cd), v.to(cd)
    scores = (qf.reshape(b, kvh, g * t, d) @ kf.transpose(-1, -2)).view(b, kvh, g, t, s)
    scores = _modified_scores(scores * scale, mods, slice(0, t), slice(0, s))
    # No keys at all (S = 0, a static shape): every row is empty and returns zeros.
    m = scores.amax(-1, keepdim=True) if s else scores.new_zeros(b, kvh, g, t, 1)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(scores - m)
    denom = p.sum(-1, keepdim=True)
    if dropout_p > 0.0:
        keep = _dropout_keep(seed, (b, kvh, g, t, s), slice(0, t), slice(0, s), dropout_p)
        p = p * keep / (1.0 - dropout_p)
    out = (p.reshape(b, kvh, g * t, s) @ vf).view(b, kvh, g, t, -1)
    # A row without a visible key has denom 0 and p = 0: dividing by 1 there returns zeros.
    out = out / torch.where(denom > 0, denom, torch.ones_like(denom))
    return out.to(q5.dtype)


def _memory_efficient(
    q5: Tensor,
    k: Tensor,
    v: Tensor,
    mods: _Mods,
    scale: float,
    dropout_p: float,
    seed: Tensor | None,
    block_size: int,
) -> Tensor:
    """Blockwise online softmax: only ``[.., block, block]`` scores exist at any time.

    For training in eager mode each query block is recomputed in the backward pass
    (``torch.utils.checkpoint``), so the saved activations are O(T) as well. Under
    ``torch.func`` transforms (which refuse saved-tensor hooks) and inside ``torch.compile``
    the blocks are kept instead: correct, with O(T²/block) saved activations.
    """
    t = q5.shape[3]
    recompute = _recompute_blocks(q5, k, v, mods)
    outs = []
    for qs in range(0, t, block_size):
        q_sl = slice(qs, min(qs + block_size, t))
        args = (q5, k, v, mods, scale, dropout_p, seed, block_size, q_sl)
        if recompute:
            from torch.utils.checkpoint import checkpoint

            outs.append(checkpoint(_query_block, *args, use_reentrant=False))
        else:
            outs.append(_query_block(*args))
    return torch.cat(outs, dim=3).to(q5.dtype)


def _recompute_blocks(q5: Tensor, k: Tensor, v: Tensor, mods: _Mods) -> bool:
    if not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return False
    tensors = [q5, k, v, mods.bias, mods.alibi]
    live = [x for x in tensors if x is not None]
    if any(torch._C._functorch.is_functorch_wrapped_tensor(x) for x in live):
        return False
    return any(x.requires_grad for x in live)


def _query_block(q5, k, v, mods, scale, dropout_p, seed, block_size, q_sl) -> Tensor:
    """Online softmax of one query block over every visible key block (compute dtype)."""
    b, kvh, g, t, d = q5.shape
    s = k.shape[2]
    cd = _compute_dtype(q5.dtype)
    tq = q_sl.stop - q_sl.start
    qb = q5[:, :, :, q_sl].to(cd).reshape(b, kvh, g * tq, d)
    m = torch.full((b, kvh, g, tq, 1), float("-inf"), dtype=cd, device=q5.device)
    denom = torch.zeros((b, kvh, g, tq, 1), dtype=cd, device=q5.device)
    acc = torch.zeros((b, kvh, g, tq, v.shape[-1]), dtype=cd, device=q5.device)
    for ks in range(0, s, block_size):
        k_sl = slice(ks, min(ks + block_size, s))
        if _block_skippable(mods, q_sl, k_sl):
            continue
        sk = k_sl.stop - k_sl.start
        kb, vb = k[:, :, k_sl].to(cd), v[:, :, k_sl].to(cd)
        sc = (qb @ kb.transpose(-1, -2)).view(b, kvh, g, tq, sk) * scale
        sc = _modified_scores(sc, mods, q_sl, k_sl)
        m_new = torch.maximum(m, sc.amax(-1, keepdim=True))
        m_safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
        corr = torch.exp(m - m_safe)
        p = torch.exp(sc - m_safe)
        denom = denom * corr + p.sum(-1, keepdim=True)
        if dropout_p > 0.0:
            keep = _dropout_keep(seed, (b, kvh, g, t, s), q_sl, k_sl, dropout_p)
            p = p * keep / (1.0 - dropout_p)
        acc = acc * corr + (p.reshape(b, kvh, g * tq, sk) @ vb).view(b, kvh, g, tq, -1)
        m = m_new
    return acc / torch.where(denom > 0, denom, torch.ones_like(denom))


def _block_skippable(mods: _Mods, q_sl: slice, k_sl: slice) -> bool:
    """Whether a key block is invisible to a query block, from static facts only."""
    if mods.q_pos is not None or mods.k_pos is not None or mods.prefix is not None:
        return False
    q_lo, q_hi = q_sl.start + mods.q_offset, q_sl.stop - 1 + mods.q_offset
    k_lo, k_hi = k_sl.start, k_sl.stop - 1
    if mods.causal and k_lo > q_hi:
        return True
    if mods.window is not None:
        w = mods.window
        if q_lo - k_hi >= w:  # every key too far in the past
            return True
        if not mods.causal and k_lo - q_hi >= w:
            return True
    return False


# --------------------------------------------------------------------------------------------
# Validation and the public core
# --------------------------------------------------------------------------------------------


def _shape_error(arg: str, expected: str, got: Any) -> ValueError:
    return ValueError(f"attention: {arg} must be {expected}, got {got}")


def _as_5d(
    t: Tensor | None, name: str, b: int, heads: int, kvh: int, tq: int, s: int
) -> Tensor | None:
    """Check ``t`` broadcasts to ``[B, heads, T, S]`` and view it as ``[B|1, KVH|1, G|1, T|1, S|1]``."""
    if t is None:
        return None
    if t.ndim > 4 or t.ndim < 2:
        raise _shape_error(
            name,
            "a tensor broadcastable to [B, heads, T, S] with 2 to 4 axes",
            f"shape {tuple(t.shape)}",
        )
    t4 = t.reshape((1,) * (4 - t.ndim) + tuple(t.shape))
    want = (b, heads, tq, s)
    if any(a not in (1, w) for a, w in zip(t4.shape, want)):
        raise _shape_error(
            name, f"broadcastable to [B, heads, T, S] = {list(want)}", f"shape {tuple(t.shape)}"
        )
    hb = t4.shape[1]
    if hb == 1:
        return t4.unsqueeze(2)
    return t4.reshape(t4.shape[0], kvh, heads // kvh, t4.shape[2], t4.shape[3])


def _positions_arg(p: Tensor | None, name: str, b: int, n: int) -> Tensor | None:
    if p is None:
        return None
    if p.ndim == 1:
        p = p[None]
    if p.ndim != 2 or p.shape[1] != n or p.shape[0] not in (1, b):
        raise _shape_error(
            name, f"an integer tensor of shape [{n}] or [B={b}, {n}]", f"shape {tuple(p.shape)}"
        )
    if p.dtype.is_floating_point or p.dtype == torch.bool:
        raise _shape_error(name, "an integer tensor", f"dtype {p.dtype}")
    return p.long()


def _build_mods(
    query: Tensor,
    key: Tensor,
    *,
    causal: bool,
    alignment: str,
    window: int | None,
    key_padding_mask: Tensor | None,
    mask: Tensor | None,
    segment_ids: Tensor | None,
    kv_segment_ids: Tensor | None,
    prefix_length: int | Tensor | None,
    bias: Tensor | None,
    alibi_slopes: Tensor | None,
    query_positions: Tensor | None,
    key_positions: Tensor | None,
    softcap: float | None,
) -> _Mods:
    b, heads, t, _ = query.shape
    kvh, s = key.shape[1], key.shape[2]
    if alignment not in _ALIGNMENTS:
        raise _shape_error("alignment", f"one of {_ALIGNMENTS}", repr(alignment))
    if window is not None and (
        isinstance(window, bool) or not isinstance(window, int) or window <= 0
    ):
        raise _shape_error("window", "a positive int or None", repr(window))
    if softcap is not None and not softcap > 0:
        raise _shape_error("softcap", "a positive float or None", repr(softcap))
    key_valid = None
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != (b, s):
            raise _shape_error(
                "key_padding_mask",
                f"a bool tensor of shape [B, S] = [{b}, {s}]",
                f"{key_padding_mask.dtype} of shape {tuple(key_padding_mask.shape)}",
            )
        key_valid = key_padding_mask
    if mask is not None and mask.dtype != torch.bool:
        raise _shape_error(
            "mask",
            "a bool tensor (True = attend); pass additive masks as bias",
            f"dtype {mask.dtype}",
        )
    mask5 = _as_5d(mask, "mask", b, heads, kvh, t, s)
    bias5 = _as_5d(bias, "bias", b, heads, kvh, t, s)
    q_seg = k_seg = None
    if segment_ids is not None or kv_segment_ids is not None:
        q_seg = segment_ids
        k_seg = kv_segment_ids if kv_segment_ids is not None else segment_ids
        if q_seg is None or tuple(q_seg.shape) != (b, t):
            raise _shape_error(
                "segment_ids",
                f"an integer tensor of shape [B, T] = [{b}, {t}]",
                None if q_seg is None else f"shape {tuple(q_seg.shape)}",
            )
        if tuple(k_seg.shape) != (b, s):
            raise _shape_error(
                "kv_segment_ids",
                f"an integer tensor of shape [B, S] = [{b}, {s}] "
                "(needed when query and key lengths differ)",
                f"shape {tuple(k_seg.shape)}",
            )
    prefix = None
    if prefix_length is not None:
        if not causal and window is None:
            raise _shape_error(
                "prefix_length", "used with causal=True or a window (prefix-LM)", "neither"
            )
        if isinstance(prefix_length, Tensor):
            prefix = prefix_length.reshape(-1).long()
            if prefix.shape[0] not in (1, b):
                raise _shape_error(
                    "prefix_length",
                    f"an int or an integer tensor of shape [B={b}]",
                    f"shape {tuple(prefix_length.shape)}",
                )
        elif isinstance(prefix_length, int) and not isinstance(prefix_length, bool):
            prefix = torch.tensor([prefix_length], device=query.device)
        else:
            raise _shape_error(
                "prefix_length", "an int, an integer tensor or None", repr(prefix_length)
            )
    alibi = None
    if alibi_slopes is not None:
        if tuple(alibi_slopes.shape) != (heads,):
            raise _shape_error(
                "alibi_slopes",
                f"a tensor of shape [heads={heads}]",
                f"shape {tuple(alibi_slopes.shape)}",
            )
        alibi = alibi_slopes.reshape(1, kvh, heads // kvh, 1, 1)
    q_pos = _positions_arg(query_positions, "query_positions", b, t)
    k_pos = _positions_arg(key_positions, "key_positions", b, s)
    if (q_pos is None) != (k_pos is None):
        if q_pos is None:
            q_pos = (
                torch.arange(t, device=query.device) + (s - t if alignment == "bottom_right" else 0)
            )[None]
        else:
            k_pos = torch.arange(s, device=query.device)[None]
    q_offset = s - t if alignment == "bottom_right" else 0
    return _Mods(
        causal,
        window,
        q_pos,
        k_pos,
        q_offset,
        key_valid,
        mask5,
        q_seg,
        k_seg,
        prefix,
        bias5,
        alibi,
        softcap,
    )


def _check_qkv(query: Tensor, key: Tensor, value: Tensor) -> None:
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t.ndim != 4:
            raise _shape_error(
                name, "a 4-D tensor [B, heads, T, head_dim]", f"shape {tuple(t.shape)}"
            )
    if key.shape[:3] != value.shape[:3]:
        raise _shape_error(
            "value",
            f"[B, kv_heads, S] = {list(key.shape[:3])} like key",
            f"shape {tuple(value.shape)}",
        )
    if key.shape[0] != query.shape[0]:
        raise _shape_error("key", f"batch {query.shape[0]} like query", f"batch {key.shape[0]}")
    if key.shape[-1] != query.shape[-1]:
        raise _shape_error(
            "key", f"head_dim {query.shape[-1]} like query", f"head_dim {key.shape[-1]}"
        )
    heads, kvh = query.shape[1], key.shape[1]
    if heads % kvh != 0:
        raise _shape_error("key", f"a number of kv_heads dividing heads={heads}", f"kv_heads={kvh}")


def _normalise_backend(
    backend: AttentionType | str | None, where: str = "attention: backend must be"
) -> AttentionType | None:
    """``None`` or an :class:`AttentionType`; ``where`` starts the error (the argument's name)."""
    if backend is None:
        return None
    try:
        return AttentionType(backend)
    except ValueError:
        valid = [a.value for a in AttentionType]
        raise ValueError(f"{where} one of {valid} or None, got {backend!r}") from None


@shapecheck
def attention(
    query: Float[Tensor, "..."],
    key: Float[Tensor, "..."],
    value: Float[Tensor, "..."],
    *,
    causal: bool = False,
    alignment: str = "bottom_right",
    window: int | None = None,
    key_padding_mask: Bool[Tensor, "..."] | None = None,
    mask: Bool[Tensor, "..."] | None = None,
    segment_ids: Int[Tensor, "..."] | None = None,
    kv_segment_ids: Int[Tensor, "..."] | None = None,
    prefix_length: int | Int[Tensor, "..."] | None = None,
    bias: Float[Tensor, "..."] | None = None,
    alibi_slopes: Float[Tensor, "..."] | None = None,
    query_positions: Int[Tensor, "..."] | None = None,
    key_positions: Int[Tensor, "..."] | None = None,
    softcap: float | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    dropout_seed: int | Int[Tensor, ""] | None = None,
    backend: AttentionType | str | None = None,
    block_size: int = 512,
    layout: str = "bhtd",
) -> Float[Tensor, "..."]:
    """Scaled dot-product attention with masks, biases and GQA, on a chosen backend.

    Args:
        query: ``[B, heads, T, head_dim]`` (``[B, T, heads, head_dim]`` with ``layout="bthd"``).
        key: ``[B, kv_heads, S, head_dim]``; ``kv_heads`` must divide ``heads``.
        value: ``[B, kv_heads, S, dv]``.
        causal: keep keys at positions ``k ≤ q``.
        alignment: implicit positions when ``T != S``: ``"bottom_right"`` (queries are the last
            ``T`` positions; decoding) or ``"top_left"`` (queries start at 0).
        window: sliding window ``w``: keys with ``q - w < k`` (``|q - k| < w`` without ``causal``).
        key_padding_mask: ``[B, S]``, True for real keys.
        mask: boolean, broadcastable to ``[B, heads, T, S]``, True = attend.
        segment_ids: ``[B, T]`` document ids of a packed batch; attention stays in a document.
        kv_segment_ids: ``[B, S]`` ids of the keys when ``S != T`` (defaults to ``segment_ids``).
        prefix_length: prefix-LM: keys before this position are visible to every query (an int
            or one per batch element); needs ``causal`` (or a ``window``).
        bias: additive logits, broadcastable to ``[B, heads, T, S]``.
        alibi_slopes: ``[heads]``: adds ``-slope · |q - k|`` over the global positions.
        query_positions: explicit integer positions ``[T]`` or ``[B, T]`` (KV caches).
        key_positions: explicit integer positions ``[S]`` or ``[B, S]``.
        softcap: logits become ``softcap · tanh(logits / softcap)`` (before biases and masks).
        scale: logit scale; ``1/sqrt(head_dim)`` by default (pass one after L2 QK-norm).
        dropout_p: probability of dropping an attention weight (training only; pass 0 in eval).
        dropout_seed: an int or integer scalar tensor; required when ``dropout_p > 0``.
        backend: an :class:`AttentionType` (``"linear"`` is a different model: use
            :func:`subq.functional.linear_attention.linear_attention`); ``None`` chooses
            ``flash`` where it supports the options and the device, else ``standard``.
        block_size: the query/key block of ``memory_efficient``.
        layout: ``"bhtd"`` (heads before time) or ``"bthd"`` (channels-last).

    Returns:
        ``[B, heads, T, dv]`` (or ``[B, T, heads, dv]``) in the dtype of ``query``.

    Example:
        >>> q = k = v = torch.randn(1, 2, 5, 4)
        >>> attention(q, k, v, causal=True).shape
        torch.Size([1, 2, 5, 4])
    """
    if layout not in _LAYOUTS:
        raise _shape_error("layout", f"one of {_LAYOUTS}", repr(layout))
    if layout == "bthd":
        query, key, value = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    _check_qkv(query, key, value)
    kind = _normalise_backend(backend)
    if kind is AttentionType.LINEAR:
        raise _shape_error(
            "backend",
            "a softmax backend (use subq.functional.linear_attention for 'linear')",
            "'linear'",
        )
    if not 0.0 <= dropout_p < 1.0:
        raise _shape_error("dropout_p", "in [0, 1)", repr(dropout_p))
    if not (isinstance(block_size, int) and block_size > 0):
        raise _shape_error("block_size", "a positive int", repr(block_size))
    b, heads, t, d = query.shape
    kvh = key.shape[1]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    mods = _build_mods(
        query,
        key,
        causal=causal,
        alignment=alignment,
        window=window,
        key_padding_mask=key_padding_mask,
        mask=mask,
        segment_ids=segment_ids,
        kv_segment_ids=kv_segment_ids,
        prefix_length=prefix_length,
        bias=bias,
        alibi_slopes=alibi_slopes,
        query_positions=query_positions,
        key_positions=key_positions,
        softcap=softcap,
    )
    seed = None
    if dropout_p > 0.0:
        if dropout_seed is None:
            raise _shape_error("dropout_seed", "an int or integer tensor when dropout_p > 0", None)
        seed = torch.as_tensor(dropout_seed, device=query.device).long()
    if kind is None:
        from subq.ops.attention import attention_op

        facts = {
            "device": query.device,
            "dtype": query.dtype,
            "softcap": softcap is not None,
            "dropout": dropout_p > 0.0,
        }
        kind = AttentionType(attention_op.decide(facts).chosen)
    if kind in (AttentionType.FLASH, AttentionType.PALLAS_FLASH):
        from subq.ops.attention import sdpa_attention

        out = sdpa_attention(
            query, key, value, mods, scale, dropout_p, fastest=kind is AttentionType.PALLAS_FLASH
        )
    else:
        q5 = query.reshape(b, kvh, heads // kvh, t, d)
        if kind is AttentionType.MEMORY_EFFICIENT:
            out = _memory_efficient(q5, key, value, mods, scale, dropout_p, seed, block_size)
        else:
            out = _standard(q5, key, value, mods, scale, dropout_p, seed)
        out = out.reshape(b, heads, t, value.shape[-1])
    return out.transpose(1, 2) if layout == "bthd" else out


# --------------------------------------------------------------------------------------------
# Multi-head layer and inner mixer
# --------------------------------------------------------------------------------------------

_QK_NORMS = (None, "l2", "rms")
_POS_EMBS = ("none", "rope", "alibi")


def _optional_attention_type(value: AttentionType | str | None) -> AttentionType | None:
    return _normalise_backend(value, "attention_type: expected")


@attrs.frozen(kw_only=True)
class _HeadsConfig:
    """Fields shared by the layer and the inner mixer: how heads are normalised, rotated, mixed."""

    num_heads: int = attrs.field(validator=check.positive_int)
    causal: bool = attrs.field(default=False, validator=av.instance_of(bool))
    window: int | None = attrs.field(default=None, validator=check.optional(check.positive_int))
    qk_norm: str | None = attrs.field(default=None, validator=check.one_of(_QK_NORMS))
    learnable_qk_scale: bool = attrs.field(default=True, validator=av.instance_of(bool))
    qk_scale_init: float | None = attrs.field(
        default=None, validator=check.optional(check.positive)
    )
    norm_eps: float = attrs.field(default=1e-6, converter=float)
    pos_emb: str = attrs.field(default="none", validator=check.one_of(_POS_EMBS))
    rope_base: float = attrs.field(default=10000.0, converter=float)
    rope_pairing: str = attrs.field(
        default="split_half", validator=check.one_of(("split_half", "interleaved"))
    )
    softcap: float | None = attrs.field(default=None, validator=check.optional(check.positive))
    dropout_rate: float = attrs.field(default=0.0, converter=float)
    attention_type: AttentionType | None = attrs.field(
        default=None, converter=_optional_attention_type
    )
    attention_block_size: int = attrs.field(default=512, validator=check.positive_int)
    linear_attention_chunk_size: int = attrs.field(default=64, validator=check.positive_int)
    linear_feature_map: str = attrs.field(default="elu", validator=check.one_of(FEATURE_MAPS))

    @property
    def scale_init(self) -> float:
        """The L2 QK-norm logit scale: ``qk_scale_init``, else ``sqrt(head_dim)``."""
        if self.qk_scale_init is not None:
            return self.qk_scale_init
        return math.sqrt(self.resolved_head_dim)

    def _check_heads(self, head_dim: int, num_kv_heads: int) -> None:
        name = type(self).__name__
        if self.num_heads % num_kv_heads:
            raise ValueError(
                f"{name}: num_heads ({self.num_heads}) must be divisible by num_kv_heads, "
                f"got num_kv_heads={num_kv_heads}"
            )
        if self.pos_emb == "rope" and head_dim % 2:
            raise ValueError(f"{name}: RoPE needs an even head_dim, got head_dim={head_dim}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"{name}.dropout_rate: expected in [0, 1), got {self.dropout_rate}")
        if self.attention_type is AttentionType.LINEAR:
            unsupported = {
                "window": self.window is not None,
                "softcap": self.softcap is not None,
                "pos_emb='alibi'": self.pos_emb == "alibi",
                "dropout_rate": self.dropout_rate > 0.0,
            }
            bad = [k for k, used in unsupported.items() if used]
            if bad:
                raise ValueError(
                    f"{name}: attention_type='linear' does not support {', '.join(bad)}; "
                    "use a softmax attention_type or drop the option"
                )


@attrs.frozen(kw_only=True)
class AttentionConfig(_HeadsConfig):
    """Multi-head attention: projections, optional QK-norm and RoPE/ALiBi, a backend.

    Attributes:
        dim: model width ``C``.
        num_heads: query heads.
        num_kv_heads: key/value heads (GQA/MQA); defaults to ``num_heads``.
        head_dim: channels per head; defaults to ``dim // num_heads``.
        fused_qkv: one ``[(heads + 2·kv_heads)·head_dim, C]`` projection instead of three.
        qkv_bias: bias on the input projections.
        out_bias: bias on the output projection.
        causal: causal self-attention.
        window: sliding window: keys ``q - w < k ≤ q`` with ``causal``, ``|q - k| < w`` without.
        qk_norm: ``None``, ``"l2"`` (unit-norm q and k, then a scale) or ``"rms"`` (per-head
            RMSNorm with a learned weight). Applied before RoPE.
        learnable_qk_scale: with ``"l2"``: learn one logit scale per head (else fixed).
        qk_scale_init: the L2 logit scale (initial or fixed); default ``sqrt(head_dim)``.
        pos_emb: ``"none"``, ``"rope"`` (over the spatial axes of the input: 1-D or N-D) or
            ``"alibi"`` (1-D).
        rope_base: RoPE frequency base.
        rope_pairing: ``"split_half"`` (NeoX) or ``"interleaved"`` (GPT-J).
        softcap: logit soft-capping.
        dropout_rate: dropout on the attention weights (applied when a ``dropout_seed`` is given).
        attention_type: backend (:class:`AttentionType`); ``None`` chooses by device.
        attention_block_size: block of the memory-efficient backend.
        linear_attention_chunk_size: chunk of the linear backend.
        linear_feature_map: feature map of the linear backend.
    """

    dim: int = attrs.field(validator=check.positive_int)
    num_kv_heads: int | None = attrs.field(
        default=None, validator=check.optional(check.positive_int)
    )
    head_dim: int | None = attrs.field(default=None, validator=check.optional(check.positive_int))
    fused_qkv: bool = attrs.field(default=True, validator=av.instance_of(bool))
    qkv_bias: bool = attrs.field(default=False, validator=av.instance_of(bool))
    out_bias: bool = attrs.field(default=False, validator=av.instance_of(bool))

    def __attrs_post_init__(self) -> None:
        if self.head_dim is None and self.dim % self.num_heads:
            raise ValueError(
                f"AttentionConfig: dim ({self.dim}) must be divisible by num_heads "
                f"({self.num_heads}) when head_dim is not given"
            )
        self._check_heads(self.resolved_head_dim, self.kv_heads)

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.dim // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads if self.num_kv_heads is not None else self.num_heads


@attrs.frozen(kw_only=True)
class AttentionMixerConfig(_HeadsConfig):
    """The inner-mixer form: softmax attention over flattened spatial axes, no projections.

    ``hidden_dim`` (``C``) is split into ``num_heads`` heads; the other fields are those of
    :class:`AttentionConfig`. With ``pos_emb="rope"``, an N-D input gets N-D RoPE (the head
    channels split equally over the axes).
    """

    hidden_dim: int = attrs.field(validator=check.positive_int)

    def __attrs_post_init__(self) -> None:
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"AttentionMixerConfig: hidden_dim ({self.hidden_dim}) must be divisible by "
                f"num_heads ({self.num_heads})"
            )
        self._check_heads(self.resolved_head_dim, self.num_heads)

    @property
    def resolved_head_dim(self) -> int:
        return self.hidden_dim // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.num_heads


@pytree_node
@attrs.define
class AttentionParams:
    """Projection weights (``[out, in]``), optional biases, QK-norm weights and logit scales.

    Either ``qkv_weight`` (fused) or ``q_weight``/``k_weight``/``v_weight`` are set.
    """

    qkv_weight: Float[Tensor, "qkv dim"] | None = None
    qkv_bias: Float[Tensor, "qkv"] | None = None
    q_weight: Float[Tensor, "qd dim"] | None = None
    q_bias: Float[Tensor, "qd"] | None = None
    k_weight: Float[Tensor, "kvd dim"] | None = None
    k_bias: Float[Tensor, "kvd"] | None = None
    v_weight: Float[Tensor, "kvd dim"] | None = None
    v_bias: Float[Tensor, "kvd"] | None = None
    out_weight: Float[Tensor, "dim qd"] | None = None
    out_bias: Float[Tensor, "dim"] | None = None
    q_norm_weight: Float[Tensor, "heads head_dim"] | None = None
    k_norm_weight: Float[Tensor, "kv_heads head_dim"] | None = None
    qk_scale: Float[Tensor, "heads"] | None = None


@pytree_node
@attrs.define
class AttentionMixerParams:
    """QK-norm weights and logit scales of the inner mixer (all ``None`` without QK-norm)."""

    q_norm_weight: Float[Tensor, "heads head_dim"] | None = None
    k_norm_weight: Float[Tensor, "heads head_dim"] | None = None
    qk_scale: Float[Tensor, "heads"] | None = None


def _init_qk(cfg: _HeadsConfig, device, dtype) -> dict[str, Any]:
    out: dict[str, Any] = {}
    hd = cfg.resolved_head_dim
    if cfg.qk_norm == "rms":
        # Per-head RMSNorm weights (RMSNormConfig(dim=head_dim, num_heads=...)), kept as flat
        # fields so that their head axes bind to the layer's heads / kv_heads when checked.
        out["q_norm_weight"] = init_rms_norm(
            RMSNormConfig(dim=hd, num_heads=cfg.num_heads), device=device, dtype=dtype
        ).weight
        out["k_norm_weight"] = init_rms_norm(
            RMSNormConfig(dim=hd, num_heads=cfg.kv_heads), device=device, dtype=dtype
        ).weight
    elif cfg.qk_norm == "l2" and cfg.learnable_qk_scale:
        out["qk_scale"] = torch.full((cfg.num_heads,), cfg.scale_init, device=device, dtype=dtype)
    return out


def init_attention(
    cfg: AttentionConfig,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> AttentionParams:
    """Fan-in (LeCun) truncated-normal projections, zero biases, unit QK-norm weights."""
    from subq.init import linear_weight

    hd, c = cfg.resolved_head_dim, cfg.dim
    qd, kvd = cfg.num_heads * hd, cfg.kv_heads * hd

    def weight(out_features: int, in_features: int) -> Tensor:
        return linear_weight(
            out_features, in_features, generator=generator, device=device, dtype=dtype
        )

    def zeros(n: int) -> Tensor | None:
        return torch.zeros(n, device=device, dtype=dtype)

    kw: dict[str, Any] = {}
    if cfg.fused_qkv:
        kw["qkv_weight"] = weight(qd + 2 * kvd, c)
        kw["qkv_bias"] = zeros(qd + 2 * kvd) if cfg.qkv_bias else None
    else:
        kw["q_weight"], kw["k_weight"], kw["v_weight"] = (
            weight(qd, c),
            weight(kvd, c),
            weight(kvd, c),
        )
        if cfg.qkv_bias:
            kw["q_bias"], kw["k_bias"], kw["v_bias"] = zeros(qd), zeros(kvd), zeros(kvd)
    kw["out_weight"] = weight(c, qd)
    kw["out_bias"] = zeros(c) if cfg.out_bias else None
    kw.update(_init_qk(cfg, device, dtype))
    return AttentionParams(**kw)


def init_attention_mixer(
    cfg: AttentionMixerConfig,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> AttentionMixerParams:
    """QK-norm weights (ones) or logit scales; empty without QK-norm. ``generator`` is unused."""
    del generator
    return AttentionMixerParams(**_init_qk(cfg, device, dtype))


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return torch.nn.functional.linear(x, weight, bias)


def _project_qkv(params: AttentionParams, x: Tensor, cfg: AttentionConfig):
    """``x [B, N, C]`` -> q ``[B, N, heads, hd]``, k, v ``[B, N, kv_heads, hd]``."""
    hd = cfg.resolved_head_dim
    qd, kvd = cfg.num_heads * hd, cfg.kv_heads * hd
    b, n = x.shape[:2]
    if params.qkv_weight is not None:
        qkv = _linear(x, params.qkv_weight, params.qkv_bias)
        q, k, val = qkv.split((qd, kvd, kvd), dim=-1)
    else:
        if params.q_weight is None or params.k_weight is None or params.v_weight is None:
            raise ValueError(
                "multi_head_attention: params must hold qkv_weight or all of q_weight, "
                "k_weight, v_weight, got neither"
            )
        q = _linear(x, params.q_weight, params.q_bias)
        k = _linear(x, params.k_weight, params.k_bias)
        val = _linear(x, params.v_weight, params.v_bias)
    return (
        q.reshape(b, n, cfg.num_heads, hd),
        k.reshape(b, n, cfg.kv_heads, hd),
        val.reshape(b, n, cfg.kv_heads, hd),
    )


def _qk_normed(params: Any, q: Tensor, k: Tensor, cfg: _HeadsConfig):
    """QK-norm on ``[B, N, heads, hd]`` tensors; returns (q, k, scale for attention)."""
    scale = None
    if cfg.qk_norm == "rms":
        if params.q_norm_weight is None or params.k_norm_weight is None:
            raise ValueError(
                "attention: qk_norm='rms' needs params.q_norm_weight and params.k_norm_weight"
            )
        q = rms_norm(RMSNormParams(params.q_norm_weight), q, eps=cfg.norm_eps)
        k = rms_norm(RMSNormParams(params.k_norm_weight), k, eps=cfg.norm_eps)
    elif cfg.qk_norm == "l2":
        q, k = l2_norm(q, eps=1e-12), l2_norm(k, eps=1e-12)
        if cfg.learnable_qk_scale:
            if params.qk_scale is None:
                raise ValueError("attention: learnable_qk_scale needs params.qk_scale")
            # A per-head logit scale on q is the same as scaling the logits of that head.
            q = q * params.qk_scale[:, None].to(q.dtype)
            scale = 1.0
        else:
            scale = cfg.scale_init
    return q, k, scale


def _rope_cache_for(cfg: _HeadsConfig, spatial: tuple[int, ...], positions: Tensor | None, device):
    """A RoPE cache broadcasting against ``[B, heads, N, hd]``."""
    from subq.functional.rope import RopeCache, rope_cache, rope_cache_from_positions

    hd = cfg.resolved_head_dim
    if positions is not None:
        cache = rope_cache_from_positions(positions, hd, base=cfg.rope_base)
        return RopeCache(cache.cos[:, None], cache.sin[:, None], cache.sections)
    cache = rope_cache(spatial, hd, base=cfg.rope_base, device=device)
    n = math.prod(spatial)
    return RopeCache(cache.cos.reshape(n, -1), cache.sin.reshape(n, -1), cache.sections)


def _alibi_slopes(num_heads: int, device, dtype: torch.dtype = torch.float32) -> Tensor:
    from subq.functional.positional import alibi_slopes

    return alibi_slopes(num_heads, device=device, dtype=_compute_dtype(dtype))


def _attend_heads(
    params: Any,
    q: Tensor,
    k: Tensor,
    val: Tensor,
    cfg: _HeadsConfig,
    spatial: tuple[int, ...],
    *,
    positions: Tensor | None,
    key_padding_mask: Tensor | None,
    segment_ids: Tensor | None,
    dropout_seed: int | Tensor | None,
) -> Tensor:
    """q ``[B, N, heads, hd]``, k/v ``[B, N, kv_heads, hd]`` -> ``[B, N, heads, hd]``."""
    q, k, scale = _qk_normed(params, q, k, cfg)
    q, k, val = q.transpose(1, 2), k.transpose(1, 2), val.transpose(1, 2)
    alibi = None
    if cfg.pos_emb == "rope":
        from subq.functional.rope import apply_rope_qk

        cache = _rope_cache_for(cfg, spatial, positions, q.device)
        q, k = apply_rope_qk(q, k, cache, pairing=cfg.rope_pairing)
    elif cfg.pos_emb == "alibi":
        if len(spatial) != 1:
            raise ValueError(f"attention: ALiBi needs a 1-D sequence, got spatial shape {spatial}")
        alibi = _alibi_slopes(cfg.num_heads, q.device, q.dtype)
    dropout_p = cfg.dropout_rate if dropout_seed is not None else 0.0
    if cfg.attention_type is AttentionType.LINEAR:
        if segment_ids is not None or positions is not None:
            raise ValueError(
                "attention: attention_type='linear' does not support segment_ids or explicit "
                "positions (a softmax attention_type does)"
            )
        if scale is not None:
            # The fixed L2 logit scale, applied as the learnable one is (on q), so that both
            # give the same function at init.
            q = q * scale

        out = linear_attention(
            q,
            k,
            val,
            causal=cfg.causal,
            feature_map=cfg.linear_feature_map,
            chunk_size=cfg.linear_attention_chunk_size,
            key_padding_mask=key_padding_mask,
        )
    else:
        out = attention(
            q,
            k,
            val,
            causal=cfg.causal,
            window=cfg.window,
            key_padding_mask=key_padding_mask,
            segment_ids=segment_ids,
            alibi_slopes=alibi,
            query_positions=positions,
            key_positions=positions,
            softcap=cfg.softcap,
            scale=scale,
            dropout_p=dropout_p,
            dropout_seed=dropout_seed,
            backend=cfg.attention_type,
            block_size=cfg.attention_block_size,
        )
    return out.transpose(1, 2)


@shapecheck
def multi_head_attention(
    params: AttentionParams,
    x: Float[Tensor, "b *spatial dim"],
    *,
    cfg: AttentionConfig,
    key_padding_mask: Bool[Tensor, "b n"] | None = None,
    segment_ids: Int[Tensor, "b n"] | None = None,
    positions: Int[Tensor, "b n"] | None = None,
    dropout_seed: int | Int[Tensor, ""] | None = None,
) -> Float[Tensor, "b *spatial dim"]:
    """Self-attention over the flattened spatial axes of ``x [B, *spatial, C]``.

    Args:
        params: from :func:`init_attention`.
        x: ``[B, T, C]`` (or ``[B, *spatial, C]``; RoPE is then N-D, causal order is row-major).
        cfg: the layer's config.
        key_padding_mask: ``[B, N]``, True for real tokens (N = prod(spatial)).
        segment_ids: ``[B, N]`` document ids of a packed batch.
        positions: ``[B, N]`` token positions (RoPE, ALiBi, causal, window use them; 1-D only).
        dropout_seed: enables attention dropout (``cfg.dropout_rate``) with this seed.

    Example:
        >>> cfg = AttentionConfig(dim=8, num_heads=2, causal=True, pos_emb="rope")
        >>> p = init_attention(cfg, generator=torch.Generator().manual_seed(0))
        >>> multi_head_attention(p, torch.randn(1, 5, 8), cfg=cfg).shape
        torch.Size([1, 5, 8])
    """
    b, *spatial, c = x.shape
    if c != cfg.dim:
        raise ValueError(f"multi_head_attention: x must have {cfg.dim} channels, got {c}")
    if positions is not None and len(spatial) != 1:
        raise ValueError(f"multi_head_attention: positions need a 1-D input, got {spatial}")
    n = math.prod(spatial)
    xf = x.reshape(b, n, c)
    q, k, val = _project_qkv(params, xf, cfg)
    out = _attend_heads(
        params,
        q,
        k,
        val,
        cfg,
        tuple(spatial),
        positions=positions,
        key_padding_mask=key_padding_mask,
        segment_ids=segment_ids,
        dropout_seed=dropout_seed,
    )
    y = _linear(out.reshape(b, n, -1), params.out_weight, params.out_bias)
    return y.reshape(x.shape)


@shapecheck
def attention_mixer(
    params: AttentionMixerParams,
    query: Float[Tensor, "b *spatial c"],
    key: Float[Tensor, "b *spatial c"],
    value: Float[Tensor, "b *spatial c"],
    *,
    cfg: AttentionMixerConfig,
    key_padding_mask: Bool[Tensor, "b n"] | None = None,
    dropout_seed: int | Int[Tensor, ""] | None = None,
) -> Float[Tensor, "b *spatial c"]:
    """Multi-head softmax attention of already-projected ``[B, *spatial, C]`` q, k, v.

    The inner mixer of ``QKVSequenceMixer``: heads split the channels, the spatial axes are
    flattened row-major into one sequence, RoPE (if configured) is N-D over the spatial axes.

    Example:
        >>> cfg = AttentionMixerConfig(hidden_dim=8, num_heads=2, pos_emb="rope")
        >>> q = torch.randn(1, 3, 4, 8)
        >>> attention_mixer(AttentionMixerParams(), q, q, q, cfg=cfg).shape
        torch.Size([1, 3, 4, 8])
    """
    b, *spatial, c = query.shape
    if c != cfg.hidden_dim:
        raise ValueError(f"attention_mixer: query must have {cfg.hidden_dim} channels, got {c}")
    if cfg.causal and len(spatial) != 1:
        raise ValueError(f"attention_mixer: causal needs a 1-D sequence, got spatial {spatial}")
    n, hd = math.prod(spatial), cfg.resolved_head_dim

    def heads(t: Tensor) -> Tensor:
        return t.reshape(b, n, cfg.num_heads, hd)

    out = _attend_heads(
        params,
        heads(query),
        heads(key),
        heads(value),
        cfg,
        tuple(spatial),
        positions=None,
        key_padding_mask=key_padding_mask,
        segment_ids=None,
        dropout_seed=dropout_seed,
    )
    return out.reshape(query.shape)


def attention_flop_count(
    num_heads: int,
    head_dim: int,
    q_len: int,
    kv_len: int | None = None,
    *,
    causal: bool = False,
    window: int | None = None,
    value_dim: int | None = None,
) -> int:
    """FLOPs of the score and value products over the visible (query, key) pairs.

    One multiply-add is 2 FLOPs: each visible pair costs ``2·head_dim`` for ``q·k`` and
    ``2·value_dim`` for the weighted sum. Masked pairs are not counted (a kernel that skips them,
    as the fused causal kernels do, does not spend them). Softmax is not counted.
    """
    kv_len = q_len if kv_len is None else kv_len
    value_dim = head_dim if value_dim is None else value_dim
    offset = kv_len - q_len  # bottom-right alignment
    pairs = 0
    if not causal and window is None:
        pairs = q_len * kv_len
    else:
        for i in range(q_len):
            qpos = i + offset
            hi = min(qpos, kv_len - 1) if causal else min(qpos + (window or 0) - 1, kv_len - 1)
            lo = 0 if window is None else max(0, qpos - window + 1)
            pairs += max(0, hi - lo + 1)
    return 2 * num_heads * pairs * (head_dim + value_dim)


def multi_head_attention_flop_count(
    cfg: AttentionConfig, spatial_dims: tuple[int, ...], inference: bool = False
) -> int:
    """Projections plus attention FLOPs of :func:`multi_head_attention` on one sequence (for
    ``attention_type="linear"``, :func:`~subq.functional.linear_attention.linear_attention_flop_count`)."""
    del inference  # the same work per token in training and prefill
    n, hd = math.prod(spatial_dims), cfg.resolved_head_dim
    qd, kvd = cfg.num_heads * hd, cfg.kv_heads * hd
    proj = 2 * n * cfg.dim * (qd + 2 * kvd) + 2 * n * qd * cfg.dim
    if cfg.attention_type is AttentionType.LINEAR:
        return proj + linear_attention_flop_count(
            cfg.num_heads,
            hd,
            n,
            causal=cfg.causal,
            chunk_size=cfg.linear_attention_chunk_size,
            kv_heads=cfg.kv_heads,
        )
    return proj + attention_flop_count(cfg.num_heads, hd, n, causal=cfg.causal, window=cfg.window)
