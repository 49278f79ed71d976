"""A small causal language model built from subq's parts, with a registry of sequence mixers.

``embedding → N × block → RMSNorm → tied head``, each block pre-norm::

    x = x + mixer(short_conv(norm(x)))        # short causal depthwise conv before every mixer
    x = x + mlp(norm(x))                      # only when an MLP is configured

The model is described by a :mod:`subq.lazy_config` spec (:func:`lm_spec`), so the full
configuration of a run is plain JSON that rebuilds the same model with
``instantiate(spec)``. Mixers are chosen by name from a registry: a builder registered with
:func:`register_mixer` returns the spec of one mixer layer for a model width and sequence length,
so a new mixer joins every model and the demo by registering (the ``subq demo`` command sees
the mixers registered when this module is imported).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from subq.lazy_config import LazyConfig, instantiate
from subq.nn.norm import RMSNorm

__all__ = [
    "MLP",
    "MixerBlock",
    "MixerLM",
    "build_lm",
    "check_mixer_names",
    "lm_spec",
    "mixer_spec",
    "register_mixer",
    "registered_mixers",
    "short_conv_spec",
]

MixerBuilder = Callable[..., dict[str, Any]]
_MIXERS: dict[str, MixerBuilder] = {}


def register_mixer(name: str) -> Callable[[MixerBuilder], MixerBuilder]:
    """Register ``builder(width, seq_len, **options) -> spec`` as the mixer called ``name``.

    The spec must build an ``nn.Module`` mapping ``[B, T, width]`` to ``[B, T, width]``
    causally (token t sees tokens ≤ t only).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_mixer: name must be a non-empty string, got {name!r}")

    def decorate(builder: MixerBuilder) -> MixerBuilder:
        existing = _MIXERS.get(name)
        if existing is not None and existing.__qualname__ != builder.__qualname__:
            raise ValueError(
                f"register_mixer: {name!r} is already registered by "
                f"{existing.__module__}.{existing.__qualname__}"
            )
        _MIXERS[name] = builder
        return builder

    return decorate


def registered_mixers() -> tuple[str, ...]:
    """Names of the registered mixers, sorted."""
    return tuple(sorted(_MIXERS))


def check_mixer_names(names: list[str] | tuple[str, ...], where: str = "mixers") -> None:
    """Raise a ``ValueError`` listing the registered mixers if any of ``names`` is unknown."""
    unknown = [n for n in names if n not in _MIXERS]
    if unknown:
        raise ValueError(
            f"{where}: unknown mixer{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))}; registered mixers are "
            f"{', '.join(registered_mixers()) or '(none)'}"
        )


def mixer_spec(name: str, *, width: int, seq_len: int, **options: Any) -> dict[str, Any]:
    """The spec of one layer of the mixer registered as ``name``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the registered names).
    """
    check_mixer_names([name], where="mixer_spec")
    return _MIXERS[name](width=width, seq_len=seq_len, **options)


class MLP(nn.Module):
    """Two-layer feed-forward ``Linear(C → rC) → GELU → Linear(rC → C)`` (no biases).

    Args:
        hidden_dim: model width ``C``.
        ratio: expansion ``r`` of the inner width.
    """

    def __init__(self, hidden_dim: int, ratio: float = 4.0) -> None:
        super().__init__()
        inner = max(1, round(hidden_dim * ratio))
        self.up = nn.Linear(hidden_dim, inner, bias=False)
        self.down = nn.Linear(inner, hidden_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(nn.functional.gelu(self.up(x)))


class MixerBlock(nn.Module):
    """Pre-norm residual block: short conv + mixer, then an optional MLP.

    Args:
        width: model width.
        mixer: spec (or module) of the sequence mixer.
        short_conv: spec (or module) of the short causal convolution before the mixer, or None.
        mlp: spec (or module) of the feed-forward, or None for a mixer-only block.
        norm_eps: epsilon of the RMSNorms.
    """

    def __init__(
        self,
        width: int,
        mixer: Any,
        short_conv: Any = None,
        mlp: Any = None,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm = RMSNorm(dim=width, eps=norm_eps)
        self.short_conv = None if short_conv is None else _build_module(short_conv, "short_conv")
        self.mixer = _build_module(mixer, "mixer")
        self.mlp_norm = None if mlp is None else RMSNorm(dim=width, eps=norm_eps)
        self.mlp = None if mlp is None else _build_module(mlp, "mlp")

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        if self.short_conv is not None:
            h = self.short_conv(h)
        x = x + self.mixer(h)
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x


def _build_module(spec: Any, what: str) -> nn.Module:
    # Each block builds its own copy: a spec instantiated twice gives two independent modules.
    module = instantiate(copy.deepcopy(spec) if isinstance(spec, dict) else spec)
    if not isinstance(module, nn.Module):
        raise TypeError(f"MixerBlock: {what} must build an nn.Module, got {type(module).__name__}")
    return module


class MixerLM(nn.Module):
    """Causal LM: token embedding, ``num_layers`` :class:`MixerBlock` s, RMSNorm, tied head.

    Parameters are initialised from the global torch RNG (``torch.manual_seed`` before building
    makes a model reproducible); the embedding (and so the head) is normal with std
    ``embed_std``.

    Args:
        vocab_size: number of tokens.
        width: model width.
        num_layers: number of blocks.
        mixer: spec of one mixer layer (built once per block), e.g. from :func:`mixer_spec`.
        short_conv: spec of the short convolution before each mixer, or None.
        mlp: spec of each block's feed-forward, or None.
        norm_eps: epsilon of the RMSNorms.
        embed_std: standard deviation of the embedding's initialisation.
    """

    def __init__(
        self,
        vocab_size: int,
        width: int,
        num_layers: int,
        mixer: Any,
        short_conv: Any = None,
        mlp: Any = None,
        norm_eps: float = 1e-6,
        embed_std: float = 0.02,
    ) -> None:
        super().__init__()
        for name, value in (
            ("vocab_size", vocab_size),
            ("width", width),
            ("num_layers", num_layers),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"MixerLM: {name} must be a positive int, got {value!r}")
        self.vocab_size, self.width = vocab_size, width
        self.embedding = nn.Embedding(vocab_size, width)
        nn.init.normal_(self.embedding.weight, std=embed_std)
        self.blocks = nn.ModuleList(
            MixerBlock(width, mixer, short_conv=short_conv, mlp=mlp, norm_eps=norm_eps)
            for _ in range(num_layers)
        )
        self.norm = RMSNorm(dim=width, eps=norm_eps)

    def hidden_states(self, tokens: Tensor) -> Tensor:
        """The final normalised hidden states ``[B, T, width]`` of ``tokens`` ``[B, T]``."""
        x = self.embedding(tokens)
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, tokens: Tensor, positions: Tensor | None = None) -> Tensor:
        """Logits ``[B, T, V]``, or ``[B, K, V]`` at ``positions`` ``[B, K]`` only.

        Gathering the hidden states before the head skips the ``V`` logits of every other
        position, which would dominate the cost of a recall task.
        """
        if tokens.ndim != 2:
            raise ValueError(
                f"MixerLM: tokens must be [B, T] token ids, got shape {tuple(tokens.shape)}"
            )
        x = self.hidden_states(tokens)
        if positions is not None:
            if positions.ndim != 2 or positions.shape[0] != tokens.shape[0]:
                raise ValueError(
                    f"MixerLM: positions must be [B, K] with B = {tokens.shape[0]}, got shape "
                    f"{tuple(positions.shape)}"
                )
            x = x.gather(1, positions.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return self.norm(x) @ self.embedding.weight.T

    def num_parameters(self) -> int:
        """Number of trained scalars (the tied head is counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def short_conv_spec(width: int, kernel_size: int = 4) -> dict[str, Any]:
    """Spec of the causal depthwise short convolution placed before each mixer."""
    from subq.nn.conv import ShortConv

    return LazyConfig(ShortConv)(channels=width, kernel_size=kernel_size, causal=True)


def lm_spec(
    mixer: str,
    *,
    vocab_size: int,
    width: int = 64,
    num_layers: int = 2,
    seq_len: int,
    short_conv_size: int | None = 4,
    mlp_ratio: float | None = None,
    mixer_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The spec of a :class:`MixerLM` with the registered mixer ``mixer``.

    Args:
        mixer: a registered mixer name (see :func:`registered_mixers`).
        vocab_size: number of tokens.
        width: model width.
        num_layers: number of blocks.
        seq_len: the sequence length the mixer is built for (long-convolution kernels are
            sized by it).
        short_conv_size: taps of the short causal convolution before each mixer; None for none.
        mlp_ratio: expansion of an MLP in each block; None for mixer-only blocks (as in Zoology's
            recall experiments).
        mixer_options: extra keyword arguments of the mixer's builder.
    """
    return LazyConfig(MixerLM)(
        vocab_size=vocab_size,
        width=width,
        num_layers=num_layers,
        mixer=mixer_spec(mixer, width=width, seq_len=seq_len, **(mixer_options or {})),
        short_conv=None if short_conv_size is None else short_conv_spec(width, short_conv_size),
        mlp=None if mlp_ratio is None else LazyConfig(MLP)(hidden_dim=width, ratio=mlp_ratio),
    )


def build_lm(spec: dict[str, Any], *, seed: int | None = None) -> MixerLM:
    """Build the model of ``spec``; with ``seed``, its parameters are seeded (``torch.manual_seed``).

    Example:
        >>> spec = lm_spec("attention", vocab_size=32, width=16, seq_len=8)
        >>> model = build_lm(spec, seed=0)
        >>> tokens = torch.zeros(2, 8, dtype=torch.long)
        >>> model(tokens).shape, model(tokens, torch.tensor([[1, 7], [0, 3]])).shape
        (torch.Size([2, 8, 32]), torch.Size([2, 2, 32]))
    """
    if seed is not None:
        torch.manual_seed(seed)
    model = instantiate(spec)
    if not isinstance(model, nn.Module):
        raise TypeError(f"build_lm: the spec built a {type(model).__name__}, not an nn.Module")
    return model


# ---------------------------------------------------------------------------------------------
# registered mixers: each wraps an inner mixer in subq's QKVSequenceMixer (shared Q/K/V and
# output projections), so the mixers differ only in how tokens are mixed.


@register_mixer("attention")
def attention_mixer_spec(*, width: int, seq_len: int, num_heads: int = 1) -> dict[str, Any]:
    """Causal softmax attention (no position encoding: the short conv gives local order)."""
    from subq.nn.attention import AttentionMixer
    from subq.nn.mixer import QKVSequenceMixer

    del seq_len  # attention has no length-dependent parameters
    return LazyConfig(QKVSequenceMixer)(
        hidden_dim=width,
        mixer_cfg=LazyConfig(AttentionMixer)(num_heads=num_heads, causal=True),
    )


@register_mixer("hyena")
def hyena_mixer_spec(*, width: int, seq_len: int, short_kernel_size: int = 3) -> dict[str, Any]:
    """Causal 1D Hyena with its implicit long-convolution filter sized for ``seq_len``."""
    from subq.nn.hyena import Hyena
    from subq.nn.mixer import QKVSequenceMixer

    return LazyConfig(QKVSequenceMixer)(
        hidden_dim=width,
        mixer_cfg=LazyConfig(Hyena)(
            max_size=seq_len, causal=True, short_kernel_size=short_kernel_size
        ),
    )
