"""Shells for absolute and bias position encodings."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from subq.functional import positional as F
from subq.nn.base import Shell

__all__ = ["ALiBi", "LearnedPositionalEmbedding", "SinusoidalPositionalEmbedding"]


class SinusoidalPositionalEmbedding(nn.Module):
    """Adds sinusoidal embeddings to ``x [B, T, dim]`` (no parameters; built per call).

    Args:
        dim: channels (even).
        base: frequency base.
    """

    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        F.sinusoidal_positions(1, dim)  # validates dim
        self.dim, self.base = dim, float(base)

    def forward(self, x: Tensor, *, offset: int = 0) -> Tensor:
        # The sum in float32 (float64 stays float64), rounded once to x's dtype.
        ct = torch.promote_types(x.dtype, torch.float32)
        pe = F.sinusoidal_positions(
            x.shape[-2], self.dim, offset=offset, base=self.base, device=x.device, dtype=ct
        )
        return (x.to(ct) + pe).to(x.dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, base={self.base}"


class LearnedPositionalEmbedding(Shell):
    """Adds learned absolute embeddings to ``x [B, T, dim]``; shell of
    :func:`subq.functional.positional.learned_positional`.

    Build from a config or its fields: ``LearnedPositionalEmbedding(max_len=512, dim=64)``.
    """

    def __init__(
        self,
        cfg: F.LearnedPositionalConfig | None = None,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **fields: object,
    ) -> None:
        self.cfg = cfg if cfg is not None else F.LearnedPositionalConfig(**fields)
        super().__init__(
            F.init_learned_positional(self.cfg, generator=generator, device=device, dtype=dtype)
        )

    def forward(self, x: Tensor, *, offset: int = 0) -> Tensor:
        # The sum in at least float32, rounded once to x's dtype (a float32 table is not
        # rounded to bfloat16 before the add).
        pe = F.learned_positional(self.params(), x.shape[-2], offset=offset)
        ct = torch.promote_types(torch.promote_types(x.dtype, pe.dtype), torch.float32)
        return (x.to(ct) + pe.to(ct)).to(x.dtype)


class ALiBi(nn.Module):
    """ALiBi attention bias for ``num_heads`` heads (no parameters; slopes built per call).

    ``forward(q_pos, k_pos)`` returns ``[heads, Tq, Tk]`` (or ``[B, heads, Tq, Tk]``) from global
    positions, so cached decoding passes the absolute position of the new tokens.
    """

    def __init__(self, num_heads: int, *, symmetric: bool = False) -> None:
        super().__init__()
        F.alibi_slopes(num_heads)  # validates num_heads
        self.num_heads, self.symmetric = num_heads, symmetric

    def slopes(self, device: torch.device | str | None = None) -> Tensor:
        return F.alibi_slopes(self.num_heads, device=device)

    def forward(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        return F.alibi_bias(self.slopes(q_pos.device), q_pos, k_pos, symmetric=self.symmetric)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, symmetric={self.symmetric}"
