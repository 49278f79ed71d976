"""Shells for attention: the multi-head layer ``Attention`` and the inner mixer ``AttentionMixer``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from subq.functional import attention as F
from subq.nn.base import Shell, mixer_config

__all__ = ["Attention", "AttentionMixer"]


class Attention(Shell):
    """Shell of :func:`subq.functional.attention.multi_head_attention`.

    Build from a config or from its fields:
    ``Attention(AttentionConfig(dim=512, num_heads=8))`` or ``Attention(dim=512, num_heads=8)``.
    """

    def __init__(
        self,
        cfg: F.AttentionConfig | None = None,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **fields: Any,
    ) -> None:
        self.cfg = cfg if cfg is not None else F.AttentionConfig(**fields)
        super().__init__(
            F.init_attention(self.cfg, generator=generator, device=device, dtype=dtype)
        )

    def forward(
        self,
        x: Tensor,
        *,
        key_padding_mask: Tensor | None = None,
        segment_ids: Tensor | None = None,
        positions: Tensor | None = None,
        dropout_seed: int | Tensor | None = None,
    ) -> Tensor:
        return F.multi_head_attention(
            self.params(),
            x,
            cfg=self.cfg,
            key_padding_mask=key_padding_mask,
            segment_ids=segment_ids,
            positions=positions,
            dropout_seed=dropout_seed,
        )

    def flop_count(self, spatial_dims: tuple[int, ...], inference: bool = False) -> int:
        """FLOPs of one forward over ``spatial_dims`` (projections and attention)."""
        return F.multi_head_attention_flop_count(self.cfg, tuple(spatial_dims), inference)


class AttentionMixer(Shell):
    """Softmax attention as the inner mixer of ``QKVSequenceMixer`` (no projections).

    ``AttentionMixer(hidden_dim=256, num_heads=4, causal=True, pos_emb="rope")``; ``forward``
    takes the projected ``query, key, value`` ``[B, *spatial, C]`` and the mixer protocol's
    ``cp_group`` (must be None) and ignores unknown keyword arguments (e.g. ``conditioning``).
    """

    def __init__(
        self,
        hidden_dim: int | None = None,
        cfg: F.AttentionMixerConfig | None = None,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **fields: Any,
    ) -> None:
        cfg = mixer_config("AttentionMixer", F.AttentionMixerConfig, hidden_dim, cfg, fields)
        self.cfg = cfg
        super().__init__(
            F.init_attention_mixer(cfg, generator=generator, device=device, dtype=dtype)
        )

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        cp_group: Any = None,
        *,
        key_padding_mask: Tensor | None = None,
        dropout_seed: int | Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        del kwargs  # the mixer protocol passes options meant for other mixers (conditioning)
        if cp_group is not None:
            raise NotImplementedError(
                "AttentionMixer: context parallelism (cp_group) is not implemented yet; "
                "pass cp_group=None"
            )
        return F.attention_mixer(
            self.params(),
            query,
            key,
            value,
            cfg=self.cfg,
            key_padding_mask=key_padding_mask,
            dropout_seed=dropout_seed,
        )

    def flop_count(self, spatial_dims: tuple[int, ...], inference: bool = False) -> int:
        """FLOPs of the attention over ``prod(spatial_dims)`` tokens (no projections here)."""
        del inference
        n = 1
        for s in spatial_dims:
            n *= int(s)
        cfg = self.cfg
        return F.attention_flop_count(
            cfg.num_heads,
            cfg.resolved_head_dim,
            n,
            causal=cfg.causal and len(spatial_dims) == 1,
            window=cfg.window,
        )
