"""Shell of the Hyena mixer (an inner mixer of :class:`subq.nn.mixer.QKVSequenceMixer`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from subq.functional import hyena as F
from subq.nn.base import mixer_config
from subq.nn.ckconv import ImplicitKernelShell

__all__ = ["Hyena"]


class Hyena(ImplicitKernelShell):
    """Shell of :func:`subq.functional.hyena.hyena`.

    ``Hyena(hidden_dim=256, max_size=4096)`` (causal 1D) or ``Hyena(hidden_dim=256, ndim=2,
    max_size=(32, 32), mode="circular")`` or ``Hyena(cfg=HyenaConfig(...))``. ``forward`` takes the
    projected ``query, key, value`` ``[B, *spatial, C]`` and the mixer protocol's ``cp_group``
    (must be None); ``conditioning`` ``[B, cond_dim]`` drives a FiLM of the kernel network when
    ``cond_dim`` is set (ignored otherwise), and other keyword arguments are ignored. The random
    features of an ``"rff"`` filter are a buffer (``rff_freqs``), not a parameter.
    """

    def __init__(
        self,
        hidden_dim: int | None = None,
        cfg: F.HyenaConfig | None = None,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **fields: Any,
    ) -> None:
        cfg = mixer_config("Hyena", F.HyenaConfig, hidden_dim, cfg, fields)
        self.cfg = cfg
        super().__init__(F.init_hyena(cfg, generator=generator, device=device, dtype=dtype))
        self._register_kernel_buffers(cfg.filter, generator, device)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        cp_group: Any = None,
        *,
        conditioning: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        del kwargs  # the mixer protocol passes options meant for other mixers
        if cp_group is not None:
            raise NotImplementedError(
                "Hyena: context parallelism (cp_group) is not implemented yet (a later issue "
                "wraps the long convolution in an all-to-all); pass cp_group=None"
            )
        return F.hyena(
            self.params(),
            query,
            key,
            value,
            cfg=self.cfg,
            buffers=self.buffers_pytree(),
            conditioning=conditioning,
        )

    def init_state(
        self, batch: int, max_len: int, conditioning: Tensor | None = None
    ) -> F.HyenaState:
        """Decoding state for :meth:`step` (causal 1D only)."""
        return F.init_hyena_state(
            self.params(),
            self.cfg,
            batch,
            max_len,
            buffers=self.buffers_pytree(),
            conditioning=conditioning,
        )

    def step(
        self, query: Tensor, key: Tensor, value: Tensor, state: F.HyenaState
    ) -> tuple[Tensor, F.HyenaState]:
        """One token ``[B, C]`` of causal decoding."""
        return F.hyena_step(self.params(), query, key, value, state, cfg=self.cfg)

    def flop_count(self, spatial_dims: tuple[int, ...], inference: bool = False) -> int:
        """FLOPs of one sample (one multiply-add = 2 FLOPs; see ``hyena_flop_count``)."""
        return F.hyena_flop_count(self.cfg, spatial_dims, inference)
