"""Synthetic tasks for sequence mixers (used by ``subq demo`` and the benchmarks)."""

from subq.tasks.mqar import (
    IGNORE_INDEX,
    MQARConfig,
    MQARData,
    MQARSplit,
    make_mqar,
    mqar_examples,
)

__all__ = ["IGNORE_INDEX", "MQARConfig", "MQARData", "MQARSplit", "make_mqar", "mqar_examples"]
