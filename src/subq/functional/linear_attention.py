"""Linear attention (Katharopoulos et al., 2020): softmax replaced by a feature map ``φ``.

``out_t = φ(q_t)ᵀ S_t / (φ(q_t) · z_t)`` with ``S_t = Σ_s φ(k_s) v_sᵀ`` and ``z_t = Σ_s φ(k_s)``
over the visible keys ``s`` (all keys, or ``s ≤ t`` when causal). The cost is linear in the
sequence length.

The causal form is computed in chunks of ``chunk_size`` tokens: inside a chunk the quadratic
form with a causal mask, across chunks the running sums ``S``/``z`` of the previous chunks (an
exclusive cumulative sum over per-chunk sums, so all chunks run in parallel). Any sequence
length works (the last chunk is padded with keys that are masked out). A padding mask is
honoured by removing the padded keys from the sums (``φ(k) = 0`` there), so padding cannot leak
into any output. A query with no visible key returns zeros. Grouped K/V heads (GQA) are used
without repeating them.

Decoding uses the recurrent form: :func:`linear_attention_step` updates the state ``(S, z)``
with one token; ``linear_attention(..., return_state=True)`` returns the state after a prompt.
"""

from __future__ import annotations

import attrs
import torch

from subq._pytree import pytree_node
from subq._typing import Bool, Float, Tensor, shapecheck
from subq.ops.linear_attention import (
    FEATURE_MAPS,
    apply_feature_map,
    linear_attention_op,
    normalised,
)

__all__ = [
    "FEATURE_MAPS",
    "LinearAttentionState",
    "apply_feature_map",
    "init_linear_attention_state",
    "linear_attention",
    "linear_attention_flop_count",
    "linear_attention_step",
]


@pytree_node
@attrs.define
class LinearAttentionState:
    """Recurrent state of causal linear attention.

    Attributes:
        kv: ``[B, kv_heads, head_dim, dv]``, ``Σ φ(k_s) v_sᵀ`` (float32 or float64).
        k_sum: ``[B, kv_heads, head_dim]``, ``Σ φ(k_s)``.
    """

    kv: Float[Tensor, "b kv_heads head_dim dv"]
    k_sum: Float[Tensor, "b kv_heads head_dim"]


def init_linear_attention_state(
    batch: int,
    kv_heads: int,
    head_dim: int,
    value_dim: int | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> LinearAttentionState:
    """The empty state (no keys seen)."""
    value_dim = head_dim if value_dim is None else value_dim
    return LinearAttentionState(
        kv=torch.zeros(batch, kv_heads, head_dim, value_dim, device=device, dtype=dtype),
        k_sum=torch.zeros(batch, kv_heads, head_dim, device=device, dtype=dtype),
    )


def _check(query: Tensor, key: Tensor, value: Tensor, chunk_size: int, mask: Tensor | None):
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t.ndim != 4:
            raise ValueError(
                f"linear_attention: {name} must be [B, heads, T, head_dim], got shape "
                f"{tuple(t.shape)}"
            )
    if key.shape[:3] != value.shape[:3] or key.shape[0] != query.shape[0]:
        raise ValueError(
            f"linear_attention: key and value must share [B, kv_heads, S] with query's B, got "
            f"query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}"
        )
    if key.shape[-1] != query.shape[-1]:
        raise ValueError(
            f"linear_attention: key head_dim must equal query's ({query.shape[-1]}), got "
            f"{key.shape[-1]}"
        )
    if query.shape[1] % key.shape[1]:
        raise ValueError(
            f"linear_attention: kv_heads must divide heads={query.shape[1]}, got "
            f"kv_heads={key.shape[1]}"
        )
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"linear_attention: chunk_size must be a positive int, got {chunk_size!r}")
    b, s = key.shape[0], key.shape[2]
    if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != (b, s)):
        raise ValueError(
            f"linear_attention: key_padding_mask must be a bool tensor of shape [B, S] = "
            f"[{b}, {s}], got {mask.dtype} of shape {tuple(mask.shape)}"
        )


def _check_state(state: LinearAttentionState, key: Tensor, value: Tensor, name: str) -> None:
    b, kvh, _, d = key.shape
    want = ((b, kvh, d, value.shape[-1]), (b, kvh, d))
    got = (tuple(state.kv.shape), tuple(state.k_sum.shape))
    if got != want:
        raise ValueError(
            f"{name} must have kv [B, kv_heads, head_dim, dv] = {list(want[0])} "
            f"and k_sum [B, kv_heads, head_dim] = {list(want[1])}, got {list(got[0])} and "
            f"{list(got[1])}"
        )


@shapecheck
def linear_attention(
    query: Float[Tensor, "..."],
    key: Float[Tensor, "..."],
    value: Float[Tensor, "..."],
    *,
    causal: bool = False,
    feature_map: str = "elu",
    chunk_size: int = 64,
    key_padding_mask: Bool[Tensor, "..."] | None = None,
    normalize: bool = True,
    eps: float = 0.0,
    initial_state: LinearAttentionState | None = None,
    return_state: bool = False,
    backend: str | None = None,
) -> Float[Tensor, "..."] | tuple[Float[Tensor, "..."], LinearAttentionState]:
    """Linear attention of ``query [B, heads, T, D]`` over ``key``/``value [B, kv_heads, S, *]``.

    Args:
        query: ``[B, heads, T, head_dim]``.
        key: ``[B, kv_heads, S, head_dim]``; ``kv_heads`` divides ``heads``.
        value: ``[B, kv_heads, S, dv]``.
        causal: each query sees keys up to its own position (needs ``T == S``).
        feature_map: one of :data:`FEATURE_MAPS`.
        chunk_size: chunk length of the causal form (``linear_attention_chunk_size``).
        key_padding_mask: ``[B, S]``, True for real keys; padded keys are removed from the sums.
        normalize: divide by ``φ(q) · Σ φ(k)`` (False: the unnormalised form).
        eps: added to the denominator (0: exact; rows with no visible key still return 0).
        initial_state: causal only: the state of the tokens before this call (decoding after a
            prompt, or a long sequence in pieces).
        return_state: causal only: also return the state after the last token.
        backend: a backend of the ``linear_attention`` op (``compiled``: CUDA, Inductor;
            ``reference``: any device); ``None`` lets the dispatcher choose.

    Returns:
        ``[B, heads, T, dv]`` in the query dtype (and the state with ``return_state``).

    Example:
        >>> q = k = v = torch.randn(1, 2, 10, 4)
        >>> linear_attention(q, k, v, causal=True, chunk_size=4).shape
        torch.Size([1, 2, 10, 4])
    """
    _check(query, key, value, chunk_size, key_padding_mask)
    t, s = query.shape[2], key.shape[2]
    if causal and t != s:
        raise ValueError(
            f"linear_attention: causal needs as many queries as keys, got T={t}, S={s}"
        )
    if (initial_state is not None or return_state) and not causal:
        raise ValueError("linear_attention: initial_state/return_state need causal=True")
    if initial_state is not None:
        _check_state(initial_state, key, value, "linear_attention: initial_state")
    init = (None, None) if initial_state is None else (initial_state.kv, initial_state.k_sum)
    facts = {"device": query.device, "dtype": query.dtype}
    out, kv, k_sum = linear_attention_op.select(facts, backend)(
        query, key, value, key_padding_mask, *init, causal, feature_map, chunk_size, normalize, eps
    )
    if return_state:
        return out, LinearAttentionState(kv=kv, k_sum=k_sum)
    return out


@shapecheck
def linear_attention_step(
    state: LinearAttentionState,
    query: Float[Tensor, "b heads 1 head_dim"],
    key: Float[Tensor, "b kv_heads 1 head_dim"],
    value: Float[Tensor, "b kv_heads 1 dv"],
    *,
    feature_map: str = "elu",
    key_padding_mask: Bool[Tensor, "b 1"] | None = None,
    normalize: bool = True,
    eps: float = 0.0,
) -> tuple[Float[Tensor, "b heads 1 dv"], LinearAttentionState]:
    """One decoding step of causal linear attention: add the token to the state, then read."""
    _check(query, key, value, 1, key_padding_mask)
    _check_state(state, key, value, "linear_attention_step: state")
    b, heads, _, d = query.shape
    kvh, dv = key.shape[1], value.shape[-1]
    cd = state.kv.dtype
    fq = apply_feature_map(query.to(cd), feature_map).reshape(b, kvh, heads // kvh, d)
    fk = apply_feature_map(key.to(cd), feature_map)[:, :, 0]
    if key_padding_mask is not None:
        fk = fk * key_padding_mask.to(cd)[:, :, None]
    v = value.to(cd)[:, :, 0]
    new = LinearAttentionState(
        kv=state.kv + fk[..., :, None] * v[..., None, :], k_sum=state.k_sum + fk
    )
    num = torch.einsum("bkgd,bkde->bkge", fq, new.kv)
    den = torch.einsum("bkgd,bkd->bkg", fq, new.k_sum)[..., None]
    out = normalised(num, den, normalize, eps).reshape(b, heads, 1, dv)
    return out.to(query.dtype), new


def linear_attention_flop_count(
    num_heads: int,
    head_dim: int,
    seq_len: int,
    *,
    causal: bool = False,
    chunk_size: int = 64,
    kv_heads: int | None = None,
    value_dim: int | None = None,
) -> int:
    """FLOPs of the matrix products of :func:`linear_attention` (one multiply-add = 2 FLOPs).

    Per key/value head, the state ``Σ φ(k) vᵀ`` (``2·D·E`` per token); per query head, its
    read-out (``2·D·E``) and the normaliser ``φ(q)·Σ φ(k)`` (``2·D``). The causal chunked form
    also computes the full ``c × c`` scores and their product with ``v`` inside each chunk
    (``2·c·(D + E)`` per token and query head), over ``T`` rounded up to whole chunks. Feature
    maps, masks and running sums are not counted.
    """
    e = head_dim if value_dim is None else value_dim
    kvh = num_heads if kv_heads is None else kv_heads
    per_head = head_dim * e + head_dim + (chunk_size * (head_dim + e) if causal else 0)
    tokens = -(-seq_len // chunk_size) * chunk_size if causal else seq_len
    return 2 * tokens * (num_heads * per_head + kvh * head_dim * e)
