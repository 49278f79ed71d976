"""Shells for the norms: ``L2Norm``, ``RMSNorm``, ``LayerNorm``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from subq.functional import norm as F
from subq.nn.base import Shell

__all__ = ["L2Norm", "LayerNorm", "RMSNorm"]


class L2Norm(nn.Module):
    """L2 normalisation layer — learnable-parameter-free, LazyConfig-friendly.

    Args:
        dim: axis to normalise.
        eps: lower bound of the norm.
    """

    def __init__(self, dim: int = -1, eps: float = 1e-12) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.l2_norm(x, dim=self.dim, eps=self.eps)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, eps={self.eps}"


class RMSNorm(Shell):
    """Shell of :func:`subq.functional.norm.rms_norm`.

    Build from a config or from its fields: ``RMSNorm(RMSNormConfig(dim=512))`` or
    ``RMSNorm(dim=512, eps=1e-6)``.
    """

    def __init__(
        self,
        cfg: F.RMSNormConfig | None = None,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **fields: object,
    ) -> None:
        self.cfg = cfg if cfg is not None else F.RMSNormConfig(**fields)
        super().__init__(F.init_rms_norm(self.cfg, generator=generator, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(
            self.params(), x, eps=self.cfg.eps, channels_first=self.cfg.channels_first
        )


class LayerNorm(Shell):
    """Shell of :func:`subq.functional.norm.layer_norm`."""

    def __init__(
        self,
        cfg: F.LayerNormConfig | None = None,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **fields: object,
    ) -> None:
        self.cfg = cfg if cfg is not None else F.LayerNormConfig(**fields)
        super().__init__(
            F.init_layer_norm(self.cfg, generator=generator, device=device, dtype=dtype)
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(
            self.params(), x, eps=self.cfg.eps, channels_first=self.cfg.channels_first
        )
