"""Absolute and bias position encodings: sinusoidal, learned, and ALiBi.

* **Sinusoidal** (Vaswani et al. 2017): ``PE[p, 2i] = sin(p·ω_i)``, ``PE[p, 2i+1] = cos(p·ω_i)``
  with ``ω_i = base^(−2i/d)``; a pure function of the positions (with a start offset for
  decoding).
* **Learned** absolute embeddings: a ``[max_len, dim]`` table. Asking for positions past the
  table is an error, never a silent clamp. The check is on static ints (``length``, ``offset``);
  positions given as a tensor are gathered without a value check inside the pure function
  (which must work under ``vmap`` and ``torch.compile``): use
  :func:`check_positions_in_table` in eager code to validate them.
* **ALiBi** (Press et al. 2022): a per-head linear bias ``m_h · (k − q)`` added to attention
  logits, computed from *global* query and key positions so it stays right in cached decoding.
  Slopes: for ``n`` heads a power of two, ``m_h = 2^(−8(h+1)/n)``; otherwise the slopes of the
  closest lower power of two ``n'``, followed by every other slope of ``2n'`` (the paper's
  schedule).
"""

from __future__ import annotations

import math

import attrs
import torch
from attrs import validators as v

from subq import _validators as check
from subq._pytree import pytree_node
from subq._typing import Float, Integer, Tensor, shapecheck

__all__ = [
    "LearnedPositionalConfig",
    "LearnedPositionalParams",
    "alibi_bias",
    "alibi_slopes",
    "check_positions_in_table",
    "init_learned_positional",
    "learned_positional",
    "learned_positional_at",
    "sinusoidal_embedding",
    "sinusoidal_positions",
]


# --------------------------------------------------------------------------------------------
# Sinusoidal
# --------------------------------------------------------------------------------------------


def _check_even_dim(fn: str, dim: int) -> None:
    if not isinstance(dim, int) or dim <= 0 or dim % 2 != 0:
        raise ValueError(f"{fn}: dim must be a positive multiple of 2, got {dim!r}")


def sinusoidal_embedding(
    positions: Tensor, dim: int, *, base: float = 10000.0, dtype: torch.dtype = torch.float32
) -> Float[Tensor, "... dim"]:
    """Sinusoidal embeddings of arbitrary (integer or continuous) positions.

    Args:
        positions: any shape; the result has one more axis of ``dim`` channels.
        dim: channels (even): sines on even channels, cosines on odd ones.
        base: frequency base, ``ω_i = base^(−2i/dim)``.
        dtype: output dtype (angles are computed in float64).

    Example:
        >>> sinusoidal_embedding(torch.tensor([0.0]), 4)
        tensor([[0., 1., 0., 1.]])
    """
    _check_even_dim("sinusoidal_embedding", dim)
    i = torch.arange(dim // 2, dtype=torch.float64, device=positions.device)
    omega = torch.pow(
        torch.tensor(float(base), dtype=torch.float64, device=positions.device), -2 * i / dim
    )
    angle = positions.to(torch.float64)[..., None] * omega
    return torch.stack((torch.sin(angle), torch.cos(angle)), dim=-1).flatten(-2).to(dtype)


def sinusoidal_positions(
    length: int,
    dim: int,
    *,
    offset: int = 0,
    base: float = 10000.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Float[Tensor, "length dim"]:
    """Sinusoidal embeddings of positions ``offset … offset + length − 1``, ``[length, dim]``."""
    if not isinstance(length, int) or length < 0:
        raise ValueError(f"sinusoidal_positions: length must be a non-negative int, got {length!r}")
    if not isinstance(offset, int) or offset < 0:
        raise ValueError(f"sinusoidal_positions: offset must be a non-negative int, got {offset!r}")
    positions = torch.arange(offset, offset + length, device=device)
    return sinusoidal_embedding(positions, dim, base=base, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Learned absolute embeddings
# --------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class LearnedPositionalConfig:
    """A learned table of ``max_len`` position embeddings of ``dim`` channels.

    Attributes:
        max_len: number of positions in the table.
        dim: channels per embedding.
        init_std: standard deviation of the truncated-normal init (cut at ±2·std).
    """

    max_len: int = attrs.field(validator=check.positive_int)
    dim: int = attrs.field(validator=check.positive_int)
    init_std: float = attrs.field(default=0.02, converter=float, validator=v.ge(0.0))


@pytree_node
@attrs.define
class LearnedPositionalParams:
    """The embedding table, ``[max_len, dim]``."""

    weight: Float[Tensor, "max_len dim"]


def init_learned_positional(
    cfg: LearnedPositionalConfig,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> LearnedPositionalParams:
    """Truncated normal (mean 0, ``cfg.init_std``, cut at ±2·std), drawn from ``generator``."""
    weight = torch.empty(cfg.max_len, cfg.dim, device=device, dtype=dtype)
    std = cfg.init_std
    torch.nn.init.trunc_normal_(weight, 0.0, std, -2 * std, 2 * std, generator=generator)
    return LearnedPositionalParams(weight=weight)


@shapecheck
def learned_positional(
    params: LearnedPositionalParams, length: int, *, offset: int = 0
) -> Float[Tensor, "length dim"]:
    """Embeddings of positions ``offset … offset + length − 1`` (add them to the input).

    Raises:
        ValueError: if ``offset + length`` exceeds the table (checked on the Python ints, so it
            holds under ``vmap`` and ``torch.compile`` too).

    Example:
        >>> p = LearnedPositionalParams(weight=torch.arange(6.0).reshape(3, 2))
        >>> learned_positional(p, 2, offset=1)
        tensor([[2., 3.],
                [4., 5.]])
    """
    max_len = params.weight.shape[0]
    if not isinstance(length, int) or not isinstance(offset, int) or length < 0 or offset < 0:
        raise ValueError(
            f"learned_positional: length and offset must be non-negative ints, "
            f"got length={length!r}, offset={offset!r}"
        )
    if offset + length > max_len:
        raise ValueError(
            f"learned_positional: positions {offset}..{offset + length - 1} run past the table "
            f"of max_len={max_len} positions (offset + length = {offset + length} > {max_len})"
        )
    return params.weight[offset : offset + length]


@shapecheck
def learned_positional_at(
    params: LearnedPositionalParams, positions: Integer[Tensor, "*shape"]
) -> Float[Tensor, "*shape dim"]:
    """Embeddings gathered at integer ``positions`` (e.g. per-batch decode positions).

    Values are not checked here (a value check cannot run under ``vmap`` or inside a compiled
    graph): an index past the table raises ``IndexError`` in eager CPU code and a device-side
    assert on CUDA. Validate untrusted positions with :func:`check_positions_in_table` first.
    """
    return params.weight[positions]


def check_positions_in_table(positions: Tensor, max_len: int) -> None:
    """Eager-mode check that every position lies in ``[0, max_len)``; not for compiled code.

    Raises:
        ValueError: naming the first offending position and the table size.
    """
    bad = (positions < 0) | (positions >= max_len)
    if bool(bad.any()):
        first = positions[bad].flatten()[0].item()
        raise ValueError(
            f"positions must lie in [0, {max_len}) (max_len={max_len}), got position {first}"
        )


# --------------------------------------------------------------------------------------------
# ALiBi
# --------------------------------------------------------------------------------------------


def _power_of_two_slopes(n: int) -> list[float]:
    return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]


def alibi_slopes(
    num_heads: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Float[Tensor, " heads"]:
    """ALiBi slopes for any head count (the paper's schedule).

    Example:
        >>> alibi_slopes(4)
        tensor([0.2500, 0.0625, 0.0156, 0.0039])
        >>> alibi_slopes(3)  # slopes of 2 heads, then every other slope of 4 heads
        tensor([0.0625, 0.0039, 0.2500])
    """
    if not isinstance(num_heads, int) or num_heads <= 0:
        raise ValueError(f"alibi_slopes: num_heads must be a positive int, got {num_heads!r}")
    lower = 2 ** math.floor(math.log2(num_heads))
    slopes = _power_of_two_slopes(lower)
    if lower != num_heads:
        slopes += _power_of_two_slopes(2 * lower)[0::2][: num_heads - lower]
    return torch.tensor(slopes, device=device, dtype=dtype)


@shapecheck
def alibi_bias(
    slopes: Float[Tensor, " heads"],
    q_pos: Tensor,
    k_pos: Tensor,
    *,
    symmetric: bool = False,
) -> Float[Tensor, "*batch heads tq tk"]:
    """The ALiBi bias ``m_h · (k − q)`` for global query and key positions.

    Args:
        slopes: one slope per head (:func:`alibi_slopes`).
        q_pos: ``[Tq]`` or ``[B, Tq]`` global positions of the queries (during cached decoding,
            the position of the new token, not its index in the step).
        k_pos: ``[Tk]`` or ``[B, Tk]`` global positions of the keys.
        symmetric: use ``−m_h·|k − q|`` (bidirectional attention) instead of the causal form
            (equal on the causal part ``k ≤ q``).

    Returns:
        ``[heads, Tq, Tk]`` or ``[B, heads, Tq, Tk]`` float bias, in ``slopes``' dtype. The
        distances and products are computed in float32 (float64 stays float64): positions past
        256 are not integers in bfloat16, so ``k − q`` formed there would be wrong.

    Example:
        >>> alibi_bias(torch.tensor([0.5]), torch.tensor([2]), torch.tensor([0, 1, 2]))
        tensor([[[-1.0000, -0.5000,  0.0000]]])
    """
    if q_pos.ndim not in (1, 2) or k_pos.ndim not in (1, 2):
        raise ValueError(
            f"alibi_bias: q_pos and k_pos must be [T] or [B, T], got shapes "
            f"{tuple(q_pos.shape)} and {tuple(k_pos.shape)}"
        )
    ct = torch.promote_types(slopes.dtype, torch.float32)
    rel = k_pos.to(ct)[..., None, :] - q_pos.to(ct)[..., :, None]
    if symmetric:
        rel = -rel.abs()
    return (slopes.to(ct)[:, None, None] * rel.unsqueeze(-3)).to(slopes.dtype)
