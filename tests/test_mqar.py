"""The MQAR generator: layout, labels, split disjointness, determinism, bad settings."""

from __future__ import annotations

import attrs
import pytest
import torch
from torch.utils._pytree import tree_leaves

from subq.tasks import IGNORE_INDEX, MQARConfig, make_mqar, mqar_examples

SMALL = MQARConfig(vocab_size=64, seq_len=32, num_pairs=4, num_train=300, num_test=100, seed=3)


@pytest.fixture(scope="module")
def data():
    return make_mqar(SMALL)


def test_shapes_and_dtypes(data):
    for split, n in ((data.train, SMALL.num_train), (data.test, SMALL.num_test)):
        assert split.inputs.shape == (n, SMALL.seq_len)
        assert split.labels.shape == (n, SMALL.seq_len)
        assert split.query_positions.shape == (n, SMALL.num_pairs)
        assert split.targets.shape == (n, SMALL.num_pairs)
        for t in (split.inputs, split.labels, split.query_positions, split.targets):
            assert t.dtype == torch.long
    assert len(data.train) == SMALL.num_train


def test_layout_of_each_example(data):
    kv, half, vocab = SMALL.num_pairs, SMALL.vocab_size // 2, SMALL.vocab_size
    for split in (data.train, data.test):
        keys = split.inputs[:, 0 : 2 * kv : 2]
        values = split.inputs[:, 1 : 2 * kv : 2]
        assert ((keys >= 1) & (keys < half)).all()
        assert ((values >= half) & (values < vocab)).all()
        # Keys (and values) are distinct within an example.
        assert (keys.sort(dim=1).values.diff(dim=1) > 0).all()
        assert (values.sort(dim=1).values.diff(dim=1) > 0).all()
        for i in range(len(split)):
            x, y = split.inputs[i], split.labels[i]
            pos = split.query_positions[i]
            binding = dict(zip(keys[i].tolist(), values[i].tolist()))
            # Queries sit in the query region at even offsets, ascending.
            assert (pos >= 2 * kv).all() and ((pos - 2 * kv) % 2 == 0).all()
            assert (pos.diff() > 0).all()
            # Every key is queried exactly once; the query region is filler elsewhere.
            region = x[2 * kv :]
            assert sorted(x[pos].tolist()) == sorted(binding)
            assert int((region != 0).sum()) == kv
            # Labels: the bound value at query positions, ignored everywhere else.
            scored = (y != IGNORE_INDEX).nonzero().flatten()
            assert scored.tolist() == pos.tolist()
            assert y[pos].tolist() == [binding[k] for k in x[pos].tolist()]
            assert split.targets[i].tolist() == y[pos].tolist()


def _gap_frequencies(cfg: MQARConfig, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Observed counts of each query slot over ``n`` examples, and their expected counts."""
    split = mqar_examples(cfg, n, torch.Generator().manual_seed(0))
    gaps = (split.query_positions[:, 0] - 2 * cfg.num_pairs) // 2
    slots = cfg.query_region // 2
    weights = torch.arange(1, slots + 1, dtype=torch.float64) ** (cfg.power_a - 1)
    observed = torch.bincount(gaps, minlength=slots).double()
    return observed, n * weights / weights.sum()


def test_query_gaps_follow_the_power_law():
    # kv = 1: the single query's slot g (0-based) has p(g) ∝ (g + 1)^(a − 1), a = 0.01. Pearson's
    # chi-square over the 31 slots must stay below the 0.999 quantile of chi²(30) (59.70): the
    # seeded sample gives 33.6; against a uniform placement (a = 1) it gives 7964, a = 0.5 1376.
    cfg = MQARConfig(vocab_size=64, seq_len=64, num_pairs=1, num_train=1, num_test=1)
    observed, expected = _gap_frequencies(cfg, 4000)
    assert observed.shape == (31,)
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 59.70
    # The statistic does reject another exponent on this sample.
    other = attrs.evolve(cfg, power_a=0.5)
    _, expected_other = _gap_frequencies(other, 4000)
    assert float(((observed - expected_other) ** 2 / expected_other).sum()) > 59.70


def test_train_and_test_do_not_overlap():
    # A tiny task (few distinct sequences) forces collisions that must be redrawn.
    cfg = MQARConfig(vocab_size=8, seq_len=8, num_pairs=2, num_train=200, num_test=50, seed=1)
    data = make_mqar(cfg)
    test_rows = {tuple(r) for r in data.test.inputs.tolist()}
    assert len(data.train) == cfg.num_train
    assert not any(tuple(r) in test_rows for r in data.train.inputs.tolist())
    # Without deduplication this task would have overlapped (so the check above can fail).
    raw = mqar_examples(cfg, cfg.num_train, torch.Generator().manual_seed(99))
    assert any(tuple(r) in test_rows for r in raw.inputs.tolist())


def test_impossible_disjoint_split_is_reported():
    # Only 2 keys × 2 values × few placements: cannot find 500 train rows outside the test set.
    cfg = MQARConfig(vocab_size=6, seq_len=8, num_pairs=2, num_train=500, num_test=500)
    with pytest.raises(ValueError, match="disjoint"):
        make_mqar(cfg)


def test_deterministic_and_seed_dependent(data):
    again = make_mqar(SMALL)
    for first, second in ((data.train, again.train), (data.test, again.test)):
        for a, b in zip(tree_leaves(first), tree_leaves(second), strict=True):
            assert torch.equal(a, b)
    other = make_mqar(attrs.evolve(SMALL, seed=4))
    assert not torch.equal(other.train.inputs, data.train.inputs)
    assert not torch.equal(other.test.inputs, data.test.inputs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seq_len": 15, "num_pairs": 4}, r"4·num_pairs <= seq_len"),
        ({"vocab_size": 8, "num_pairs": 4}, r"vocab_size=8 is too small"),
        # Odd V: [1, V/2) holds only 3 keys for 4 pairs.
        ({"vocab_size": 9, "num_pairs": 4}, r"vocab_size=9 is too small .* need vocab_size >= 10"),
        ({"seq_len": 0}, r"seq_len: expected a positive int, got 0"),
        ({"num_pairs": 2.0}, r"num_pairs: expected a positive int"),
        ({"power_a": 0.0}, r"power_a"),
        ({"seed": True}, r"MQARConfig\.seed: expected an int, got True"),
    ],
)
def test_bad_settings_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MQARConfig(**kwargs)


def test_smallest_possible_settings_are_accepted():
    # The bounds of both constraints are inclusive: L = 4·kv and V = 2·kv + 2 generate.
    cfg = MQARConfig(vocab_size=10, seq_len=16, num_pairs=4, num_train=8, num_test=4)
    data = make_mqar(cfg)
    keys = data.train.inputs[:, 0:8:2]
    assert ((keys >= 1) & (keys < 5)).all() and (keys.sort(dim=1).values.diff(dim=1) > 0).all()
    # The 4 queries fill all 4 even offsets of the query region, up to position L − 2.
    assert (data.train.query_positions == torch.tensor([8, 10, 12, 14])).all()


def test_to_device_round_trip(data):
    moved = data.test.to("cpu")
    assert torch.equal(moved.targets, data.test.targets)
