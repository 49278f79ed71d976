"""Short depthwise convolution (causal 1D or "same" N-D) with a decode state for the causal case.

The weight follows ``nn.Conv{1,2,3}d(groups=C)`` (a cross-correlation), stored ``[C, *K]``: a
depthwise ``nn.Conv1d`` checkpoint loads after ``weight.squeeze(1)``. In the causal case
``y[t] = Σ_j w[j] · x[t − (K − 1) + j] + b``, so ``w[K − 1]`` weighs the current token; "same"
uses PyTorch's ``padding="same"`` (for an even ``K`` one more tap looks forward than back).
Inputs are channels-last, ``[B, *spatial, C]``, like every mixer input in subq.
"""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F
from attrs import validators as v
from torch import Tensor

from subq import _validators as check
from subq._pytree import pytree_node
from subq._typing import Float, shapecheck

__all__ = [
    "ShortConvConfig",
    "ShortConvParams",
    "ShortConvState",
    "init_short_conv",
    "init_short_conv_state",
    "short_conv",
    "short_conv_decode",
]


@attrs.frozen(kw_only=True)
class ShortConvConfig:
    """A depthwise convolution with a small kernel.

    Attributes:
        channels: number of channels ``C``.
        kernel_size: taps per spatial axis.
        ndim: number of spatial axes (1 to 3).
        causal: causal (only with ``ndim == 1``) or "same".
        bias: learn a per-channel bias.
    """

    channels: int = attrs.field(validator=check.positive_int)
    kernel_size: int = attrs.field(default=3, validator=check.positive_int)
    ndim: int = attrs.field(default=1, validator=v.in_((1, 2, 3)))
    causal: bool = attrs.field(default=True, validator=v.instance_of(bool))
    bias: bool = attrs.field(default=False, validator=v.instance_of(bool))

    def __attrs_post_init__(self) -> None:
        if self.causal and self.ndim != 1:
            raise ValueError(f"ShortConvConfig: causal=True needs ndim=1, got ndim={self.ndim}")


@pytree_node
@attrs.define
class ShortConvParams:
    """Depthwise weight ``[C, *K]`` (cross-correlation order) and optional bias ``[C]``."""

    weight: Float[Tensor, "_c *_k"]
    bias: Float[Tensor, " _c"] | None = None


@pytree_node
@attrs.define
class ShortConvState:
    """The last ``K − 1`` inputs of a causal short convolution, ``[B, K − 1, C]`` (oldest first)."""

    tail: Float[Tensor, "_b _k _c"]


def init_short_conv(
    cfg: ShortConvConfig,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> ShortConvParams:
    """Uniform in ``±1/√fan_in`` (``fan_in = K^ndim``), as ``nn.Conv`` does; zero bias."""
    shape = (cfg.channels, *([cfg.kernel_size] * cfg.ndim))
    bound = 1.0 / math.sqrt(cfg.kernel_size**cfg.ndim)
    weight = (torch.rand(shape, generator=generator, dtype=dtype or torch.float32) * 2 - 1) * bound
    bias = torch.zeros(cfg.channels, dtype=weight.dtype) if cfg.bias else None
    params = ShortConvParams(weight=weight, bias=bias)
    return torch.utils._pytree.tree_map(lambda t: t.to(device), params)


def _conv_fn(ndim: int):
    return (F.conv1d, F.conv2d, F.conv3d)[ndim - 1]


def _check(where: str, params: ShortConvParams, x: Tensor) -> int:
    nd = params.weight.ndim - 1
    if x.ndim != nd + 2:
        raise ValueError(
            f"{where}: x must be [B, *spatial, C] with {nd} spatial axes (the weight's rank "
            f"{params.weight.ndim} minus one), got x of rank {x.ndim} (shape {tuple(x.shape)})"
        )
    if x.shape[-1] != params.weight.shape[0]:
        raise ValueError(
            f"{where}: x's last axis must be the {params.weight.shape[0]} channels of the weight, "
            f"got x of shape {tuple(x.shape)}"
        )
    return nd


@shapecheck
def short_conv(
    params: ShortConvParams,
    x: Float[Tensor, "b *spatial c"],
    *,
    causal: bool = True,
    circular: bool | tuple[bool, ...] = False,
) -> Float[Tensor, "b *spatial c"]:
    """Depthwise short convolution of channels-last ``x``.

    Args:
        params: weight ``[C, *K]`` and optional bias.
        x: ``[B, *spatial, C]``.
        causal: zero left padding of ``K − 1`` (1D only); otherwise "same" padding.
        circular: "same" case only: wrap around instead of zero padding, on every axis or per
            axis (a tuple with one flag per spatial axis). With it, a layer whose long
            convolution is circular stays exactly shift-equivariant.

    Example:
        >>> p = ShortConvParams(weight=torch.tensor([[0.5, 1.0]]))
        >>> short_conv(p, torch.tensor([[[1.0], [2.0], [3.0]]]))[..., 0]
        tensor([[1.0000, 2.5000, 4.0000]])
    """
    nd = _check("short_conv", params, x)
    if causal and nd != 1:
        raise ValueError(f"short_conv: causal=True needs one spatial axis, got {nd}")
    weight = params.weight
    channels = weight.shape[0]
    xc = x.movedim(-1, 1)
    w = weight.unsqueeze(1).to(xc.dtype)
    b = None if params.bias is None else params.bias.to(xc.dtype)
    wrap = (circular,) * nd if isinstance(circular, bool) else tuple(circular)
    if len(wrap) != nd:
        raise ValueError(
            f"short_conv: circular needs one flag per spatial axis ({nd}), got {circular!r}"
        )
    if causal and any(wrap):
        raise ValueError("short_conv: causal=True cannot be circular")
    if causal:
        y = F.conv1d(F.pad(xc, (weight.shape[-1] - 1, 0)), w, b, groups=channels)
    elif any(wrap):
        y = _conv_fn(nd)(_same_pad(xc, weight.shape[1:], wrap), w, b, groups=channels)
    else:
        y = _conv_fn(nd)(xc, w, b, padding="same", groups=channels)
    return y.movedim(1, -1)


def _same_pad(x: Tensor, taps: tuple[int, ...], wrap: tuple[bool, ...]) -> Tensor:
    """Pad ``[B, C, *spatial]`` as PyTorch's ``padding="same"`` does (for an even ``K`` one
    more tap looks forward than back): wrapped on the ``wrap`` axes, zeros on the others."""
    pads = [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in taps]
    circ = [p if w else (0, 0) for p, w in zip(pads, wrap, strict=True)]
    zero = [(0, 0) if w else p for p, w in zip(pads, wrap, strict=True)]
    # F.pad lists the last axis first.
    x = F.pad(x, [n for pair in reversed(circ) for n in pair], mode="circular")
    return F.pad(x, [n for pair in reversed(zero) for n in pair])


def init_short_conv_state(
    batch: int,
    channels: int,
    kernel_size: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> ShortConvState:
    """The state before the first token: ``K − 1`` zeros (the causal zero padding)."""
    return ShortConvState(
        tail=torch.zeros(batch, kernel_size - 1, channels, device=device, dtype=dtype)
    )


@shapecheck
def short_conv_decode(
    params: ShortConvParams, x: Float[Tensor, "b t c"], state: ShortConvState
) -> tuple[Float[Tensor, "b t c"], ShortConvState]:
    """Causal short convolution of a chunk that continues the sequence in ``state``.

    Feeding a sequence in chunks (of length 1 for token-by-token decoding) gives the same outputs
    as :func:`short_conv` on the whole sequence; the new state holds the last ``K − 1`` inputs.
    """
    _check("short_conv_decode", params, x)
    k = params.weight.shape[-1]
    if state.tail.shape[1] != k - 1:
        raise ValueError(
            f"short_conv_decode: state.tail must hold K - 1 = {k - 1} inputs, got shape "
            f"{tuple(state.tail.shape)}"
        )
    full = torch.cat([state.tail.to(x.dtype), x], dim=1)
    xc = full.movedim(-1, 1)
    w = params.weight.unsqueeze(1).to(x.dtype)
    b = None if params.bias is None else params.bias.to(x.dtype)
    y = F.conv1d(xc, w, b, groups=params.weight.shape[0]).movedim(1, -1)
    new_tail = full.narrow(1, full.shape[1] - (k - 1), k - 1)
    return y, ShortConvState(tail=new_tail)
