"""Normalisations: L2 (QK-norm), RMSNorm and LayerNorm as pure functions.

All statistics are computed in float32 whatever the input dtype; outputs return in the input dtype.
``RMSNorm`` and ``LayerNorm`` normalise over the last axis (``channels_first=False``) or over axis 1
of a ``[B, C, *spatial]`` tensor (``channels_first=True``). With ``num_heads`` set, the weight is
``[heads, head_dim]`` and the input's last two axes are ``(heads, head_dim)``: a per-head norm,
normalising over ``head_dim`` only (the QK-norm of OLMo-2/Qwen-3 style attention).
"""

from __future__ import annotations

import attrs
import torch
from attrs import validators as v

from subq import _validators as check
from subq._pytree import pytree_node
from subq._typing import Float, Tensor, shapecheck
from subq.ops.norm import layer_norm_op, rms_norm_op

__all__ = [
    "LayerNormConfig",
    "LayerNormParams",
    "RMSNormConfig",
    "RMSNormParams",
    "apply_qk_norm",
    "init_layer_norm",
    "init_rms_norm",
    "l2_norm",
    "layer_norm",
    "rms_norm",
]


def l2_norm(x: Float[Tensor, "..."], dim: int = -1, eps: float = 1e-12) -> Float[Tensor, "..."]:
    """``x / max(‖x‖₂, eps)`` along ``dim``, computed in float32, returned in ``x.dtype``.

    Example:
        >>> l2_norm(torch.tensor([3.0, 4.0]))
        tensor([0.6000, 0.8000])
    """
    # At least float32 (float64 stays float64, so float64 oracles are exact).
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    norm = torch.linalg.vector_norm(xf, dim=dim, keepdim=True)
    return (xf / norm.clamp_min(eps)).to(x.dtype)


def apply_qk_norm(
    query: Float[Tensor, "..."], key: Float[Tensor, "..."], dim: int = -1, eps: float = 1e-12
) -> tuple[Float[Tensor, "..."], Float[Tensor, "..."]]:
    """L2-normalise query and key along ``dim`` (QK-norm without learnable parameters).

    The dot product of the results lies in [-1, 1]: attention after it needs a scale (see the
    ``scale`` option of :func:`subq.functional.attention.attention`), or it is nearly uniform.
    """
    return l2_norm(query, dim=dim, eps=eps), l2_norm(key, dim=dim, eps=eps)


@attrs.frozen(kw_only=True)
class _NormConfig:
    """Fields shared by RMSNorm and LayerNorm configs."""

    dim: int = attrs.field(validator=[v.instance_of(int), check.positive])
    eps: float = attrs.field(default=1e-6, validator=check.positive)
    affine: bool = attrs.field(default=True, validator=v.instance_of(bool))
    channels_first: bool = attrs.field(default=False, validator=v.instance_of(bool))
    num_heads: int | None = attrs.field(default=None, validator=check.optional(check.positive_int))

    def __attrs_post_init__(self) -> None:
        if self.num_heads is not None and self.channels_first:
            raise ValueError(
                f"{type(self).__name__}: num_heads (per-head norm) needs channels_first=False, "
                f"got channels_first=True"
            )

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.dim,) if self.num_heads is None else (self.num_heads, self.dim)


@attrs.frozen(kw_only=True)
class RMSNormConfig(_NormConfig):
    """RMSNorm over ``dim`` channels (per head when ``num_heads`` is set)."""


@attrs.frozen(kw_only=True)
class LayerNormConfig(_NormConfig):
    """LayerNorm over ``dim`` channels (per head when ``num_heads`` is set).

    Attributes:
        bias: learn a bias as well as the weight (only with ``affine``).
    """

    eps: float = attrs.field(default=1e-5, validator=check.positive)
    bias: bool = attrs.field(default=True, validator=v.instance_of(bool))


@pytree_node
@attrs.define
class RMSNormParams:
    """RMSNorm weight; ``None`` without ``affine``. ``[heads, head_dim]`` for a per-head norm."""

    weight: Float[Tensor, "*heads c"] | None = None


@pytree_node
@attrs.define
class LayerNormParams:
    """LayerNorm weight and bias (each ``None`` when not learned)."""

    weight: Float[Tensor, "*heads c"] | None = None
    bias: Float[Tensor, "*heads c"] | None = None


def init_rms_norm(
    cfg: RMSNormConfig,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> RMSNormParams:
    """Ones for the weight (the norm starts as the identity scale). ``generator`` is unused."""
    del generator
    if not cfg.affine:
        return RMSNormParams()
    return RMSNormParams(weight=torch.ones(cfg.weight_shape, device=device, dtype=dtype))


def init_layer_norm(
    cfg: LayerNormConfig,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> LayerNormParams:
    """Ones for the weight, zeros for the bias. ``generator`` is unused."""
    del generator
    if not cfg.affine:
        return LayerNormParams()
    weight = torch.ones(cfg.weight_shape, device=device, dtype=dtype)
    bias = torch.zeros(cfg.weight_shape, device=device, dtype=dtype) if cfg.bias else None
    return LayerNormParams(weight=weight, bias=bias)


def _check_weight(fn: str, x: Tensor, weight: Tensor | None) -> None:
    """The weight must match x's trailing axes: ``[C]`` or ``[heads, head_dim]``."""
    if weight is not None and tuple(x.shape[x.ndim - weight.ndim :]) != tuple(weight.shape):
        raise ValueError(
            f"{fn}: x's trailing axes must equal the weight shape {tuple(weight.shape)} "
            f"(channels last), got x of shape {tuple(x.shape)}"
        )


@shapecheck
def rms_norm(
    params: RMSNormParams,
    x: Float[Tensor, "..."],
    *,
    eps: float = 1e-6,
    channels_first: bool = False,
    backend: str | None = None,
) -> Float[Tensor, "..."]:
    """``x / sqrt(mean(x²) + eps) * weight`` over the channel axis.

    Args:
        params: the weight (or ``None`` for a norm without scale).
        x: ``[..., C]``, ``[..., heads, head_dim]`` for a per-head weight, or ``[B, C, *spatial]``
            with ``channels_first``.
        eps: added to the mean square.
        channels_first: normalise over axis 1 instead of the last axis.
        backend: force a backend of the ``rms_norm`` op (``subq.ops.explain("rms_norm", ...)``
            lists them); ``None`` lets the dispatcher choose.

    Example:
        >>> p = init_rms_norm(RMSNormConfig(dim=4))
        >>> rms_norm(p, torch.tensor([[3.0, -3.0, 3.0, -3.0]])).round(decimals=4)
        tensor([[ 1., -1.,  1., -1.]])
    """
    if channels_first:
        # Move channels last so every backend sees one contiguous reduction axis.
        moved = x.movedim(1, -1)
        return rms_norm(params, moved, eps=eps, backend=backend).movedim(-1, 1)
    _check_weight("rms_norm", x, params.weight)
    facts = {
        "device": x.device,
        "dtype": x.dtype,
        "n": x.shape[-1],
        "weight_ndim": 0 if params.weight is None else params.weight.ndim,
    }
    return rms_norm_op.select(facts, backend)(x, params.weight, eps)


@shapecheck
def layer_norm(
    params: LayerNormParams,
    x: Float[Tensor, "..."],
    *,
    eps: float = 1e-5,
    channels_first: bool = False,
    backend: str | None = None,
) -> Float[Tensor, "..."]:
    """``(x - mean) / sqrt(var + eps) * weight + bias`` over the channel axis, in float32.

    Args:
        params: weight and bias (either may be ``None``).
        x: as for :func:`rms_norm`.
        eps: added to the variance.
        channels_first: normalise over axis 1 instead of the last axis.
        backend: force a backend of the ``layer_norm`` op; ``None`` lets the dispatcher choose.
    """
    if channels_first:
        return layer_norm(params, x.movedim(1, -1), eps=eps, backend=backend).movedim(-1, 1)
    weight, bias = params.weight, params.bias
    _check_weight("layer_norm", x, weight)
    _check_weight("layer_norm", x, bias)
    # Normalise over the last axis only; a [heads, head_dim] weight then scales per head.
    # weight_ndim: 0 without a weight, 2 if either parameter is per head.
    weight_ndim = 0 if weight is None else max(weight.ndim, 0 if bias is None else bias.ndim)
    facts = {"device": x.device, "dtype": x.dtype, "n": x.shape[-1], "weight_ndim": weight_ndim}
    return layer_norm_op.select(facts, backend)(x, weight, bias, eps)
