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
import torch.nn.functional as F

from subq._pytree import pytree_node
from subq._typing import Bool, Float, Tensor, shapecheck

__all__ = [
    "FEATURE_MAPS",
    "LinearAttentionState",
    "apply_feature_map",
    "init_linear_attention_state",
    "linear_attention",
    "linear_attention_step",
]

#: Feature maps ``φ``: ``elu`` = elu(x) + 1 (Katharopoulos et al.), ``relu``, ``softmax`` over
#: the head channels (Shen et al., "Efficient Attention"), ``identity`` (unnormalised linear
#: attention; use ``normalize=False`` with it, as its denominator can vanish).
FEATURE_MAPS = ("elu", "relu", "softmax", "identity")


def apply_feature_map(x: Tensor, name: str) -> Tensor:
    """Apply the feature map ``name`` (one of :data:`FEATURE_MAPS`) to the last axis."""
    if name == "elu":
        return F.elu(x) + 1.0
    if name == "relu":
        return F.relu(x)
    if name == "softmax":
        return torch.softmax(x, dim=-1)
    if name == "identity":
        return x
    raise ValueError(f"linear_attention: feature_map must be one of {FEATURE_MAPS}, got {name!r}")


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


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


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

    Returns:
        ``[B, heads, T, dv]`` in the query dtype (and the state with ``return_state``).

    Example:
        >>> q = k = v = torch.randn(1, 2, 10, 4)
        >>> linear_attention(q, k, v, causal=True, chunk_size=4).shape
        torch.Size([1, 2, 10, 4])
    """
    _check(query, key, value, chunk_size, key_padding_mask)
    b, heads, t, d = query.shape
    kvh, s, dv = key.shape[1], key.shape[2], value.shape[-1]
    g = heads // kvh
    if causal and t != s:
        raise ValueError(
            f"linear_attention: causal needs as many queries as keys, got T={t}, S={s}"
        )
    if (initial_state is not None or return_state) and not causal:
        raise ValueError("linear_attention: initial_state/return_state need causal=True")
    cd = _compute_dtype(query.dtype)
    fq = apply_feature_map(query.to(cd), feature_map).reshape(b, kvh, g, t, d)
    fk = apply_feature_map(key.to(cd), feature_map)
    vv = value.to(cd)
    if key_padding_mask is not None:
        keep = key_padding_mask[:, None, :, None].to(cd)
        fk = fk * keep
    if not causal:
        kv = torch.einsum("bksd,bkse->bkde", fk, vv)
        num = torch.einsum("bkgtd,bkde->bkgte", fq, kv)
        den = torch.einsum("bkgtd,bkd->bkgt", fq, fk.sum(2))[..., None]
        out = _normalised(num, den, normalize, eps)
        return out.reshape(b, heads, t, dv).to(query.dtype)
    mm = query.dtype if query.dtype in (torch.float16, torch.bfloat16) else cd
    out, state = _causal_chunked(fq, fk, vv, chunk_size, normalize, eps, initial_state, mm)
    out = out.reshape(b, heads, t, dv).to(query.dtype)
    return (out, state) if return_state else out


def _normalised(num: Tensor, den: Tensor, normalize: bool, eps: float) -> Tensor:
    if not normalize:
        return num
    den = den + eps
    # No visible key (or all features zero): the numerator is 0 too; return 0, not NaN.
    return num / torch.where(den != 0, den, torch.ones_like(den))


def _causal_chunked(fq, fk, v, chunk, normalize, eps, initial_state, mm_dtype):
    """fq ``[B, KVH, G, T, D]``, fk ``[B, KVH, T, D]``, v ``[B, KVH, T, E]`` (compute dtype).

    The matrix products run in ``mm_dtype`` (the input dtype for float16/bfloat16, so the
    tensor cores are used); the running sums and the denominators stay in the compute dtype.
    """
    b, kvh, g, t, d = fq.shape
    e = v.shape[-1]
    n = -(-t // chunk)
    pad = n * chunk - t
    if pad:
        # Padded keys have φ(k) = 0 (no contribution); padded query rows are dropped below.
        fq = F.pad(fq, (0, 0, 0, pad))
        fk = F.pad(fk, (0, 0, 0, pad))
        v = F.pad(v, (0, 0, 0, pad))
    cd = fq.dtype
    qc = fq.reshape(b, kvh, g, n, chunk, d)
    kc = fk.reshape(b, kvh, n, chunk, d)
    vc = v.reshape(b, kvh, n, chunk, e)
    qm, km, vm = qc.to(mm_dtype), kc.to(mm_dtype), vc.to(mm_dtype)
    # Sums of each chunk, then an exclusive prefix over chunks: the state before each chunk.
    kv_chunk = torch.einsum("bkncd,bknce->bknde", km, vm).to(cd)
    ks_chunk = kc.sum(3)
    kv_before = kv_chunk.cumsum(2) - kv_chunk
    ks_before = ks_chunk.cumsum(2) - ks_chunk
    if initial_state is not None:
        kv_before = kv_before + initial_state.kv.to(cd)[:, :, None]
        ks_before = ks_before + initial_state.k_sum.to(cd)[:, :, None]
    tri = torch.ones(chunk, chunk, dtype=torch.bool, device=fq.device).tril()
    scores = torch.einsum("bkgncd,bknsd->bkgncs", qm, km) * tri
    num = torch.einsum("bkgncs,bknse->bkgnce", scores, vm).to(cd)
    num = num + torch.einsum("bkgncd,bknde->bkgnce", qm, kv_before.to(mm_dtype)).to(cd)
    den = scores.to(cd).sum(-1) + torch.einsum("bkgncd,bknd->bkgnc", qc, ks_before)
    out = _normalised(num, den[..., None], normalize, eps)
    out = out.reshape(b, kvh, g, n * chunk, e)[:, :, :, :t]
    state = LinearAttentionState(
        kv=kv_before[:, :, -1] + kv_chunk[:, :, -1], k_sum=ks_before[:, :, -1] + ks_chunk[:, :, -1]
    )
    return out, state


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
    out = _normalised(num, den, normalize, eps).reshape(b, heads, 1, dv)
    return out.to(query.dtype), new
