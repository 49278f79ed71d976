"""Implicit convolution kernels: a small network over grid coordinates, times an optional mask.

A kernel is a pure function of ``(params, spatial sizes, boundary modes)``. Each spatial axis of
input length ``N`` gets a grid of tap offsets ``δ`` (the taps :func:`subq.functional.fftconv.fft_conv`
expects for that mode) and coordinates ``p = δ / s``:

* ``"causal"``: ``N`` taps, lags ``δ = 0 … N − 1``, ``s = S − 1`` (so ``p ∈ [0, 1]`` at ``N = S``);
* ``"zero"``: the double grid, ``2N − 1`` taps, ``δ = −(N − 1) … N − 1``, ``s = S − 1``
  (``p ∈ [−1, 1]``);
* ``"circular"``: the single grid, ``N`` taps, ``δ = j − ⌊N/2⌋``, ``s = (S − 1)/2`` (for odd ``N``
  this is ``linspace(−1, 1, N)``; the tap at offset 0 sits at ``p = 0`` for every ``N``).

``S`` depends on ``length_policy``: ``"extrapolate"`` (default) fixes ``S`` to the construction
size, so a tap at a given offset always sees the same coordinate — an input shorter than the
construction size gets a crop of the same kernel (this makes causal decoding agree with the full
forward), and a longer one evaluates the network beyond ±1. ``"resample"`` sets ``S = N``, so the
kernel always spans ``[−1, 1]`` and is resampled at the input's resolution. Nothing is cached or
grown during forward.

Networks (``kind``):

* ``"hyena"``: the Hyena positional-MLP filter (Poli et al. 2023): features ``[p, cos(π f p),
  sin(π f p)]`` for ``f = 1 … bands`` per axis → ``Linear`` → ``sin(ω ⊙ ·)`` (``ω`` learnable per
  unit, initialised to ``omega_0``) → … → ``Linear`` (no bias), usually with the exponential mask
  (the "exponential modulation");
* ``"siren"``: SIREN (Sitzmann et al. 2020): ``sin(ω₀ (W p + b))``, then hidden layers
  ``sin(ω_h (W h + b))``, then a linear output. ``hidden_omega_0`` multiplies the hidden
  pre-activations in the forward pass (the init divides by it, as in the paper), so changing it
  changes the function;
* ``"rff"``: random Fourier features ``[cos(2π B p), sin(2π B p)]``, ``B ~ N(0, σ²)``, then a GELU
  MLP. ``B`` lives in :class:`KernelNetBuffers`, never in the params: it receives no gradient and
  no optimiser update.

Masks (``mask``): ``"exponential"``: ``m(p) = exp(−Σ_d |p_d| r_{d,c}) + shift``; ``"gaussian"``:
``m(p) = exp(−½ Σ_d (p_d / σ_{d,c})²)``. Rates and widths are learnable and bounded:
``r = lo + (hi − lo)·sigmoid(raw)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import attrs
import torch
import torch.nn.functional as F
from attrs import validators as v
from torch import Tensor

from subq import _validators as check
from subq._pytree import pytree_node
from subq._typing import Float, shapecheck

__all__ = [
    "KernelNetBuffers",
    "KernelNetConfig",
    "KernelNetParams",
    "LinearParams",
    "check_kernel_config",
    "film_from_conditioning",
    "implicit_kernel",
    "init_film",
    "init_kernel_net",
    "init_kernel_net_buffers",
    "kernel_grid",
    "kernel_mask",
    "kernel_net",
    "kernel_net_flops",
    "kernel_taps",
]

KINDS = ("hyena", "siren", "rff")
MASKS = ("none", "exponential", "gaussian")
POLICIES = ("extrapolate", "resample")


@pytree_node
@attrs.define
class LinearParams:
    """``y = x Wᵀ + b`` with ``W`` ``[out, in]`` (``nn.Linear`` layout) and optional ``b``."""

    weight: Float[Tensor, "_out _in"]
    bias: Float[Tensor, " _out"] | None = None


def _linear(p: LinearParams, x: Tensor) -> Tensor:
    # Kernels are generated in x's dtype (float32 or float64), whatever the params' dtype.
    bias = None if p.bias is None else p.bias.to(x.dtype)
    return F.linear(x, p.weight.to(x.dtype), bias)


def _sizes(value: int | Sequence[int] | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    return (int(value),) if isinstance(value, int) else tuple(int(s) for s in value)


@attrs.frozen(kw_only=True)
class KernelNetConfig:
    """An implicit kernel network and its mask.

    Attributes:
        channels: output channels ``C`` (one kernel per channel).
        ndim: number of spatial axes (coordinate dimension).
        kind: ``"hyena"``, ``"siren"`` or ``"rff"``.
        hidden: width of the hidden layers.
        num_layers: number of linear layers, including the output layer (≥ 2).
        omega_0: SIREN first-layer frequency; initial ``ω`` of the Hyena sine activations.
        hidden_omega_0: SIREN hidden-layer frequency.
        bands: Hyena sinusoidal feature bands per axis.
        rff_features: random Fourier features (cos and sin pairs) for ``"rff"``.
        rff_sigma: standard deviation of the random frequencies.
        mask: ``"none"``, ``"exponential"`` or ``"gaussian"``.
        mask_init: initial rates (exponential) or widths (gaussian), spread linearly over the
            channels from the first to the second value.
        mask_bounds: lower and upper bound of the rates or widths.
        mask_shift: constant added to the exponential mask (Hyena's ``shift``).
        construction_size: grid size ``S`` per axis used by ``"extrapolate"`` (an int for all
            axes); required with that policy.
        length_policy: ``"extrapolate"`` or ``"resample"`` (see the module docstring).
    """

    channels: int = attrs.field(validator=check.positive_int)
    ndim: int = attrs.field(default=1, validator=v.in_((1, 2, 3)))
    kind: str = attrs.field(default="hyena", validator=v.in_(KINDS))
    hidden: int = attrs.field(default=32, validator=check.positive_int)
    num_layers: int = attrs.field(default=3, validator=check.positive_int)
    omega_0: float = attrs.field(default=1.0, converter=float)
    hidden_omega_0: float = attrs.field(default=30.0, converter=float)
    bands: int = attrs.field(default=4, validator=check.positive_int)
    rff_features: int = attrs.field(default=32, validator=check.positive_int)
    rff_sigma: float = attrs.field(default=10.0, converter=float)
    mask: str = attrs.field(default="exponential", validator=v.in_(MASKS))
    mask_init: tuple[float, float] = attrs.field(
        default=(3.07, 15.35), converter=lambda t: tuple(float(x) for x in t)
    )
    mask_bounds: tuple[float, float] = attrs.field(
        default=(0.0, 32.0), converter=lambda t: tuple(float(x) for x in t)
    )
    mask_shift: float = attrs.field(default=0.0, converter=float)
    construction_size: tuple[int, ...] | None = attrs.field(default=None, converter=_sizes)
    length_policy: str = attrs.field(default="extrapolate", validator=v.in_(POLICIES))

    def __attrs_post_init__(self) -> None:
        name = "KernelNetConfig"
        if self.num_layers < 2:
            raise ValueError(f"{name}.num_layers: expected ≥ 2, got {self.num_layers}")
        if len(self.mask_bounds) != 2 or not self.mask_bounds[0] < self.mask_bounds[1]:
            raise ValueError(
                f"{name}.mask_bounds: expected (lo, hi) with lo < hi, got {self.mask_bounds}"
            )
        lo, hi = self.mask_bounds
        if len(self.mask_init) != 2 or not all(lo < m < hi for m in self.mask_init):
            raise ValueError(
                f"{name}.mask_init: expected two values strictly inside mask_bounds "
                f"{self.mask_bounds}, got {self.mask_init}"
            )
        if self.mask == "gaussian" and lo < 0:
            raise ValueError(f"{name}.mask_bounds: gaussian widths need lo ≥ 0, got {lo}")
        if self.length_policy == "extrapolate":
            if self.construction_size is None:
                raise ValueError(
                    f"{name}.construction_size: required with length_policy='extrapolate', got None"
                )
            if len(self.construction_size) == 1 and self.ndim > 1:
                object.__setattr__(self, "construction_size", self.construction_size * self.ndim)
            if len(self.construction_size) != self.ndim or min(self.construction_size) < 1:
                raise ValueError(
                    f"{name}.construction_size: expected {self.ndim} positive sizes (ndim), got "
                    f"{self.construction_size}"
                )
        if self.omega_0 <= 0 or self.hidden_omega_0 <= 0 or self.rff_sigma <= 0:
            raise ValueError(
                f"{name}: omega_0, hidden_omega_0 and rff_sigma must be > 0, got "
                f"{self.omega_0}, {self.hidden_omega_0}, {self.rff_sigma}"
            )

    @property
    def in_features(self) -> int:
        """Width of the network's input features."""
        if self.kind == "hyena":
            return self.ndim * (1 + 2 * self.bands)
        if self.kind == "rff":
            return 2 * self.rff_features
        return self.ndim


def check_kernel_config(owner: str, value: object, channels: int, ndim: int) -> None:
    """Raise unless ``value`` is a :class:`KernelNetConfig` for ``channels`` channels in ``ndim``-D.

    ``owner`` names the config field in the message (``"HyenaConfig.filter"``).
    """
    if not isinstance(value, KernelNetConfig):
        raise TypeError(f"{owner}: expected a KernelNetConfig, got {type(value)!r}")
    if value.channels != channels or value.ndim != ndim:
        raise ValueError(
            f"{owner}: channels and ndim must equal hidden_dim={channels} and ndim={ndim}, "
            f"got channels={value.channels}, ndim={value.ndim}"
        )


@pytree_node
@attrs.define
class KernelNetParams:
    """Linear layers, Hyena sine frequencies ``[layers − 1, hidden]`` and the raw mask ``[ndim, C]``."""

    layers: tuple[LinearParams, ...]
    sin_freq: Float[Tensor, "n hidden"] | None = None
    mask_raw: Float[Tensor, "nd c"] | None = None


@pytree_node
@attrs.define
class KernelNetBuffers:
    """Non-trainable tensors: the random Fourier frequencies ``[ndim, F]`` (``"rff"`` only)."""

    rff_freqs: Float[Tensor, "nd f"] | None = None


def _uniform(shape, bound, generator, dtype) -> Tensor:
    return (torch.rand(shape, generator=generator, dtype=dtype) * 2 - 1) * bound


def _logit(p: Tensor) -> Tensor:
    return torch.log(p) - torch.log1p(-p)


def init_kernel_net(
    cfg: KernelNetConfig,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> KernelNetParams:
    """Initialise the network (``nn.Linear``'s uniform init; SIREN's init for ``"siren"``)."""
    dtype = dtype or torch.float32
    dims = [cfg.in_features] + [cfg.hidden] * (cfg.num_layers - 1) + [cfg.channels]
    layers = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(dims)):
        last = i == len(dims) - 2
        if cfg.kind == "siren":
            # Sitzmann et al.: first layer U(±1/fan_in); later U(±√(6/fan_in)/ω_h).
            bound = 1.0 / fan_in if i == 0 else math.sqrt(6.0 / fan_in) / cfg.hidden_omega_0
        else:
            bound = 1.0 / math.sqrt(fan_in)
        weight = _uniform((fan_out, fan_in), bound, generator, dtype)
        has_bias = not (last and cfg.kind == "hyena")
        bias = _uniform((fan_out,), 1.0 / math.sqrt(fan_in), generator, dtype) if has_bias else None
        layers.append(LinearParams(weight=weight, bias=bias))
    sin_freq = None
    if cfg.kind == "hyena":
        sin_freq = torch.full((cfg.num_layers - 1, cfg.hidden), cfg.omega_0, dtype=dtype)
    mask_raw = None
    if cfg.mask != "none":
        lo, hi = cfg.mask_bounds
        init = torch.linspace(cfg.mask_init[0], cfg.mask_init[1], cfg.channels, dtype=torch.float64)
        raw = _logit((init - lo) / (hi - lo)).to(dtype)
        mask_raw = raw.expand(cfg.ndim, cfg.channels).clone()
    params = KernelNetParams(layers=tuple(layers), sin_freq=sin_freq, mask_raw=mask_raw)
    return torch.utils._pytree.tree_map(lambda t: t.to(device), params)


def init_kernel_net_buffers(
    cfg: KernelNetConfig,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> KernelNetBuffers:
    """The frozen random frequencies of ``"rff"`` (empty buffers for other kinds)."""
    if cfg.kind != "rff":
        return KernelNetBuffers()
    freqs = torch.randn(
        (cfg.ndim, cfg.rff_features), generator=generator, dtype=dtype or torch.float32
    )
    return KernelNetBuffers(rff_freqs=(freqs * cfg.rff_sigma).to(device))


def kernel_taps(sizes: Sequence[int], modes: Sequence[str]) -> tuple[int, ...]:
    """Taps per axis of the kernel for inputs of ``sizes``: ``2N − 1`` for ``"zero"``, else ``N``."""
    return tuple(2 * int(n) - 1 if m == "zero" else int(n) for n, m in zip(sizes, modes))


def kernel_net_flops(cfg: KernelNetConfig, taps: Sequence[int]) -> int:
    """FLOPs of the network's linear layers at every tap (multiply-add = 2, bias add = 1 each)."""
    dims = [cfg.in_features] + [cfg.hidden] * (cfg.num_layers - 1) + [cfg.channels]
    return math.prod(taps) * sum(2 * a * b + 2 * b for a, b in itertools.pairwise(dims))


def kernel_grid(
    sizes: Sequence[int],
    modes: Sequence[str],
    *,
    construction_size: Sequence[int] | None = None,
    length_policy: str = "extrapolate",
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Float[Tensor, "*k nd"]:
    """Coordinates of the kernel taps for inputs of ``sizes`` under ``modes``, ``[*K, ndim]``.

    See the module docstring for the grid of each mode and the two length policies.

    Example:
        >>> kernel_grid([3], ["zero"], length_policy="resample")[..., 0]
        tensor([-1.0000, -0.5000,  0.0000,  0.5000,  1.0000])
    """
    if length_policy not in POLICIES:
        raise ValueError(
            f"kernel_grid: length_policy must be one of {list(POLICIES)}, got {length_policy!r}"
        )
    if length_policy == "extrapolate" and construction_size is None:
        raise ValueError(
            "kernel_grid: construction_size is required with length_policy='extrapolate'"
        )
    axes = []
    for i, (n, mode) in enumerate(zip(sizes, modes)):
        s = n if length_policy == "resample" else construction_size[i]
        scale = max(s - 1, 1)
        if mode == "causal":
            offsets = torch.arange(n, device=device, dtype=dtype)
        elif mode == "zero":
            offsets = torch.arange(-(n - 1), n, device=device, dtype=dtype)
        elif mode == "circular":
            offsets = torch.arange(n, device=device, dtype=dtype) - n // 2
            scale = max((s - 1) / 2, 0.5)
        else:
            raise ValueError(f"kernel_grid: mode must be causal, zero or circular, got {mode!r}")
        axes.append(offsets / scale)
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(grids, dim=-1)


def _bounded(raw: Tensor, bounds: tuple[float, float]) -> Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * torch.sigmoid(raw)


@shapecheck
def kernel_mask(
    params: KernelNetParams, coords: Float[Tensor, "*k nd"], *, cfg: KernelNetConfig
) -> Float[Tensor, "*k c"]:
    """The mask at ``coords`` (ones for ``mask="none"``)."""
    if cfg.mask == "none" or params.mask_raw is None:
        return coords.new_ones((*coords.shape[:-1], cfg.channels))
    rate = _bounded(params.mask_raw.to(coords.dtype), cfg.mask_bounds)  # [nd, C]
    if cfg.mask == "exponential":
        return torch.exp(-(coords.abs().unsqueeze(-1) * rate).sum(-2)) + cfg.mask_shift
    ratio = coords.unsqueeze(-1) / rate
    return torch.exp(-0.5 * ratio.square().sum(-2))


def init_film(
    cfg: KernelNetConfig,
    cond_dim: int | None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> LinearParams | None:
    """The FiLM projection ``cond_dim → 2·hidden`` of ``cfg``'s network, or None without
    ``cond_dim``. Zero-initialised, so a conditioned layer starts as the unconditioned one."""
    if cond_dim is None:
        return None
    h = cfg.hidden
    return LinearParams(
        weight=torch.zeros(2 * h, cond_dim, device=device, dtype=dtype),
        bias=torch.zeros(2 * h, device=device, dtype=dtype),
    )


def film_from_conditioning(
    film: LinearParams | None, conditioning: Tensor | None
) -> tuple[Tensor, Tensor] | None:
    """``(γ, β)``, each ``[B, hidden]``, from ``conditioning`` ``[B, cond_dim]`` (None if either
    is None), computed in the kernel's precision: float32, or float64 with float64 params."""
    if film is None or conditioning is None:
        return None
    if conditioning.ndim != 2 or conditioning.shape[-1] != film.weight.shape[1]:
        raise ValueError(
            f"conditioning must be [B, cond_dim] = [B, {film.weight.shape[1]}], got shape "
            f"{tuple(conditioning.shape)}"
        )
    dt = torch.float64 if film.weight.dtype == torch.float64 else torch.float32
    # Autocast off: the FiLM feeds the float32 kernel network (see implicit_kernel).
    with torch.autocast(conditioning.device.type, enabled=False):
        gb = F.linear(conditioning.to(dt), film.weight.to(dt), film.bias.to(dt))
    return tuple(gb.chunk(2, dim=-1))


def _film(h: Tensor, film: tuple[Tensor, Tensor] | None, nk: int) -> Tensor:
    """FiLM of the first hidden layer: ``h (1 + γ) + β`` with per-sample ``γ, β`` ``[B, hidden]``."""
    if film is None:
        return h
    scale, shift = (t.to(h.dtype).reshape(t.shape[0], *([1] * nk), t.shape[-1]) for t in film)
    return h * (1 + scale) + shift


@shapecheck
def kernel_net(
    params: KernelNetParams,
    coords: Float[Tensor, "*k nd"],
    *,
    cfg: KernelNetConfig,
    buffers: KernelNetBuffers | None = None,
    film: tuple[Tensor, Tensor] | None = None,
) -> Float[Tensor, "..."]:
    """The network (without mask) at ``coords``: ``[*K, C]``, or ``[B, *K, C]`` with ``film``.

    ``film`` = ``(γ, β)``, each ``[B, hidden]``, modulates the first hidden layer per sample.
    """
    p = coords
    nk = coords.ndim - 1
    if cfg.kind == "hyena":
        freqs = torch.arange(1, cfg.bands + 1, device=p.device, dtype=p.dtype) * math.pi
        angles = p.unsqueeze(-1) * freqs  # [*k, nd, bands]
        h = torch.cat([p, angles.cos().flatten(-2), angles.sin().flatten(-2)], dim=-1)
        for i, layer in enumerate(params.layers[:-1]):
            h = torch.sin(params.sin_freq[i].to(h.dtype) * _linear(layer, h))
            h = _film(h, film, nk) if i == 0 else h
    elif cfg.kind == "siren":
        h = p
        for i, layer in enumerate(params.layers[:-1]):
            omega = cfg.omega_0 if i == 0 else cfg.hidden_omega_0
            h = torch.sin(omega * _linear(layer, h))
            h = _film(h, film, nk) if i == 0 else h
    else:
        if buffers is None or buffers.rff_freqs is None:
            raise ValueError("kernel_net: kind='rff' needs buffers with rff_freqs, got None")
        angles = 2 * math.pi * (p @ buffers.rff_freqs.to(p.dtype))
        h = torch.cat([angles.cos(), angles.sin()], dim=-1)
        for i, layer in enumerate(params.layers[:-1]):
            h = F.gelu(_linear(layer, h))
            h = _film(h, film, nk) if i == 0 else h
    return _linear(params.layers[-1], h)


@shapecheck
def implicit_kernel(
    params: KernelNetParams,
    sizes: Sequence[int],
    modes: Sequence[str],
    *,
    cfg: KernelNetConfig,
    buffers: KernelNetBuffers | None = None,
    film: tuple[Tensor, Tensor] | None = None,
) -> Float[Tensor, "..."]:
    """The per-channel kernel ``[C, *K]`` for inputs of ``sizes`` under ``modes`` (net × mask).

    With ``film`` (see :func:`kernel_net`) the kernel is per sample, ``[B, C, *K]``.

    The kernel has the tap layout :func:`subq.functional.fftconv.fft_conv` expects for the
    modes: ``N`` taps (causal, circular) or ``2N − 1`` (zero) per axis.
    """
    if len(sizes) != cfg.ndim or len(modes) != cfg.ndim:
        raise ValueError(
            f"implicit_kernel: expected {cfg.ndim} sizes and modes (cfg.ndim), got sizes "
            f"{tuple(sizes)} and modes {tuple(modes)}"
        )
    weight = params.layers[0].weight
    coords = kernel_grid(
        sizes,
        modes,
        construction_size=cfg.construction_size,
        length_policy=cfg.length_policy,
        device=weight.device,
        dtype=weight.dtype if weight.dtype == torch.float64 else torch.float32,
    )
    # The kernel feeds float32 spectral math: keep autocast from generating it in bfloat16.
    with torch.autocast(coords.device.type, enabled=False):
        net = kernel_net(params, coords, cfg=cfg, buffers=buffers, film=film)
        k = net * kernel_mask(params, coords, cfg=cfg)
    return k.movedim(-1, 0 if film is None else 1)
