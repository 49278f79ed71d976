"""QKV sequence mixer: ``Linear(C → 3C)`` → split → inner mixer(q, k, v) → ``Linear(C → C)``.

The inner mixer is any pure function ``mixer(params, q, k, v, **options)`` on channels-last
``[B, *spatial, C]`` tensors — :func:`subq.functional.hyena.hyena`,
:func:`subq.functional.ckconv.ckconv_mixer`, :func:`subq.functional.attention.attention_mixer`,
or a user's. FLOPs of the projections (:func:`qkv_projection_flops`): ``8 · T · C²`` with
``T = prod(spatial)`` (one multiply-add = 2 FLOPs, biases not counted), as the reference counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from subq._pytree import pytree_node
from subq._typing import Float, shapecheck
from subq.functional.implicit import LinearParams

__all__ = [
    "QKVSequenceMixerParams",
    "init_qkv_projections",
    "qkv_projection_flops",
    "qkv_sequence_mixer",
]


@pytree_node
@attrs.define
class QKVSequenceMixerParams:
    """The packed QKV projection ``[3C, C]``, the inner mixer's params and the output projection."""

    qkv_proj: LinearParams
    mixer: Any
    out_proj: LinearParams


def _linear_init(out_f, in_f, bias, generator, device, dtype) -> LinearParams:
    # nn.Linear's default (Kaiming uniform with a = √5): U(±1/√fan_in) for weight and bias.
    bound = 1.0 / math.sqrt(in_f)
    dtype = dtype or torch.float32
    w = (torch.rand((out_f, in_f), generator=generator, dtype=dtype) * 2 - 1) * bound
    b = (torch.rand((out_f,), generator=generator, dtype=dtype) * 2 - 1) * bound if bias else None
    return torch.utils._pytree.tree_map(lambda t: t.to(device), LinearParams(weight=w, bias=b))


def init_qkv_projections(
    hidden_dim: int,
    mixer_params: Any,
    *,
    qkv_bias: bool = False,
    out_proj_bias: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> QKVSequenceMixerParams:
    """Projections with ``nn.Linear``'s default init around already-built inner-mixer params."""
    if not isinstance(hidden_dim, int) or hidden_dim <= 0:
        raise ValueError(
            f"init_qkv_projections: hidden_dim must be a positive int, got {hidden_dim!r}"
        )
    return QKVSequenceMixerParams(
        qkv_proj=_linear_init(3 * hidden_dim, hidden_dim, qkv_bias, generator, device, dtype),
        mixer=mixer_params,
        out_proj=_linear_init(hidden_dim, hidden_dim, out_proj_bias, generator, device, dtype),
    )


@shapecheck
def qkv_sequence_mixer(
    params: QKVSequenceMixerParams,
    x: Float[Tensor, "b *spatial c"],
    *,
    mixer: Callable[..., Tensor],
    **mixer_kwargs: Any,
) -> Float[Tensor, "b *spatial c"]:
    """Project ``x`` to q, k, v, mix them with ``mixer(params.mixer, q, k, v, **mixer_kwargs)``,
    project back.

    Args:
        params: from :func:`init_qkv_projections`.
        x: ``[B, *spatial, C]``.
        mixer: the inner mixer's pure function with its options bound
            (e.g. ``functools.partial(hyena, cfg=cfg)``).
        **mixer_kwargs: forwarded to ``mixer``.
    """
    c = params.out_proj.weight.shape[0]
    if x.shape[-1] != c:
        raise ValueError(
            f"qkv_sequence_mixer: x's last axis must be hidden_dim={c}, got shape {tuple(x.shape)}"
        )
    qkv = F.linear(x, params.qkv_proj.weight, params.qkv_proj.bias)
    q, k, v = qkv.split(c, dim=-1)
    y = mixer(params.mixer, q, k, v, **mixer_kwargs)
    return F.linear(y, params.out_proj.weight, params.out_proj.bias)


def qkv_projection_flops(hidden_dim: int, spatial_dims: Sequence[int]) -> int:
    """FLOPs of the two projections: ``2·T·C·3C + 2·T·C·C = 8·T·C²``."""
    tokens = math.prod(int(s) for s in spatial_dims)
    return 8 * tokens * hidden_dim * hidden_dim
