"""``RotaryEmbedding``: a parameter-free shell that builds RoPE caches as pure functions of the
requested size and rotates queries and keys."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from subq.functional import rope as F

__all__ = ["RotaryEmbedding"]

_LAYOUTS = ("bhtd", "bthd")


class RotaryEmbedding(nn.Module):
    """Rotary position embedding of q and k (no parameters, no buffers, no state).

    The cache is rebuilt on each call from the input's size (a pure function of it, so the
    module never grows state during ``forward`` and ``torch.compile`` folds it into the graph).

    Args:
        head_dim: channels per head.
        n_axes: position axes (1 for sequences, 2 for images, 3 for video/volumes).
        base: frequency base.
        sections: rotated channels per axis (equal split by default).
        pairing: ``"split_half"``, ``"interleaved"`` or ``"nvsubquadratic"``.
        rotary_dim: rotate only the first ``rotary_dim`` channels.
        layout: ``"bhtd"`` for ``[B, heads, *grid, D]`` or ``"bthd"`` for
            ``[B, *grid, heads, D]``.

    Example:
        >>> rope = RotaryEmbedding(8)
        >>> q, k = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 8)
        >>> rq, rk = rope(q, k)
        >>> rq.shape
        torch.Size([2, 4, 5, 8])
    """

    def __init__(
        self,
        head_dim: int,
        *,
        n_axes: int = 1,
        base: float = 10000.0,
        sections: Sequence[int] | None = None,
        pairing: str = "split_half",
        rotary_dim: int | None = None,
        layout: str = "bhtd",
    ) -> None:
        super().__init__()
        if layout not in _LAYOUTS:
            raise ValueError(
                f"RotaryEmbedding: layout must be one of {list(_LAYOUTS)}, got {layout!r}"
            )
        if not isinstance(n_axes, int) or n_axes < 1:
            raise ValueError(f"RotaryEmbedding: n_axes must be a positive int, got {n_axes!r}")
        self.head_dim, self.n_axes, self.base = head_dim, n_axes, float(base)
        self.sections = None if sections is None else tuple(sections)
        self.pairing, self.rotary_dim, self.layout = pairing, rotary_dim, layout
        # Validate the configuration once, on a one-position grid.
        self.cache((1,) * n_axes)

    def cache(
        self,
        grid: Sequence[int],
        *,
        offset: int | Sequence[int] = 0,
        device: torch.device | str | None = None,
    ) -> F.RopeCache:
        """The cache for a grid of positions ``offset + arange(n)`` per axis, shaped to broadcast
        against this module's layout."""
        c = F.rope_cache(
            tuple(grid), self.head_dim, base=self.base, sections=self.sections,
            pairing=self.pairing, offset=offset, rotary_dim=self.rotary_dim, device=device,
        )  # fmt: skip
        if self.layout == "bthd":  # a heads axis between the grid and the channels
            return F.RopeCache(c.cos.unsqueeze(-2), c.sin.unsqueeze(-2), c.sections)
        return c

    def _grid(self, x: Tensor) -> tuple[int, ...]:
        need = self.n_axes + 3
        if x.ndim < need:
            raise ValueError(
                f"RotaryEmbedding: inputs must have at least {need} axes "
                f"(batch, heads, {self.n_axes} position axes, channels), got {tuple(x.shape)}"
            )
        if self.layout == "bhtd":
            return tuple(x.shape[-1 - self.n_axes : -1])
        return tuple(x.shape[-2 - self.n_axes : -2])

    def forward(
        self,
        q: Tensor,
        k: Tensor | None = None,
        *,
        offset: int | Sequence[int] = 0,
        positions: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Rotate ``q`` (and ``k``) at grid positions starting at ``offset`` or at explicit
        ``positions`` (``[..., T]`` for one axis, ``[..., T, n_axes]`` otherwise, broadcast to
        the layout like a cache); not both."""
        partial = self.rotary_dim is not None and self.rotary_dim < self.head_dim
        offset_given = any(offset) if isinstance(offset, Sequence) else offset != 0
        if positions is not None and offset_given:
            raise ValueError(
                f"RotaryEmbedding: pass either offset (grid positions) or positions, not both; "
                f"got offset={offset!r} with positions of shape {tuple(positions.shape)}"
            )
        if positions is not None:
            c = F.rope_cache_from_positions(
                positions, self.head_dim, base=self.base, sections=self.sections,
                n_axes=self.n_axes, pairing=self.pairing, rotary_dim=self.rotary_dim,
            )  # fmt: skip
            if self.layout == "bhtd" and c.cos.ndim > self.n_axes + 1:
                # [B, *grid, W] → [B, 1, *grid, W]: broadcast over heads.
                axis = c.cos.ndim - self.n_axes - 1
                c = F.RopeCache(c.cos.unsqueeze(axis), c.sin.unsqueeze(axis), c.sections)
            elif self.layout == "bthd":
                c = F.RopeCache(c.cos.unsqueeze(-2), c.sin.unsqueeze(-2), c.sections)
        else:
            c = self.cache(self._grid(q), offset=offset, device=q.device)
        if k is None:
            return F.apply_rope(q, c, pairing=self.pairing, partial=partial)
        return F.apply_rope_qk(q, k, c, pairing=self.pairing, partial=partial)

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, n_axes={self.n_axes}, base={self.base}, "
            f"sections={self.sections}, pairing={self.pairing!r}, layout={self.layout!r}"
        )
