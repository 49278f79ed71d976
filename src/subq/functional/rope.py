"""Rotary position embeddings (RoPE): one engine for any number of axes, and the reference API.

The engine rotates pairs of channels by angles ``p · θ_j``. Channels are split into per-axis
*sections* (blocks): the block of axis ``a`` has ``d_a`` channels, its pairs ``j < d_a/2`` turn by
``p_a · θ_j`` with ``θ_j = base^(−2j/d_a)`` and ``p_a`` the coordinate along that axis. Pairs never
cross blocks. Which two channels form pair ``j`` of a block is the *pairing*:

* ``"split_half"`` (GPT-NeoX): channels ``j`` and ``j + d_a/2``;
* ``"interleaved"`` (GPT-J): channels ``2j`` and ``2j + 1``;
* ``"nvsubquadratic"``: the reference library's numerics, for loading its checkpoints. It pairs
  ``j`` with ``j + d_a/2`` but gives channel ``i`` the frequency ``θ_{⌊i/2⌋}``, so the two
  members of a pair turn by different angles: **not a rotation** (norms are not preserved and
  ``⟨q, k⟩`` is not a function of relative position).

A :class:`RopeCache` holds ``cos``/``sin`` of the angles, one column per pair (per channel for
``"nvsubquadratic"``), built by the pure functions :func:`rope_cache` (integer grids) and
:func:`rope_cache_from_positions` (arbitrary, possibly continuous or per-batch positions).
:func:`apply_rope` never writes into its input; the math runs in float32 (float64 stays float64)
and the result has the input's dtype.

The reference names ``construct_rope_{1d,2d,3d}_cache_{bhl,blh}`` and
``apply_rope_{1d,2d,3d}_{bhl,blh}`` are thin layers over the engine with the reference's layouts:
``bhl`` is channels-first ``[B, C, *spatial]``, ``blh`` channels-last ``[B, *spatial, C]``; their
caches are tuples ``(cos, sin)`` per axis of shape ``[d_a, N]`` (bhl) or ``[N, d_a]`` (blh), one
column per channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import torch
import torch.utils._pytree as pytree
from torch import Tensor

from subq._typing import Float, shapecheck
from subq.ops.rope import PAIRINGS, rope_op

__all__ = [
    "PAIRINGS",
    "RopeCache",
    "apply_rope",
    "apply_rope_1d_bhl",
    "apply_rope_1d_blh",
    "apply_rope_2d_bhl",
    "apply_rope_2d_blh",
    "apply_rope_3d_bhl",
    "apply_rope_3d_blh",
    "apply_rope_qk",
    "construct_rope_1d_cache_bhl",
    "construct_rope_1d_cache_blh",
    "construct_rope_2d_cache_bhl",
    "construct_rope_2d_cache_blh",
    "construct_rope_3d_cache_bhl",
    "construct_rope_3d_cache_blh",
    "rope_cache",
    "rope_cache_from_positions",
    "rope_frequencies",
]


# --------------------------------------------------------------------------------------------
# The cache pytree
# --------------------------------------------------------------------------------------------


@attrs.define
class RopeCache:
    """Cosines and sines of the rotation angles (a buffer pytree, not trained).

    Attributes:
        cos: ``[*positions, W]`` float32 (by default); ``W = rot_dim / 2`` (one column per
            rotated pair) or ``rot_dim`` for the ``"nvsubquadratic"`` pairing.
        sin: same shape as ``cos``.
        sections: rotated channels per axis block, in channel order; ``None`` means one block of
            all rotated channels. Static structure (part of the pytree's context, not a leaf),
            so ``vmap``/``grad``/``torch.compile`` see only ``cos`` and ``sin``.
    """

    cos: Float[Tensor, "..."]
    sin: Float[Tensor, "..."]
    sections: tuple[int, ...] | None = None


def _cache_flatten(cache: RopeCache) -> tuple[list[Tensor], tuple[int, ...] | None]:
    return [cache.cos, cache.sin], cache.sections


def _cache_unflatten(values: Sequence[Tensor], sections: tuple[int, ...] | None) -> RopeCache:
    return RopeCache(values[0], values[1], sections)


def _cache_flatten_with_keys(cache: RopeCache) -> tuple[list[tuple[Any, Tensor]], Any]:
    return [
        (pytree.GetAttrKey("cos"), cache.cos),
        (pytree.GetAttrKey("sin"), cache.sin),
    ], cache.sections


pytree.register_pytree_node(
    RopeCache,
    _cache_flatten,
    _cache_unflatten,
    serialized_type_name=f"{RopeCache.__module__}.RopeCache",
    flatten_with_keys_fn=_cache_flatten_with_keys,
)


# --------------------------------------------------------------------------------------------
# Validation helpers (static facts only: Python ints and tensor shapes)
# --------------------------------------------------------------------------------------------


def _check_pairing(fn: str, pairing: str) -> None:
    if pairing not in PAIRINGS:
        raise ValueError(f"{fn}: pairing must be one of {list(PAIRINGS)}, got {pairing!r}")


def _resolve_sections(
    fn: str, rot_dim: int, n_axes: int, sections: Sequence[int] | None
) -> tuple[int, ...]:
    """Channels per axis block: an equal split by default, else validated ``sections``."""
    if not isinstance(rot_dim, int) or rot_dim < 0:
        raise ValueError(f"{fn}: rotary dim must be a non-negative int, got {rot_dim!r}")
    if sections is None:
        if rot_dim % (2 * n_axes) != 0:
            raise ValueError(
                f"{fn}: head_dim (rotated channels) must be a multiple of {2 * n_axes} "
                f"(2 per pair × {n_axes} axes), got {rot_dim}"
            )
        return (rot_dim // n_axes,) * n_axes
    sections = tuple(sections)
    if len(sections) != n_axes:
        raise ValueError(
            f"{fn}: sections must give one channel count per axis ({n_axes}), got {sections}"
        )
    for s in sections:
        if not isinstance(s, int) or s < 0 or s % 2 != 0:
            raise ValueError(
                f"{fn}: each section must be a non-negative multiple of 2, got sections {sections}"
            )
    if sum(sections) != rot_dim:
        raise ValueError(
            f"{fn}: sections must sum to the rotated channels ({rot_dim}), got {sections} "
            f"(sum {sum(sections)})"
        )
    return sections


def rope_frequencies(
    dim: int, *, base: float = 10000.0, pairing: str = "split_half", device: Any = None
) -> Float[Tensor, " w"]:
    """Angular frequencies of one axis block of ``dim`` channels, in float64.

    ``θ_j = base^(−2j/dim)`` for each pair ``j < dim/2``; for ``"nvsubquadratic"`` one per
    channel, ``θ_{⌊i/2⌋}``.

    Example:
        >>> rope_frequencies(4, base=100.0)
        tensor([1.0000, 0.1000], dtype=torch.float64)
    """
    _check_pairing("rope_frequencies", pairing)
    if not isinstance(dim, int) or dim < 0 or dim % 2 != 0:
        raise ValueError(f"rope_frequencies: dim must be a non-negative multiple of 2, got {dim!r}")
    j = torch.arange(dim // 2, dtype=torch.float64, device=device)
    theta = torch.pow(torch.tensor(float(base), dtype=torch.float64, device=device), -2.0 * j / dim)
    if pairing == "nvsubquadratic":
        theta = theta.repeat_interleave(2)
    return theta


def _angles_to_cache(
    angles: list[Tensor], sections: tuple[int, ...], dtype: torch.dtype
) -> RopeCache:
    ang = angles[0] if len(angles) == 1 else torch.cat(angles, dim=-1)
    single = None if len(sections) == 1 else sections
    return RopeCache(torch.cos(ang).to(dtype), torch.sin(ang).to(dtype), single)


# --------------------------------------------------------------------------------------------
# Engine: caches
# --------------------------------------------------------------------------------------------


def rope_cache(
    shape: Sequence[int] | int,
    head_dim: int,
    *,
    base: float = 10000.0,
    sections: Sequence[int] | None = None,
    pairing: str = "split_half",
    offset: int | Sequence[int] = 0,
    rotary_dim: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> RopeCache:
    """The cache for an integer grid of positions ``offset + arange(n)`` per axis.

    Args:
        shape: grid size per axis, e.g. ``(T,)`` or ``(H, W)`` (an int means one axis).
        head_dim: channels of the vectors to rotate.
        base: frequency base; axis block ``a`` uses ``θ_j = base^(−2j/d_a)``.
        sections: rotated channels per axis (even, summing to ``rotary_dim``); an equal split by
            default (then ``rotary_dim`` must be a multiple of ``2 · len(shape)``).
        pairing: ``"split_half"`` and ``"interleaved"`` give the same cache (one column per
            pair); ``"nvsubquadratic"`` gives the reference's per-channel columns.
        offset: first position, an int for every axis or one per axis (decoding at position
            ``p`` uses ``offset=p``).
        rotary_dim: rotate only the first ``rotary_dim`` channels (partial rotary); default
            ``head_dim``.
        device: where the cache lives.
        dtype: cache dtype (float32; float64 for exactness tests).

    Returns:
        A :class:`RopeCache` with ``cos``/``sin`` of shape ``[*shape, W]``.

    Example:
        >>> c = rope_cache((3,), 4)
        >>> c.cos.shape
        torch.Size([3, 2])
    """
    fn = "rope_cache"
    _check_pairing(fn, pairing)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if not shape or any(not isinstance(n, int) or n < 0 for n in shape):
        raise ValueError(f"{fn}: shape must be non-negative ints, one per axis, got {shape!r}")
    n_axes = len(shape)
    rot = head_dim if rotary_dim is None else rotary_dim
    if not isinstance(head_dim, int) or head_dim <= 0:
        raise ValueError(f"{fn}: head_dim must be a positive int, got {head_dim!r}")
    if not isinstance(rot, int) or not 0 <= rot <= head_dim:
        raise ValueError(
            f"{fn}: rotary_dim must be an int in [0, head_dim={head_dim}], got {rot!r}"
        )
    secs = _resolve_sections(fn, rot, n_axes, sections)
    offsets = (offset,) * n_axes if isinstance(offset, int) else tuple(offset)
    if len(offsets) != n_axes or any(not isinstance(o, int) for o in offsets):
        raise ValueError(f"{fn}: offset must be an int or {n_axes} ints, got {offset!r}")
    angles = []
    for axis, (n, d, o) in enumerate(zip(shape, secs, offsets)):
        pos = torch.arange(o, o + n, dtype=torch.float64, device=device)
        ang = pos[:, None] * rope_frequencies(d, base=base, pairing=pairing, device=device)
        # Broadcast this axis' angles over the other grid axes.
        view = [1] * n_axes + [ang.shape[-1]]
        view[axis] = n
        angles.append(ang.reshape(view).expand(*shape, ang.shape[-1]))
    return _angles_to_cache(angles, secs, dtype)


def rope_cache_from_positions(
    positions: Tensor,
    head_dim: int,
    *,
    base: float = 10000.0,
    sections: Sequence[int] | None = None,
    n_axes: int | None = None,
    pairing: str = "split_half",
    rotary_dim: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> RopeCache:
    """The cache for given (integer or continuous) positions.

    Args:
        positions: ``[...]`` for one axis (e.g. ``[B, T]`` per-batch positions of a decode step:
            the cache is then ``[B, T, W]``; unsqueeze a heads axis to apply it to
            ``[B, heads, T, D]``), or ``[..., n_axes]`` coordinates for several axes (point
            clouds, irregular grids).
        head_dim: channels of the vectors to rotate.
        base: frequency base.
        sections: rotated channels per axis (equal split by default).
        n_axes: number of axes; default ``len(sections)`` if given, else 1. With one axis a
            trailing axis of ``positions`` is a position axis, never a coordinate axis.
        pairing: as for :func:`rope_cache`.
        rotary_dim: rotate only the first ``rotary_dim`` channels; default ``head_dim``.
        dtype: cache dtype.

    Returns:
        A :class:`RopeCache` with ``cos``/``sin`` of shape ``[..., W]``.

    Example:
        >>> c = rope_cache_from_positions(torch.tensor([[0.0, 0.5], [1.0, 2.0]]), 4, n_axes=2)
        >>> c.cos.shape, c.sections
        (torch.Size([2, 2]), (2, 2))
    """
    fn = "rope_cache_from_positions"
    _check_pairing(fn, pairing)
    if n_axes is None:
        n_axes = 1 if sections is None else len(tuple(sections))
    if not isinstance(n_axes, int) or n_axes < 1:
        raise ValueError(f"{fn}: n_axes must be a positive int, got {n_axes!r}")
    if not isinstance(head_dim, int) or head_dim <= 0:
        raise ValueError(f"{fn}: head_dim must be a positive int, got {head_dim!r}")
    rot = head_dim if rotary_dim is None else rotary_dim
    if not isinstance(rot, int) or not 0 <= rot <= head_dim:
        raise ValueError(
            f"{fn}: rotary_dim must be an int in [0, head_dim={head_dim}], got {rot!r}"
        )
    secs = _resolve_sections(fn, rot, n_axes, sections)
    if n_axes > 1 and (positions.ndim == 0 or positions.shape[-1] != n_axes):
        raise ValueError(
            f"{fn}: positions must be [..., {n_axes}] for {n_axes} axes, "
            f"got shape {tuple(positions.shape)}"
        )
    pos = positions.to(torch.float64)
    angles = []
    for axis, d in enumerate(secs):
        p = pos if n_axes == 1 else pos[..., axis]
        theta = rope_frequencies(d, base=base, pairing=pairing, device=positions.device)
        angles.append(p[..., None] * theta)
    return _angles_to_cache(angles, secs, dtype)


# --------------------------------------------------------------------------------------------
# Engine: apply
# --------------------------------------------------------------------------------------------


def _cache_layout(
    fn: str, x_shape: tuple[int, ...], cache: RopeCache, pairing: str, partial: bool
) -> tuple[int, ...]:
    """Check static shapes of ``x`` against the cache; return the channel sections."""
    _check_pairing(fn, pairing)
    cos, sin = cache.cos, cache.sin
    if tuple(cos.shape) != tuple(sin.shape):
        raise ValueError(
            f"{fn}: cache.cos and cache.sin must have the same shape, got "
            f"{tuple(cos.shape)} and {tuple(sin.shape)}"
        )
    if cos.ndim < 1 or len(x_shape) < 1:
        raise ValueError(
            f"{fn}: x and the cache need a channel axis, got x {x_shape}, cache {tuple(cos.shape)}"
        )
    width = cos.shape[-1]
    rot = width if pairing == "nvsubquadratic" else 2 * width
    sections = cache.sections if cache.sections is not None else (rot,)
    if sum(sections) != rot:
        raise ValueError(
            f"{fn}: cache.sections {sections} sum to {sum(sections)} channels but the cache has "
            f"{width} columns ({rot} channels with pairing {pairing!r})"
        )
    d = x_shape[-1]
    if d != rot and not (partial and d > rot):
        hint = " (pass partial=True to rotate only the leading channels)" if d > rot else ""
        raise ValueError(
            f"{fn}: x has {d} channels but the cache rotates {rot} "
            f"(cache width {width}, pairing {pairing!r}){hint}"
        )
    lead_x, lead_c = x_shape[:-1], tuple(cos.shape[:-1])
    if len(lead_c) > len(lead_x):
        raise ValueError(f"{fn}: the cache has more leading axes ({lead_c}) than x ({lead_x})")
    for i in range(1, len(lead_c) + 1):
        nc, nx = lead_c[-i], lead_x[-i]
        if nc != nx and nc != 1:
            what = "smaller than" if nc < nx else "larger than"
            raise ValueError(
                f"{fn}: the cache covers {nc} positions along x's axis {len(x_shape) - 1 - i} "
                f"where x has {nx} ({what} the input); build a cache of exactly {nx} positions "
                f"(use offset= for a decode step) or slice it"
            )
    return sections


def _dispatch(x: Tensor, cache: RopeCache, sections: tuple[int, ...], pairing: str, backend):
    facts = {
        "device": x.device,
        "dtype": x.dtype,
        "pairing": pairing,
        "n_sections": len(sections),
        "rot_dim": sum(sections),
        "head_dim": x.shape[-1],
        "x_shape": tuple(x.shape),
        "cache_shape": tuple(cache.cos.shape),
    }
    return rope_op.select(facts, backend)(x, cache.cos, cache.sin, sections, pairing)


@shapecheck
def apply_rope(
    x: Float[Tensor, "*batch d"],
    cache: RopeCache,
    *,
    pairing: str = "split_half",
    partial: bool = False,
    backend: str | None = None,
) -> Float[Tensor, "*batch d"]:
    """Rotate the channels of ``x`` by the cache's angles.

    Args:
        x: ``[..., D]``; its leading axes are matched right-aligned against the cache's leading
            axes, e.g. ``x [B, heads, T, D]`` with a cache ``[T, W]`` or ``[B, 1, T, W]``, and
            ``x [B, T, heads, D]`` with a cache ``[T, 1, W]``. A cache axis must equal x's or be
            1 (broadcast); a cache never enlarges x.
        cache: from :func:`rope_cache` or :func:`rope_cache_from_positions`.
        pairing: ``"split_half"``, ``"interleaved"`` or ``"nvsubquadratic"`` (the latter needs
            a cache built with the same pairing).
        partial: allow ``D`` larger than the rotated channels; the rest pass through.
        backend: force a backend of the ``rope`` op (``subq.ops.explain("rope", ...)``).

    Returns:
        A new tensor of ``x``'s shape and dtype (the math runs in float32).

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
        >>> apply_rope(x, rope_cache((2,), 2)).round(decimals=4)
        tensor([[1.0000, 0.0000],
                [0.5403, 0.8415]])
    """
    sections = _cache_layout("apply_rope", tuple(x.shape), cache, pairing, partial)
    return _dispatch(x, cache, sections, pairing, backend)


@shapecheck
def apply_rope_qk(
    q: Float[Tensor, "*qbatch d"],
    k: Float[Tensor, "*kbatch d"],
    cache: RopeCache,
    *,
    pairing: str = "split_half",
    partial: bool = False,
    backend: str | None = None,
) -> tuple[Float[Tensor, "*qbatch d"], Float[Tensor, "*kbatch d"]]:
    """:func:`apply_rope` on queries and keys with one cache (``k`` may have fewer heads)."""
    sections = _cache_layout("apply_rope_qk", tuple(q.shape), cache, pairing, partial)
    _cache_layout("apply_rope_qk", tuple(k.shape), cache, pairing, partial)
    return (
        _dispatch(q, cache, sections, pairing, backend),
        _dispatch(k, cache, sections, pairing, backend),
    )


# --------------------------------------------------------------------------------------------
# The reference API (seed 000): per-axis (cos, sin) tuples, bhl / blh layouts
# --------------------------------------------------------------------------------------------

AxisCache = tuple[Tensor, Tensor]

#: Reference-API ``compat`` values: ``None`` (a true rotation) or ``"nvsubquadratic"``.
COMPAT_MODES = (None, "nvsubquadratic")


def _check_compat(fn: str, compat: str | None, pairing: str) -> str:
    """The engine pairing the reference API uses."""
    if compat not in COMPAT_MODES:
        raise ValueError(f"{fn}: compat must be one of {list(COMPAT_MODES)}, got {compat!r}")
    if pairing not in ("split_half", "interleaved"):
        raise ValueError(
            f"{fn}: pairing must be one of ['split_half', 'interleaved'], got {pairing!r}"
        )
    if compat == "nvsubquadratic":
        if pairing != "split_half":
            raise ValueError(
                f"{fn}: compat='nvsubquadratic' uses pairing='split_half', got {pairing!r}"
            )
        return "nvsubquadratic"
    return pairing


def _axis_cache(
    fn: str,
    n: int,
    dim: int,
    base: float,
    pairing: str,
    compat: str | None,
    offset: int,
    device: Any,
    dtype: torch.dtype,
) -> AxisCache:
    """``[n, dim]`` per-channel cos and sin of one axis (blh orientation)."""
    engine = _check_compat(fn, compat, pairing)
    if not isinstance(dim, int) or dim <= 0 or dim % 2 != 0:
        raise ValueError(
            f"{fn}: dim (channels of this axis) must be a positive multiple of 2, got {dim!r}"
        )
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"{fn}: axis length must be a non-negative int, got {n!r}")
    c = rope_cache((n,), dim, base=base, pairing=engine, offset=offset, device=device, dtype=dtype)
    if engine == "nvsubquadratic":
        return c.cos, c.sin
    if engine == "split_half":
        return torch.cat((c.cos, c.cos), dim=-1), torch.cat((c.sin, c.sin), dim=-1)
    return c.cos.repeat_interleave(2, dim=-1), c.sin.repeat_interleave(2, dim=-1)


def _per_pair(fn: str, cos: Tensor, sin: Tensor, pairing: str, compat: str | None) -> RopeCache:
    """Per-channel reference columns → the engine's per-pair cache."""
    if cos.shape[-1] % 2 != 0:
        raise ValueError(f"{fn}: cache channel count must be even, got {cos.shape[-1]}")
    if compat == "nvsubquadratic":
        return RopeCache(cos, sin)
    if pairing == "split_half":
        half = cos.shape[-1] // 2
        return RopeCache(cos[..., :half], sin[..., :half])
    return RopeCache(cos[..., ::2], sin[..., ::2])


def _apply_axes_blh(
    fn: str,
    x: Tensor,
    axis_caches: Sequence[AxisCache],
    pairing: str,
    compat: str | None,
    layout: str = "blh",
) -> Tensor:
    """Channels-last ``x [B, *spatial, C]``: block ``a`` of ``C/n`` channels rotates along axis a.

    ``layout`` is the caller's layout, for error messages only (a ``bhl`` caller has already
    moved its channels last and transposed its caches).
    """
    engine = _check_compat(fn, compat, pairing)
    n_axes = len(axis_caches)
    if x.ndim != n_axes + 2:
        raise ValueError(
            f"{fn}: x must be [B, {n_axes} spatial axes, C] ({n_axes + 2} axes), "
            f"got shape {tuple(x.shape)}"
        )
    c = x.shape[-1]
    if c % (2 * n_axes) != 0:
        raise ValueError(
            f"{fn}: channel dim C must be a multiple of {2 * n_axes} for {n_axes}D RoPE, got {c}"
        )
    d = c // n_axes
    first_spatial = 2 if layout == "bhl" else 1
    blocks = []
    for axis, (cos, sin) in enumerate(axis_caches):
        # The shape as the caller passed it (a bhl cache arrives here transposed).
        shown = (
            tuple(reversed(cos.shape)) if layout == "bhl" and cos.ndim == 2 else tuple(cos.shape)
        )
        if cos.ndim != 2 or cos.shape[-1] != d:
            expected = f"[N, {d}]" if layout == "blh" else f"[{d}, N]"
            raise ValueError(
                f"{fn}: the cache of spatial axis {axis} must be {expected} "
                f"(C/{n_axes} channels), got {shown}"
            )
        n, size = cos.shape[0], x.shape[1 + axis]
        if n != size:
            what = "smaller" if n < size else "larger"
            raise ValueError(
                f"{fn}: the cache of spatial axis {axis} covers {n} positions but x has {size} "
                f"along it (x axis {first_spatial + axis}; the cache is {what} than the input); "
                f"build the cache for exactly {size} positions (offset= for a decode step)"
            )
        engine_cache = _per_pair(fn, cos, sin, pairing, compat)
        # Place the cache's position axis on spatial axis `axis`, broadcasting over the others.
        view = [1] * n_axes + [engine_cache.cos.shape[-1]]
        view[axis] = cos.shape[0]
        engine_cache = RopeCache(engine_cache.cos.reshape(view), engine_cache.sin.reshape(view))
        blocks.append(apply_rope(x[..., axis * d : (axis + 1) * d], engine_cache, pairing=engine))
    return blocks[0] if n_axes == 1 else torch.cat(blocks, dim=-1)


def _apply_axes_bhl(
    fn: str, x: Tensor, axis_caches: Sequence[AxisCache], pairing: str, compat: str | None
) -> Tensor:
    n_axes = len(axis_caches)
    if x.ndim != n_axes + 2:
        raise ValueError(
            f"{fn}: x must be [B, C, {n_axes} spatial axes] ({n_axes + 2} axes), "
            f"got shape {tuple(x.shape)}"
        )
    blh = [(c.mT, s.mT) if c.ndim == 2 else (c, s) for c, s in axis_caches]
    return _apply_axes_blh(fn, x.movedim(1, -1), blh, pairing, compat, "bhl").movedim(-1, 1)


def _transpose_all(caches: tuple[AxisCache, ...]) -> tuple[AxisCache, ...]:
    return tuple(
        (c.transpose(0, 1).contiguous(), s.transpose(0, 1).contiguous()) for c, s in caches
    )


def construct_rope_1d_cache_blh(
    seq_len: int,
    dim: int,
    base: float = 10000.0,
    *,
    pairing: str = "split_half",
    compat: str | None = None,
    offset: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> AxisCache:
    """Construct the 1D RoPE cache for a given sequence length and hidden dimension.

    Args:
        seq_len: positions ``offset … offset + seq_len − 1``.
        dim: channels (even).
        base: frequency base.
        pairing: ``"split_half"`` or ``"interleaved"``.
        compat: ``"nvsubquadratic"`` reproduces the reference library's (non-rotation) numerics.
        offset: first position.
        device: where the cache lives.
        dtype: cache dtype.

    Returns:
        ``(cos, sin)``, each ``[seq_len, dim]`` (one column per channel).
    """
    fn = "construct_rope_1d_cache_blh"
    return _axis_cache(fn, seq_len, dim, base, pairing, compat, offset, device, dtype)


def construct_rope_1d_cache_bhl(
    seq_len: int,
    dim: int,
    base: float = 10000.0,
    *,
    pairing: str = "split_half",
    compat: str | None = None,
    offset: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> AxisCache:
    """As :func:`construct_rope_1d_cache_blh`, with ``(cos, sin)`` each ``[dim, seq_len]``."""
    fn = "construct_rope_1d_cache_bhl"
    (cache,) = _transpose_all(
        (_axis_cache(fn, seq_len, dim, base, pairing, compat, offset, device, dtype),)
    )
    return cache


def construct_rope_2d_cache_blh(
    height: int,
    width: int,
    dim: int,
    base: float = 10000.0,
    *,
    pairing: str = "split_half",
    compat: str | None = None,
    offset: int | tuple[int, int] = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[AxisCache, AxisCache]:
    """Construct the 2D RoPE cache for a given (height, width) and per-axis dimension.

    ``dim`` is the channels of *one* axis (``C/2``). Returns ``((cos_h, sin_h), (cos_w, sin_w))``
    with ``[height, dim]`` and ``[width, dim]`` tensors. Other arguments as for
    :func:`construct_rope_1d_cache_blh` (``offset`` may be one int per axis).
    """
    fn = "construct_rope_2d_cache_blh"
    offs = (offset,) * 2 if isinstance(offset, int) else tuple(offset)
    return tuple(
        _axis_cache(fn, n, dim, base, pairing, compat, o, device, dtype)
        for n, o in zip((height, width), offs, strict=True)
    )


def construct_rope_2d_cache_bhl(
    height: int,
    width: int,
    dim: int,
    base: float = 10000.0,
    *,
    pairing: str = "split_half",
    compat: str | None = None,
    offset: int | tuple[int, int] = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[AxisCache, AxisCache]:
    """As :func:`construct_rope_2d_cache_blh`, with ``[dim, N]`` tensors."""
    return _transpose_all(
        construct_rope_2d_cache_blh(
            height,
            width,
            dim,
            base,
            pairing=pairing,
            compat=compat,
            offset=offset,
            device=device,
            dtype=dtype,
        )
    )


def construct_rope_3d_cache_blh(
    depth: int,
    height: int,
    width: int,
    dim: int,
    base: float = 10000.0,
    *,
    pairing: str = "split_half",
    compat: str | None = None,
    offset: int | tuple[int, int, int] = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[AxisCache, AxisCache, AxisCache]:
    """Construct the 3D RoPE cache for given (depth, height, width) and per-axis dimension.

    ``dim`` is the channels of one axis (``C/3``). Returns one ``(cos, sin)`` per axis with
    ``[N, dim]`` tensors.
    """
    fn = "construct_rope_3d_cache_blh"
    offs = (offset,) * 3 if isinstance(offset, int) else tuple(offset)
    return tuple(
        _axis_cache(fn, n, dim, base, pairing, compat, o, device, dtype)
        for n, o in zip((depth, height, width), offs, strict=True)
    )


def construct_rope_3d_cache_bhl(
    depth: int,
    height: int,
    width: int,
    dim: int,
    base: float = 10000.0,
    *,
    pairing: str = "split_half",
    compat: str | None = None,
    offset: int | tuple[int, int, int] = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[AxisCache, AxisCache, AxisCache]:
    """As :func:`construct_rope_3d_cache_blh`, with ``[dim, N]`` tensors."""
    return _transpose_all(
        construct_rope_3d_cache_blh(
            depth,
            height,
            width,
            dim,
            base,
            pairing=pairing,
            compat=compat,
            offset=offset,
            device=device,
            dtype=dtype,
        )
    )


def _as_axes(fn: str, cache: Any, n_axes: int) -> tuple[AxisCache, ...]:
    """Accept ``(cos, sin)`` for 1D and a tuple of them for 2D/3D."""
    if n_axes == 1 and len(cache) == 2 and isinstance(cache[0], Tensor):
        return (tuple(cache),)
    if len(cache) != n_axes or not all(len(c) == 2 for c in cache):
        raise ValueError(f"{fn}: expected {n_axes} (cos, sin) pairs, one per spatial axis")
    return tuple(tuple(c) for c in cache)


def apply_rope_1d_blh(
    x: Float[Tensor, "b t c"],
    rope_1d_cache: AxisCache,
    *,
    pairing: str = "split_half",
    compat: str | None = None,
) -> Float[Tensor, "b t c"]:
    """Apply 1D RoPE to a tensor laid out as ``[batch_size, seq_len, hidden_dim]``.

    ``pairing``/``compat`` must match the ones the cache was built with.
    """
    fn = "apply_rope_1d_blh"
    return _apply_axes_blh(fn, x, _as_axes(fn, rope_1d_cache, 1), pairing, compat)


def apply_rope_1d_bhl(
    x: Float[Tensor, "b c t"],
    rope_1d_cache: AxisCache,
    *,
    pairing: str = "split_half",
    compat: str | None = None,
) -> Float[Tensor, "b c t"]:
    """Apply 1D RoPE to a tensor laid out as ``[batch_size, hidden_dim, seq_len]``."""
    fn = "apply_rope_1d_bhl"
    return _apply_axes_bhl(fn, x, _as_axes(fn, rope_1d_cache, 1), pairing, compat)


def apply_rope_2d_blh(
    x: Float[Tensor, "b h w c"],
    rope_2d_cache: tuple[AxisCache, AxisCache],
    *,
    pairing: str = "split_half",
    compat: str | None = None,
) -> Float[Tensor, "b h w c"]:
    """Apply 2D RoPE to ``[batch_size, H, W, hidden_dim]``: first half of the channels along
    H, second half along W (``hidden_dim % 4 == 0``)."""
    fn = "apply_rope_2d_blh"
    return _apply_axes_blh(fn, x, _as_axes(fn, rope_2d_cache, 2), pairing, compat)


def apply_rope_2d_bhl(
    x: Float[Tensor, "b c h w"],
    rope_2d_cache: tuple[AxisCache, AxisCache],
    *,
    pairing: str = "split_half",
    compat: str | None = None,
) -> Float[Tensor, "b c h w"]:
    """Apply 2D RoPE to a tensor laid out as ``[batch_size, hidden_dim, H, W]``."""
    fn = "apply_rope_2d_bhl"
    return _apply_axes_bhl(fn, x, _as_axes(fn, rope_2d_cache, 2), pairing, compat)


def apply_rope_3d_blh(
    x: Float[Tensor, "b d h w c"],
    rope_3d_cache: tuple[AxisCache, AxisCache, AxisCache],
    *,
    pairing: str = "split_half",
    compat: str | None = None,
) -> Float[Tensor, "b d h w c"]:
    """Apply 3D RoPE to ``[batch_size, D, H, W, hidden_dim]``: channel thirds along D, H, W
    (``hidden_dim % 6 == 0``)."""
    fn = "apply_rope_3d_blh"
    return _apply_axes_blh(fn, x, _as_axes(fn, rope_3d_cache, 3), pairing, compat)


def apply_rope_3d_bhl(
    x: Float[Tensor, "b c d h w"],
    rope_3d_cache: tuple[AxisCache, AxisCache, AxisCache],
    *,
    pairing: str = "split_half",
    compat: str | None = None,
) -> Float[Tensor, "b c d h w"]:
    """Apply 3D RoPE to a tensor laid out as ``[batch_size, hidden_dim, D, H, W]``."""
    fn = "apply_rope_3d_bhl"
    return _apply_axes_bhl(fn, x, _as_axes(fn, rope_3d_cache, 3), pairing, compat)
