"""Hyena (1D/2D/3D, causal in 1D): gated long convolution with an implicit kernel.

On already-projected ``q, k, v`` ``[B, *spatial, C]`` (Poli et al. 2023; the N-D form of
nvSubquadratic's HyenaND):

1. ``[q; k; v] ← short_conv([q; k; v])`` — depthwise on ``3C`` channels (causal in 1D causal,
   wrapped around on the axes where the long convolution is circular);
2. optional QK-norm of ``q`` and ``k`` (``"l2"`` or ``"rms"``);
3. ``z = q ⊙ σ(k)``, then an optional norm of ``z``;
4. ``h = K ∗ z + D ⊙ z`` — FFT long convolution with the implicit kernel ``K``
   (:mod:`subq.functional.implicit`) and a per-channel skip ``D``;
5. ``y = h ⊙ σ₂(v)``, then an optional output norm.

Causal 1D Hyena also decodes token by token (:func:`init_hyena_state`, :func:`hyena_step`),
matching the full forward exactly when the kernel of a length ``L`` is the first ``L`` taps of the
kernel used for decoding — true with ``length_policy="extrapolate"`` (the default).

FLOPs (:func:`hyena_flop_count`): one multiply-add = 2 FLOPs, elementwise ops 1 FLOP each, a real
FFT of size ``n`` costs ``2.5 n log₂ n``; counted per sample (batch 1), the kernel network once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import torch
from attrs import validators as v
from torch import Tensor

from subq import _validators as check
from subq._pytree import pytree_node
from subq._typing import Float, Int, shapecheck
from subq.functional.conv import (
    ShortConvConfig,
    ShortConvParams,
    ShortConvState,
    init_short_conv,
    init_short_conv_state,
    short_conv,
    short_conv_decode,
)
from subq.functional.fftconv import fft_conv, fft_conv_flops, normalize_modes
from subq.functional.implicit import (
    KernelNetBuffers,
    KernelNetConfig,
    KernelNetParams,
    LinearParams,
    check_kernel_config,
    film_from_conditioning,
    implicit_kernel,
    init_film,
    init_kernel_net,
    kernel_net_flops,
    kernel_taps,
)
from subq.functional.norm import (
    LayerNormConfig,
    LayerNormParams,
    RMSNormConfig,
    RMSNormParams,
    init_layer_norm,
    init_rms_norm,
    l2_norm,
    layer_norm,
    rms_norm,
)
from subq.ops.fftconv import gated_fft_conv_op, value_gate_fn

__all__ = [
    "HyenaConfig",
    "HyenaParams",
    "HyenaState",
    "hyena",
    "hyena_flop_count",
    "hyena_step",
    "init_hyena",
    "init_hyena_state",
]

NORMS = ("none", "rms", "layer")
QK_NORMS = ("none", "l2", "rms")
GATES = ("sigmoid", "silu", "identity")


def _sizes(value: int | Sequence[int]) -> tuple[int, ...]:
    return (int(value),) if isinstance(value, int) else tuple(int(s) for s in value)


@attrs.frozen(kw_only=True)
class HyenaConfig:
    """Hyena mixer configuration.

    Attributes:
        hidden_dim: channels ``C`` of q, k, v and the output.
        ndim: number of spatial axes (1 to 3).
        mode: long-convolution boundary: ``"causal"`` (1D), ``"zero"``, ``"circular"``, or one
            of the last two per axis. Default: causal in 1D, zero otherwise.
        causal: shorthand for ``mode="causal"`` (True) or ``"zero"`` (False); must agree with
            ``mode`` when both are given.
        max_size: construction size per axis of the implicit kernel grid (an int for all axes).
        short_kernel_size: taps of the short convolution per axis.
        filter: the implicit kernel network; default: the Hyena positional-MLP filter with the
            exponential mask, sized for ``hidden_dim``, ``ndim`` and ``max_size``.
        qk_norm: ``"none"``, ``"l2"`` or ``"rms"`` on ``q`` and ``k`` after the short conv.
        norm: ``"none"``, ``"rms"`` or ``"layer"`` on ``z`` before the long convolution.
        out_norm: ``"none"``, ``"rms"`` or ``"layer"`` on the output.
        value_gate: ``σ₂``: ``"sigmoid"``, ``"silu"`` or ``"identity"``.
        chunk_size: channel chunk of the FFT convolution (bounds peak memory), or None.
        cond_dim: width of a FiLM conditioning vector of the kernel network (per-sample
            kernels), or None.
    """

    hidden_dim: int = attrs.field(validator=check.positive_int)
    ndim: int = attrs.field(default=1, validator=v.in_((1, 2, 3)))
    mode: tuple[str, ...] | None = attrs.field(
        default=None,
        converter=lambda m: (m,) if isinstance(m, str) else (None if m is None else tuple(m)),
    )
    causal: bool | None = attrs.field(default=None, validator=v.optional(v.instance_of(bool)))
    max_size: tuple[int, ...] = attrs.field(default=1024, converter=_sizes)
    short_kernel_size: int = attrs.field(default=3, validator=check.positive_int)
    filter: KernelNetConfig | None = attrs.field(default=None)
    qk_norm: str = attrs.field(default="none", validator=v.in_(QK_NORMS))
    norm: str = attrs.field(default="none", validator=v.in_(NORMS))
    out_norm: str = attrs.field(default="none", validator=v.in_(NORMS))
    value_gate: str = attrs.field(default="sigmoid", validator=v.in_(GATES))
    chunk_size: int | None = attrs.field(default=None, validator=v.optional(check.positive_int))
    cond_dim: int | None = attrs.field(default=None, validator=v.optional(check.positive_int))

    def __attrs_post_init__(self) -> None:
        set_ = object.__setattr__
        mode = self.mode
        if self.causal is not None:
            implied = ("causal",) if self.causal else ("zero",)
            if mode is None:
                mode = implied
            elif (mode == ("causal",)) != self.causal:
                raise ValueError(
                    f"HyenaConfig: causal={self.causal} contradicts mode={self.mode!r}"
                )
        if mode is None:
            mode = ("causal",) if self.ndim == 1 else ("zero",)
        set_(
            self,
            "mode",
            normalize_modes(
                mode[0] if len(mode) == 1 else mode, self.ndim, where="HyenaConfig.mode"
            ),
        )
        set_(self, "causal", self.mode == ("causal",))
        if len(self.max_size) == 1:
            set_(self, "max_size", self.max_size * self.ndim)
        if len(self.max_size) != self.ndim or min(self.max_size) < 1:
            raise ValueError(
                f"HyenaConfig.max_size: expected {self.ndim} positive sizes (ndim), got {self.max_size}"
            )
        if self.filter is None:
            set_(
                self,
                "filter",
                KernelNetConfig(
                    channels=self.hidden_dim,
                    ndim=self.ndim,
                    kind="hyena",
                    construction_size=self.max_size,
                ),
            )
        else:
            check_kernel_config("HyenaConfig.filter", self.filter, self.hidden_dim, self.ndim)

    @property
    def short_conv_config(self) -> ShortConvConfig:
        """The short convolution over the ``3C`` channels of ``[q; k; v]``."""
        return ShortConvConfig(
            channels=3 * self.hidden_dim,
            kernel_size=self.short_kernel_size,
            ndim=self.ndim,
            causal=self.causal,
        )


NormParams = RMSNormParams | LayerNormParams


@pytree_node
@attrs.define
class HyenaParams:
    """Short conv on ``[q; k; v]``, kernel network, skip ``D`` and the optional norms."""

    short_conv: ShortConvParams
    filter: KernelNetParams
    skip: Float[Tensor, " c"]
    qk_norm: RMSNormParams | None = None
    norm: NormParams | None = None
    out_norm: NormParams | None = None
    film: LinearParams | None = None


def _init_norm(kind: str, dim: int, device, dtype) -> NormParams | None:
    if kind == "rms":
        return init_rms_norm(RMSNormConfig(dim=dim), device=device, dtype=dtype)
    if kind == "layer":
        return init_layer_norm(LayerNormConfig(dim=dim), device=device, dtype=dtype)
    return None


def init_hyena(
    cfg: HyenaConfig,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> HyenaParams:
    """Short conv (``nn.Conv`` init), kernel network (its init), ``D ~ N(0, 1)``, unit norms."""
    c = cfg.hidden_dim
    return HyenaParams(
        short_conv=init_short_conv(
            cfg.short_conv_config, generator=generator, device=device, dtype=dtype
        ),
        filter=init_kernel_net(cfg.filter, generator=generator, device=device, dtype=dtype),
        skip=torch.randn(c, generator=generator, dtype=dtype or torch.float32).to(device),
        qk_norm=_init_norm("rms", c, device, dtype) if cfg.qk_norm == "rms" else None,
        norm=_init_norm(cfg.norm, c, device, dtype),
        out_norm=_init_norm(cfg.out_norm, c, device, dtype),
        film=init_film(cfg.filter, cfg.cond_dim, device=device, dtype=dtype),
    )


def _film(params: HyenaParams, cfg: HyenaConfig, conditioning: Tensor | None):
    return film_from_conditioning(params.film if cfg.cond_dim is not None else None, conditioning)


def _apply_norm(kind: str, params: NormParams | None, x: Tensor) -> Tensor:
    if kind == "rms":
        return rms_norm(params, x)
    if kind == "layer":
        return layer_norm(params, x)
    return x


def _pre_conv(params: HyenaParams, q: Tensor, k: Tensor, cfg: HyenaConfig) -> Tensor:
    """Steps 2–3: QK-norm, ``z = q ⊙ σ(k)``, norm of ``z``."""
    if cfg.qk_norm == "l2":
        q, k = l2_norm(q), l2_norm(k)
    elif cfg.qk_norm == "rms":
        q, k = rms_norm(params.qk_norm, q), rms_norm(params.qk_norm, k)
    z = q * torch.sigmoid(k)
    return _apply_norm(cfg.norm, params.norm, z)


def _check_inputs(where: str, cfg: HyenaConfig, q: Tensor, k: Tensor, v: Tensor, nd: int) -> None:
    if not (q.shape == k.shape == v.shape):
        raise ValueError(
            f"{where}: query, key and value must have the same shape, got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.ndim != nd + 2:
        raise ValueError(
            f"{where}: inputs must be [B, *spatial, C] with {nd} spatial axes (cfg.ndim), got "
            f"rank {q.ndim} (shape {tuple(q.shape)})"
        )
    if q.shape[-1] != cfg.hidden_dim:
        raise ValueError(
            f"{where}: inputs' last axis must be hidden_dim={cfg.hidden_dim}, got shape "
            f"{tuple(q.shape)}"
        )


@shapecheck
def hyena(
    params: HyenaParams,
    query: Float[Tensor, "b *spatial c"],
    key: Float[Tensor, "b *spatial c"],
    value: Float[Tensor, "b *spatial c"],
    *,
    cfg: HyenaConfig,
    buffers: KernelNetBuffers | None = None,
    conditioning: Float[Tensor, "b cond"] | None = None,
    backend: str | None = None,
) -> Float[Tensor, "b *spatial c"]:
    """The Hyena mixer on projected ``query``, ``key``, ``value`` (channels last).

    Args:
        params: from :func:`init_hyena`.
        query: ``[B, *spatial, C]``; ``key`` and ``value`` alike.
        cfg: the configuration (static).
        buffers: frozen kernel-network buffers (only for an ``"rff"`` filter).
        conditioning: ``[B, cond_dim]`` FiLM input of the kernel network (per-sample kernels);
            only with ``cfg.cond_dim``, ignored otherwise.
        backend: force a backend of the ``gated_fft_conv`` op (no QK-norm and no norm) or of
            the ``fft_conv`` op.

    Returns:
        ``[B, *spatial, C]`` in the inputs' dtype.
    """
    _check_inputs("hyena", cfg, query, key, value, cfg.ndim)
    c = cfg.hidden_dim
    u = short_conv(
        params.short_conv,
        torch.cat([query, key, value], dim=-1),
        causal=cfg.causal,
        circular=tuple(m == "circular" for m in cfg.mode),
    )
    q, k, v = u.split(c, dim=-1)
    spatial = tuple(query.shape[1:-1])
    kernel = implicit_kernel(
        params.filter,
        spatial,
        cfg.mode,
        cfg=cfg.filter,
        buffers=buffers,
        film=_film(params, cfg, conditioning),
    )
    if cfg.qk_norm == "none" and cfg.norm == "none":
        # Nothing between the gates and the convolution: one op with the gates folded in.
        facts = {
            "device": q.device,
            "dtype": q.dtype,
            "modes": cfg.mode,
            "shape": tuple(q.shape),
            "length": q.shape[1],
            "spatial": tuple(q.shape[1:-1]),
            "kernel_dtype": kernel.dtype,
        }
        y = gated_fft_conv_op.select(facts, backend)(
            q, k, v, kernel, params.skip, cfg.mode, cfg.value_gate, cfg.chunk_size
        )
    else:
        z = _pre_conv(params, q, k, cfg)
        h = fft_conv(
            z,
            kernel,
            params.skip,
            mode=cfg.mode,
            channels_last=True,
            chunk_size=cfg.chunk_size,
            backend=backend,
        )
        y = h * value_gate_fn(cfg.value_gate, v)
    return _apply_norm(cfg.out_norm, params.out_norm, y)


@pytree_node
@attrs.define
class HyenaState:
    """Decoding state of causal 1D Hyena.

    Attributes:
        conv: the short convolution's last ``K − 1`` inputs ``[B, K − 1, 3C]``.
        history: every ``z`` so far, ``[B, max_len, C]`` (zeros after ``position``).
        kernel: the long-convolution kernel for ``max_len`` taps, ``[C, max_len]`` (or
            ``[B, C, max_len]`` with FiLM conditioning).
        position: index of the next token (0-d integer tensor).
    """

    conv: ShortConvState
    history: Float[Tensor, "b l c"]
    kernel: Float[Tensor, "*b c l"]
    position: Int[Tensor, ""]


def init_hyena_state(
    params: HyenaParams,
    cfg: HyenaConfig,
    batch: int,
    max_len: int,
    *,
    buffers: KernelNetBuffers | None = None,
    conditioning: Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> HyenaState:
    """The state before the first token, for sequences of up to ``max_len`` tokens.

    The kernel is computed once here (``max_len`` taps) and reused by every step.
    """
    if not cfg.causal:
        raise ValueError(f"init_hyena_state: decoding needs a causal 1D Hyena, got mode={cfg.mode}")
    device = params.skip.device
    dtype = dtype or params.skip.dtype
    kernel = implicit_kernel(
        params.filter,
        (max_len,),
        ("causal",),
        cfg=cfg.filter,
        buffers=buffers,
        film=_film(params, cfg, conditioning),
    )
    return HyenaState(
        conv=init_short_conv_state(
            batch, 3 * cfg.hidden_dim, cfg.short_kernel_size, device=device, dtype=dtype
        ),
        history=torch.zeros(batch, max_len, cfg.hidden_dim, device=device, dtype=kernel.dtype),
        kernel=kernel,
        position=torch.zeros((), dtype=torch.long, device=device),
    )


@shapecheck
def hyena_step(
    params: HyenaParams,
    query: Float[Tensor, "b c"],
    key: Float[Tensor, "b c"],
    value: Float[Tensor, "b c"],
    state: HyenaState,
    *,
    cfg: HyenaConfig,
) -> tuple[Float[Tensor, "b c"], HyenaState]:
    """One token of causal Hyena: ``(y_t, new_state)``; equal to the full forward's ``y[t]``.

    The long convolution is a direct sum over the history (``O(max_len · C)`` per token); past
    ``max_len`` tokens the output is undefined (the history has no room).
    """
    if query.shape[-1] != cfg.hidden_dim:
        raise ValueError(
            f"hyena_step: inputs' last axis must be hidden_dim={cfg.hidden_dim}, got shape "
            f"{tuple(query.shape)}"
        )
    c = cfg.hidden_dim
    u, conv = short_conv_decode(
        params.short_conv, torch.cat([query, key, value], dim=-1).unsqueeze(1), state.conv
    )
    q, k, v = u.squeeze(1).split(c, dim=-1)
    z = _pre_conv(params, q, k, cfg)
    max_len = state.history.shape[1]
    steps = torch.arange(max_len, device=z.device)
    history = torch.where(
        (steps == state.position).unsqueeze(-1),
        z.to(state.history.dtype).unsqueeze(1),
        state.history,
    )
    # y_t = Σ_{s ≤ t} K[t − s] z_s: gather the reversed kernel, zero for s > t.
    lags = state.position - steps
    taps = state.kernel[..., lags.clamp(min=0)] * (lags >= 0)  # [(B,) C, max_len]
    h = (history * taps.transpose(-1, -2)).sum(1) + z.to(history.dtype) * params.skip.to(
        history.dtype
    )
    y = h.to(z.dtype) * value_gate_fn(cfg.value_gate, v)
    y = _apply_norm(cfg.out_norm, params.out_norm, y)
    return y, HyenaState(
        conv=conv, history=history, kernel=state.kernel, position=state.position + 1
    )


def hyena_flop_count(cfg: HyenaConfig, spatial_dims: Sequence[int], inference: bool = False) -> int:
    """FLOPs of one sample's forward (one multiply-add = 2 FLOPs; see the module docstring).

    ``inference=True`` counts one decoding step at position ``T − 1`` (1D causal: a direct sum
    over the history) instead of the whole sequence.
    """
    spatial = tuple(int(s) for s in spatial_dims)
    if len(spatial) != cfg.ndim:
        raise ValueError(
            f"hyena_flop_count: expected {cfg.ndim} spatial dims (cfg.ndim), got {spatial}"
        )
    c = cfg.hidden_dim
    tokens = math.prod(spatial)
    taps = cfg.short_kernel_size**cfg.ndim
    per_token = 2 * 3 * c * taps  # short conv
    per_token += 4 * c  # sigmoid(k) (counted 1), q ⊙ σ(k), σ₂(v), h ⊙ σ₂(v)
    per_token += 3 * c  # skip multiply-add and the sum with the convolution
    norms = sum(k != "none" for k in (cfg.norm, cfg.out_norm)) + 2 * (cfg.qk_norm != "none")
    per_token += norms * 4 * c
    if inference:
        if not cfg.causal:
            raise ValueError("hyena_flop_count: inference=True needs a causal 1D Hyena")
        return int(per_token + 2 * c * tokens)
    ktaps = kernel_taps(spatial, cfg.mode)
    conv = fft_conv_flops(c, spatial, ktaps, cfg.mode)  # kernel FFT, rfft(z), product, irfft
    return int(per_token * tokens + conv + kernel_net_flops(cfg.filter, ktaps))
