"""Models built from subq's layers; the mixer registry used by ``subq demo``."""

from subq.models.lm import (
    MLP,
    MixerBlock,
    MixerLM,
    build_lm,
    check_mixer_names,
    lm_spec,
    mixer_spec,
    register_mixer,
    registered_mixers,
    short_conv_spec,
)

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
