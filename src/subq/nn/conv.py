"""Shell of the short depthwise convolution."""

from __future__ import annotations

import torch
from torch import Tensor

from subq.functional import conv as F
from subq.nn.base import Shell

__all__ = ["ShortConv"]


class ShortConv(Shell):
    """Shell of :func:`subq.functional.conv.short_conv` (channels-last input).

    ``ShortConv(channels=64, kernel_size=4)`` or ``ShortConv(F.ShortConvConfig(...))``.
    """

    def __init__(
        self,
        cfg: F.ShortConvConfig | None = None,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **fields: object,
    ) -> None:
        self.cfg = cfg if cfg is not None else F.ShortConvConfig(**fields)
        super().__init__(
            F.init_short_conv(self.cfg, generator=generator, device=device, dtype=dtype)
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.short_conv(self.params(), x, causal=self.cfg.causal)

    def step(self, x: Tensor, state: F.ShortConvState) -> tuple[Tensor, F.ShortConvState]:
        """Causal decoding of a chunk ``[B, T, C]`` continuing ``state``."""
        return F.short_conv_decode(self.params(), x, state)
