"""``QKVSequenceMixer``: shared QKV and output projections around any inner mixer (seed 002)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as TF
from torch import Tensor, nn

from subq._pytree import params_to_flat
from subq.functional import mixer as F
from subq.lazy_config import LazyConfig, instantiate, is_spec
from subq.nn.base import Shell

__all__ = ["QKVSequenceMixer"]

InitMethod = Callable[[int], Callable[[Tensor], Any]]


def _build_mixer(mixer_cfg: Any, hidden_dim: int, extra: dict[str, Any]) -> nn.Module:
    # generator/device/dtype reach the inner mixer only when given (foreign mixers may not
    # accept them).
    if isinstance(mixer_cfg, LazyConfig) or is_spec(mixer_cfg):
        module = instantiate(mixer_cfg, hidden_dim=hidden_dim, **extra)
    elif isinstance(mixer_cfg, nn.Module):
        module = mixer_cfg
    elif callable(mixer_cfg):
        module = mixer_cfg(hidden_dim=hidden_dim, **extra)
    else:
        raise TypeError(
            "QKVSequenceMixer: mixer_cfg must be a LazyConfig spec, a callable taking hidden_dim, "
            f"or a built module, got {type(mixer_cfg).__name__}"
        )
    if not isinstance(module, Shell):
        raise TypeError(
            "QKVSequenceMixer: the inner mixer must be a subq Shell (with params() and "
            f"flop_count()), got {type(module).__name__}"
        )
    return module


def _takes_generator(fn: Callable[..., Any]) -> bool:
    try:
        return "generator" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins and other callables without a signature
        return False


class QKVSequenceMixer(Shell):
    """Operator-agnostic sequence mixer with shared QKV and output projections.

    ``x ─ Linear(C → 3C) ─ split ─ mixer(q, k, v, cp_group, **kwargs) ─ Linear(C → C) ─ y``.
    The inner mixer comes from ``mixer_cfg``: a ``LazyConfig`` spec (built with
    ``instantiate(mixer_cfg, hidden_dim=hidden_dim)``), a class or callable taking ``hidden_dim``,
    or a built module. Hyena, CKConvND and AttentionMixer all work (the reference cannot take
    CKConvND). The params pytree nests the inner mixer's params under ``mixer``.

    Args:
        hidden_dim: channels ``C``.
        mixer_cfg: the inner mixer (see above).
        qkv_bias: learn a bias in the QKV projection.
        out_proj_bias: learn a bias in the output projection.
        init_method_in: ``fn(hidden_dim) -> fn(weight)``, an in-place initialiser of the QKV
            weight (e.g. ``subq.init.small_init``); biases are then zeroed.
        init_method_out: the same for the output projection.
        generator: seeds the default (``nn.Linear``) init of the projections, and the
            ``init_method_*`` initialisers that take a ``generator`` keyword (those of
            ``subq.init`` do); with ``device`` and ``dtype`` it is also passed to the inner
            mixer's constructor when not None.

    Example:
        >>> from subq.lazy_config import LazyConfig
        >>> from subq.nn.hyena import Hyena
        >>> block = QKVSequenceMixer(16, LazyConfig(Hyena)(max_size=32))
        >>> block(torch.randn(2, 32, 16)).shape
        torch.Size([2, 32, 16])
    """

    def __init__(
        self,
        hidden_dim: int,
        mixer_cfg: Any,
        qkv_bias: bool = False,
        out_proj_bias: bool = False,
        init_method_in: InitMethod | None = None,
        init_method_out: InitMethod | None = None,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        extra = {"generator": generator, "device": device, "dtype": dtype}
        mixer = _build_mixer(
            mixer_cfg, hidden_dim, {k: v for k, v in extra.items() if v is not None}
        )
        params = F.init_qkv_projections(
            hidden_dim,
            mixer.params(),
            qkv_bias=qkv_bias,
            out_proj_bias=out_proj_bias,
            generator=generator,
            device=device,
            dtype=dtype,
        )
        super().__init__(params, children={"mixer": mixer})
        self.hidden_dim = hidden_dim
        with torch.no_grad():
            for proj, method in ((self.qkv_proj, init_method_in), (self.out_proj, init_method_out)):
                if method is None:
                    continue
                fill = method(hidden_dim)
                if generator is not None and _takes_generator(fill):
                    fill(proj.weight.data, generator=generator)
                else:
                    fill(proj.weight.data)
                if getattr(proj, "bias", None) is not None:
                    proj.bias.zero_()

    def forward(self, x: Tensor, cp_group: Any = None, **mixer_kwargs: Any) -> Tensor:
        """``[B, *spatial, C] → [B, *spatial, C]``; ``mixer_kwargs`` go to the inner mixer."""
        c = self.hidden_dim
        if x.shape[-1] != c:
            raise ValueError(
                f"QKVSequenceMixer: x's last axis must be hidden_dim={c}, got shape {tuple(x.shape)}"
            )
        qkv = TF.linear(x, self.qkv_proj.weight, getattr(self.qkv_proj, "bias", None))
        q, k, v = qkv.split(c, dim=-1)
        y = self.mixer(q, k, v, cp_group, **mixer_kwargs)
        return TF.linear(y, self.out_proj.weight, getattr(self.out_proj, "bias", None))

    def mixer_fn(self) -> Callable[..., Tensor]:
        """The inner mixer as a pure function of its params (for :func:`qkv_sequence_mixer`)."""
        module = self.mixer

        def fn(params: Any, q: Tensor, k: Tensor, v: Tensor, **kwargs: Any) -> Tensor:
            return torch.func.functional_call(module, params_to_flat(params), (q, k, v), kwargs)

        return fn

    def flop_count(self, spatial_dims: tuple[int, ...], inference: bool = False) -> int:
        """``8 · T · C²`` for the projections plus the inner mixer's ``flop_count``.

        One multiply-add = 2 FLOPs; biases excluded (the reference's convention).
        """
        return F.qkv_projection_flops(self.hidden_dim, spatial_dims) + int(
            self.mixer.flop_count(tuple(spatial_dims), inference)
        )
