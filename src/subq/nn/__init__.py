"""Module shells: thin ``nn.Module`` wrappers over the pure functions in :mod:`subq.functional`."""

from subq.nn.attention import (
    Attention,
    AttentionMixer,
)
from subq.nn.base import (
    Shell,
)
from subq.nn.ckconv import (
    CKConvND,
)
from subq.nn.conv import (
    ShortConv,
)
from subq.nn.hyena import (
    Hyena,
)
from subq.nn.mixer import (
    QKVSequenceMixer,
)
from subq.nn.norm import (
    L2Norm,
    LayerNorm,
    RMSNorm,
)
from subq.nn.positional import (
    ALiBi,
    LearnedPositionalEmbedding,
    SinusoidalPositionalEmbedding,
)
from subq.nn.rope import (
    RotaryEmbedding,
)

__all__ = [
    "ALiBi",
    "Attention",
    "AttentionMixer",
    "CKConvND",
    "Hyena",
    "L2Norm",
    "LayerNorm",
    "LearnedPositionalEmbedding",
    "QKVSequenceMixer",
    "RMSNorm",
    "RotaryEmbedding",
    "Shell",
    "ShortConv",
    "SinusoidalPositionalEmbedding",
]
