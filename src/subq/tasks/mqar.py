"""Multi-query associative recall (MQAR), the recall test of Zoology (Arora et al., 2023).

A sequence of length ``L`` over a vocabulary of ``V`` tokens starts with ``kv`` key–value pairs
``k1 v1 k2 v2 …`` (keys distinct, drawn from ``[1, V/2)``; values distinct, drawn from
``[V/2, V)``). The rest of the sequence is the query region: every key appears once more, at an
even offset of the region chosen with power-law gaps ``p(g) ∝ g^(a−1)`` (``a = 0.01``), so most
queries sit close to the pairs; every other position holds the filler token ``0``. At each query
position the model must predict the value that was bound to that key; every other position is
ignored (label ``-100``, PyTorch's ``ignore_index``). Accuracy is measured over query positions.

The generator is vectorised over examples and draws every random number from one
``torch.Generator`` seeded from the config, so a config always gives the same data.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from subq import _validators as check
from subq._pytree import pytree_node
from subq._typing import Int

__all__ = [
    "IGNORE_INDEX",
    "MQARConfig",
    "MQARData",
    "MQARSplit",
    "make_mqar",
    "mqar_examples",
]

IGNORE_INDEX = -100
"""Label of the positions that are not scored (``torch.nn.functional.cross_entropy``'s default)."""


@attrs.frozen(kw_only=True)
class MQARConfig:
    """Settings of an MQAR data set; impossible settings are rejected at construction.

    Attributes:
        vocab_size: ``V``; keys come from ``[1, V/2)`` and values from ``[V/2, V)``.
        seq_len: ``L``, tokens per example.
        num_pairs: ``kv``, key–value pairs (and queries) per example.
        num_train: training examples.
        num_test: test examples; no test sequence occurs in the training set.
        power_a: exponent ``a`` of the query-gap distribution ``p(g) ∝ g^(a−1)``.
        seed: seed of the generator.
    """

    vocab_size: int = attrs.field(default=256, validator=check.positive_int)
    seq_len: int = attrs.field(default=64, validator=check.positive_int)
    num_pairs: int = attrs.field(default=4, validator=check.positive_int)
    num_train: int = attrs.field(default=20_000, validator=check.positive_int)
    num_test: int = attrs.field(default=1_000, validator=check.positive_int)
    power_a: float = attrs.field(
        default=0.01, converter=float, validator=check.in_range(0, 1, low_open=True)
    )
    seed: int = attrs.field(default=0, validator=check.an_int)

    def __attrs_post_init__(self) -> None:
        kv, length, vocab = self.num_pairs, self.seq_len, self.vocab_size
        if 4 * kv > length:
            # The pairs take 2·kv tokens; the queries sit at even offsets of the remaining
            # L − 2·kv tokens, which hold kv distinct even offsets only if L ≥ 4·kv.
            raise ValueError(
                f"MQARConfig: need 4·num_pairs <= seq_len (2·kv tokens of pairs plus kv queries at "
                f"distinct even offsets of the query region), got num_pairs={kv}, "
                f"seq_len={length} (4·kv = {4 * kv})"
            )
        num_keys, num_values = vocab // 2 - 1, vocab - vocab // 2
        if min(num_keys, num_values) < kv:
            raise ValueError(
                f"MQARConfig: vocab_size={vocab} is too small for num_pairs={kv} distinct keys in "
                f"[1, V/2) ({num_keys} available) and distinct values in [V/2, V) "
                f"({num_values} available); need vocab_size >= {2 * kv + 2}"
            )

    @property
    def query_region(self) -> int:
        """Length of the query region, ``L − 2·kv``."""
        return self.seq_len - 2 * self.num_pairs


@pytree_node
@attrs.define
class MQARSplit:
    """One split of an MQAR data set.

    Attributes:
        inputs: token ids.
        labels: the value at query positions, ``IGNORE_INDEX`` elsewhere.
        query_positions: the ``kv`` query positions of each example, ascending.
        targets: the value to predict at each query position (``labels`` gathered there).
    """

    inputs: Int[Tensor, "n t"]
    labels: Int[Tensor, "n t"]
    query_positions: Int[Tensor, "n kv"]
    targets: Int[Tensor, "n kv"]

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def to(self, device: torch.device | str) -> MQARSplit:
        """The same split on ``device``."""
        return MQARSplit(
            inputs=self.inputs.to(device),
            labels=self.labels.to(device),
            query_positions=self.query_positions.to(device),
            targets=self.targets.to(device),
        )


@attrs.frozen
class MQARData:
    """Train and test splits with the config that made them."""

    config: MQARConfig
    train: MQARSplit
    test: MQARSplit


def _distinct_choice(
    n: int, low: int, high: int, k: int, generator: torch.Generator
) -> Int[Tensor, "n k"]:
    """``k`` distinct integers from ``[low, high)`` per row, uniformly (a random permutation prefix)."""
    scores = torch.rand(n, high - low, generator=generator)
    return scores.argsort(dim=1)[:, :k] + low


def mqar_examples(cfg: MQARConfig, n: int, generator: torch.Generator) -> MQARSplit:
    """Draw ``n`` MQAR examples with ``generator`` (duplicates are not removed here).

    Args:
        cfg: the task settings (its ``num_train``, ``num_test`` and ``seed`` are not used).
        n: number of examples.
        generator: the source of every random number.
    """
    kv, length, vocab = cfg.num_pairs, cfg.seq_len, cfg.vocab_size
    keys = _distinct_choice(n, 1, vocab // 2, kv, generator)
    values = _distinct_choice(n, vocab // 2, vocab, kv, generator)

    # Query gaps: kv distinct slots g of the query region's (L − 2kv) // 2 even offsets, drawn
    # without replacement with p(g) ∝ (g + 1)^(a − 1), so small gaps (queries near the pairs)
    # dominate. The slot of key j is gap j: keys are queried in a random order.
    slots = cfg.query_region // 2
    weights = torch.arange(1, slots + 1, dtype=torch.float64) ** (cfg.power_a - 1)
    gaps = torch.multinomial(weights.expand(n, slots), kv, replacement=False, generator=generator)

    inputs = torch.zeros(n, length, dtype=torch.long)
    pair_pos = 2 * torch.arange(kv)
    inputs[:, pair_pos] = keys
    inputs[:, pair_pos + 1] = values
    query_pos = 2 * kv + 2 * gaps
    inputs.scatter_(1, query_pos, keys)
    labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
    labels.scatter_(1, query_pos, values)

    query_positions, order = query_pos.sort(dim=1)
    targets = values.gather(1, order)
    return MQARSplit(inputs=inputs, labels=labels, query_positions=query_positions, targets=targets)


def _row_keys(inputs: Tensor) -> list[bytes]:
    return [row.numpy().tobytes() for row in inputs]


def make_mqar(cfg: MQARConfig) -> MQARData:
    """Generate the train and test splits of ``cfg``, deterministically from ``cfg.seed``.

    The test split is drawn first; training examples whose token sequence equals a test sequence
    are dropped and redrawn, so the splits never overlap (sequences within one split may repeat
    when the space of sequences is small, as in the paper's generator).

    Example:
        >>> data = make_mqar(MQARConfig(seq_len=16, num_pairs=2, num_train=8, num_test=4))
        >>> data.train.inputs.shape, data.test.query_positions.shape
        (torch.Size([8, 16]), torch.Size([4, 2]))
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    test = mqar_examples(cfg, cfg.num_test, generator)
    seen = set(_row_keys(test.inputs))
    parts: list[MQARSplit] = []
    have = 0
    for _ in range(100):
        batch = mqar_examples(cfg, cfg.num_train - have, generator)
        keep = torch.tensor([key not in seen for key in _row_keys(batch.inputs)], dtype=torch.bool)
        parts.append(torch.utils._pytree.tree_map(lambda t, keep=keep: t[keep], batch))
        have += int(keep.sum())
        if have == cfg.num_train:
            break
    else:
        raise ValueError(
            f"make_mqar: could not draw num_train={cfg.num_train} training sequences disjoint from "
            f"the {cfg.num_test} test sequences; the task (vocab_size={cfg.vocab_size}, "
            f"seq_len={cfg.seq_len}, num_pairs={cfg.num_pairs}) has too few distinct sequences"
        )
    train = torch.utils._pytree.tree_map(lambda *ts: torch.cat(ts), *parts)
    return MQARData(config=cfg, train=train, test=test)
