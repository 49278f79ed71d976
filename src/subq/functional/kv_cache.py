"""KV cache as explicit state: a static-shape pytree, and cached multi-head attention.

The cache holds ``max_len`` slots per batch element. Each slot stores a key and value (keys are
stored after QK-norm and RoPE), the token's global position and whether it is a real token.
Writing ``n`` tokens fills slots ``write, write+1, … (mod max_len)``: a ring buffer, so a cache
shorter than the sequence keeps the most recent ``max_len`` tokens. Results are exact while the
whole sequence fits, or, with a sliding window ``w``, while ``w + n - 1 ≤ max_len`` for chunks of
``n`` tokens (decoding: ``w ≤ max_len``).

Every quantity that changes during decoding (write index, positions, validity) is a tensor, so a
step has static shapes, never synchronises with the host and compiles once.

:func:`cached_attention` is prefill, chunked prefill and decoding in one function: the new tokens
get positions ``next_position + (0, 1, …)`` (padding tokens do not advance the position), are
written into the cache, and attend to every valid cached key under the layer's causal, window,
RoPE and ALiBi options, all evaluated on global positions.
"""

from __future__ import annotations

import math

import attrs
import torch

from subq._pytree import pytree_node
from subq._typing import Bool, Float, Int, Tensor, shapecheck
from subq.functional import attention as _attn
from subq.functional.attention import (
    AttentionConfig,
    AttentionParams,
    _linear,
    _project_qkv,
    _qk_normed,
    _rope_cache_for,
    attention,
    init_attention,  # noqa: F401  (used by the docstring example)
)

__all__ = ["KVCache", "cache_nbytes", "cached_attention", "init_kv_cache"]


@pytree_node
@attrs.define
class KVCache:
    """Preallocated keys/values and the bookkeeping of one attention layer.

    Attributes:
        key: ``[B, kv_heads, max_len, head_dim]`` (after QK-norm and RoPE).
        value: ``[B, kv_heads, max_len, head_dim]``.
        positions: ``[B, max_len]`` global position of the token in each slot.
        valid: ``[B, max_len]`` whether the slot holds a real token.
        next_position: ``[B]`` position the next real token will get.
        write_index: ``[]`` slot the next token is written to (before ``mod max_len``).
    """

    key: Float[Tensor, "b kv_heads max_len head_dim"]
    value: Float[Tensor, "b kv_heads max_len head_dim"]
    positions: Int[Tensor, "b max_len"]
    valid: Bool[Tensor, "b max_len"]
    next_position: Int[Tensor, " b"]
    write_index: Int[Tensor, ""]


def init_kv_cache(
    cfg: AttentionConfig,
    batch: int,
    max_len: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> KVCache:
    """An empty cache for ``batch`` sequences of up to ``max_len`` tokens (``kv_cache_max_len``)."""
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len <= 0:
        raise ValueError(f"init_kv_cache: max_len must be a positive int, got {max_len!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
        raise ValueError(f"init_kv_cache: batch must be a positive int, got {batch!r}")
    shape = (batch, cfg.kv_heads, max_len, cfg.resolved_head_dim)
    return KVCache(
        key=torch.zeros(shape, device=device, dtype=dtype),
        value=torch.zeros(shape, device=device, dtype=dtype),
        positions=torch.zeros(batch, max_len, dtype=torch.long, device=device),
        valid=torch.zeros(batch, max_len, dtype=torch.bool, device=device),
        next_position=torch.zeros(batch, dtype=torch.long, device=device),
        write_index=torch.zeros((), dtype=torch.long, device=device),
    )


def _check_cache(cache: KVCache, cfg: AttentionConfig, b: int, n: int) -> None:
    want = (b, cfg.kv_heads, cfg.resolved_head_dim)
    got = (cache.key.shape[0], cache.key.shape[1], cache.key.shape[3])
    if got != want:
        raise ValueError(
            f"cached_attention: cache must have [B, kv_heads, head_dim] = {list(want)}, "
            f"got {list(got)}"
        )
    max_len = cache.key.shape[2]
    if n > max_len:
        raise ValueError(
            f"cached_attention: the cache (max_len={max_len}) is too short for a chunk of {n} "
            f"tokens; expected max_len ≥ {n}"
        )
    if not cfg.causal:
        raise ValueError("cached_attention: expected a causal config (causal=True), got False")


@shapecheck
def cached_attention(
    params: AttentionParams,
    x: Float[Tensor, "b n dim"],
    cache: KVCache,
    *,
    cfg: AttentionConfig,
    key_padding_mask: Bool[Tensor, "b n"] | None = None,
) -> tuple[Float[Tensor, "b n dim"], KVCache]:
    """Causal self-attention of new tokens against the cache; returns ``(y, new_cache)``.

    Prefill is a call with the prompt, decoding a call with one token per sequence. The result
    equals :func:`~subq.functional.attention.multi_head_attention` on the whole sequence with
    ``positions`` = the running count of real tokens (padding excluded).

    Args:
        params: the layer's params.
        x: ``[B, n, C]`` new tokens.
        cache: from :func:`init_kv_cache` or a previous call; it is not modified.
        cfg: the layer's config (``causal=True``).
        key_padding_mask: ``[B, n]``, True for real tokens (e.g. a padded prompt).

    Example:
        >>> cfg = AttentionConfig(dim=8, num_heads=2, causal=True, pos_emb="rope")
        >>> p = init_attention(cfg, generator=torch.Generator().manual_seed(0))
        >>> cache = init_kv_cache(cfg, batch=1, max_len=16)
        >>> y, cache = cached_attention(p, torch.randn(1, 5, 8), cache, cfg=cfg)
        >>> y, cache = cached_attention(p, torch.randn(1, 1, 8), cache, cfg=cfg)
        >>> cache.next_position
        tensor([6])
    """
    b, n, c = x.shape
    if c != cfg.dim:
        raise ValueError(f"cached_attention: x must have {cfg.dim} channels, got {c}")
    _check_cache(cache, cfg, b, n)
    max_len = cache.key.shape[2]
    real = (
        key_padding_mask
        if key_padding_mask is not None
        else torch.ones(b, n, dtype=torch.bool, device=x.device)
    )
    # Padding does not advance the position: real tokens are numbered consecutively.
    steps = real.long().cumsum(-1)
    positions = cache.next_position[:, None] + steps - real.long()
    q, k, val = _project_qkv(params, x, cfg)
    q, k, scale = _qk_normed(params, q, k, cfg)
    q, k, val = q.transpose(1, 2), k.transpose(1, 2), val.transpose(1, 2)
    alibi = None
    if cfg.pos_emb == "rope":
        from subq.functional.rope import apply_rope_qk

        q, k = apply_rope_qk(
            q, k, _rope_cache_for(cfg, (n,), positions, x.device), pairing=cfg.rope_pairing
        )
    elif cfg.pos_emb == "alibi":
        alibi = _attn._alibi_slopes(cfg.num_heads, x.device, x.dtype)
    slots = (cache.write_index + torch.arange(n, device=x.device)) % max_len
    new_cache = KVCache(
        key=cache.key.index_copy(2, slots, k.to(cache.key.dtype)),
        value=cache.value.index_copy(2, slots, val.to(cache.value.dtype)),
        positions=cache.positions.index_copy(1, slots, positions),
        valid=cache.valid.index_copy(1, slots, real),
        next_position=cache.next_position + real.long().sum(-1),
        write_index=cache.write_index + n,
    )
    dropout = None  # decoding is inference: no attention dropout
    out = attention(
        q,
        new_cache.key.to(q.dtype),
        new_cache.value.to(q.dtype),
        causal=cfg.causal,
        window=cfg.window,
        key_padding_mask=new_cache.valid,
        alibi_slopes=alibi,
        query_positions=positions,
        key_positions=new_cache.positions,
        softcap=cfg.softcap,
        scale=scale,
        dropout_seed=dropout,
        backend=_cached_backend(cfg),
        block_size=cfg.attention_block_size,
    )
    y = _linear(out.transpose(1, 2).reshape(b, n, -1), params.out_weight, params.out_bias)
    return y, new_cache


def _cached_backend(cfg: AttentionConfig):
    from subq.functional.attention import AttentionType

    if cfg.attention_type is AttentionType.LINEAR:
        raise ValueError(
            "cached_attention: attention_type='linear' decodes with its recurrent state "
            "(subq.functional.linear_attention), not a KV cache"
        )
    return cfg.attention_type


def cache_nbytes(cache: KVCache) -> int:
    """Bytes held by the cache's tensors."""
    return sum(
        math.prod(t.shape) * t.element_size()
        for t in (
            cache.key,
            cache.value,
            cache.positions,
            cache.valid,
            cache.next_position,
            cache.write_index,
        )
    )
