"""Shell of CKConvND (also an inner mixer of :class:`subq.nn.mixer.QKVSequenceMixer`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from subq.functional import ckconv as F
from subq.functional.implicit import KernelNetBuffers, init_kernel_net_buffers
from subq.nn.base import Shell, mixer_config

__all__ = ["CKConvND", "ImplicitKernelShell"]


class ImplicitKernelShell(Shell):
    """Base of the shells around an implicit kernel (CKConvND, Hyena): the kernel network's
    frozen buffers (an ``"rff"`` kernel's ``rff_freqs``) are registered buffers, not parameters."""

    def _register_kernel_buffers(
        self, kernel_cfg: Any, generator: torch.Generator | None, device: Any
    ) -> None:
        buffers = init_kernel_net_buffers(kernel_cfg, generator=generator, device=device)
        if buffers.rff_freqs is not None:
            self.register_buffer("rff_freqs", buffers.rff_freqs)
        else:
            self.rff_freqs = None

    def buffers_pytree(self) -> KernelNetBuffers:
        """The frozen kernel-network buffers as the pure function takes them."""
        return KernelNetBuffers(rff_freqs=self.rff_freqs)


class CKConvND(ImplicitKernelShell):
    """Shell of :func:`subq.functional.ckconv.ckconv`.

    ``CKConvND(hidden_dim=64, ndim=2, max_size=32, mode="circular")``. Called with one tensor it
    convolves it; called with the mixer protocol's ``(query, key, value, cp_group, **kwargs)`` it
    convolves ``value`` (``conditioning`` is used when ``cond_dim`` is set, other keywords are
    ignored). The random features of an ``"rff"`` kernel are a buffer (``rff_freqs``).
    """

    def __init__(
        self,
        hidden_dim: int | None = None,
        cfg: F.CKConvConfig | None = None,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **fields: Any,
    ) -> None:
        cfg = mixer_config("CKConvND", F.CKConvConfig, hidden_dim, cfg, fields)
        self.cfg = cfg
        super().__init__(F.init_ckconv(cfg, generator=generator, device=device, dtype=dtype))
        self._register_kernel_buffers(cfg.kernel, generator, device)

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        cp_group: Any = None,
        *,
        conditioning: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        del kwargs  # the mixer protocol passes options meant for other mixers
        if cp_group is not None:
            raise NotImplementedError(
                "CKConvND: context parallelism (cp_group) is not implemented yet; pass "
                "cp_group=None"
            )
        x = query if value is None else value
        return F.ckconv(
            self.params(), x, cfg=self.cfg, buffers=self.buffers_pytree(), conditioning=conditioning
        )

    def flop_count(self, spatial_dims: tuple[int, ...], inference: bool = False) -> int:
        """FLOPs of one sample (one multiply-add = 2 FLOPs); ``inference`` changes nothing."""
        del inference
        return F.ckconv_flop_count(self.cfg, spatial_dims)
