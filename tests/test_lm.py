"""The small LM, its mixer registry and the training loop."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from subq.lazy_config import LazyConfig, from_json, instantiate, to_json
from subq.models import (
    MixerLM,
    build_lm,
    lm_spec,
    mixer_spec,
    register_mixer,
    registered_mixers,
)
from subq.models import lm as lm_module
from subq.tasks import IGNORE_INDEX, MQARConfig, make_mqar
from subq.testing import assert_causal, compute_relative_error
from subq.train import TrainConfig, _make_schedule, evaluate, fit, make_optimizer

V, L, D = 32, 16, 16


@pytest.fixture
def token_mixer(monkeypatch):
    """A test-only mixer (a per-token linear map: trivially causal), removed after the test."""

    def build(*, width: int, seq_len: int) -> dict:
        del seq_len
        return LazyConfig(nn.Linear)(in_features=width, out_features=width, bias=False)

    monkeypatch.setitem(lm_module._MIXERS, "test_token", build)
    return "test_token"


@pytest.mark.parametrize("name", registered_mixers())
def test_every_registered_mixer_builds_and_is_causal(name):
    spec = lm_spec(name, vocab_size=V, width=D, num_layers=2, seq_len=L)
    model = build_lm(spec, seed=0).double()
    assert isinstance(model, MixerLM)
    tokens = torch.randint(0, V, (2, L), generator=torch.Generator().manual_seed(0))
    logits = model(tokens)
    assert logits.shape == (2, L, V)
    assert torch.isfinite(logits).all()
    # Causality of the whole stack, through the embedding output (inputs are token ids).
    emb = model.embedding(tokens).detach()

    def from_embeddings(x):
        for block in model.blocks:
            x = block(x)
        return x

    assert_causal(from_embeddings, emb)
    # The spec is JSON and rebuilds an identical model.
    rebuilt = build_lm(from_json(to_json(spec)), seed=0).double()
    assert torch.equal(rebuilt(tokens), logits)


def test_the_demo_mixers_are_registered():
    assert {"attention", "hyena"} <= set(registered_mixers())


def test_query_logits_equal_full_logits_gathered(token_mixer):
    model = build_lm(lm_spec(token_mixer, vocab_size=V, width=D, seq_len=L), seed=1).double()
    tokens = torch.randint(0, V, (3, L), generator=torch.Generator().manual_seed(1))
    positions = torch.tensor([[0, 5, 15], [2, 3, 4], [15, 14, 1]])
    full = model(tokens)
    gathered = full.gather(1, positions.unsqueeze(-1).expand(-1, -1, V))
    assert compute_relative_error(gathered, model(tokens, positions)) < 1e-12


def test_head_is_tied_to_the_embedding(token_mixer):
    model = build_lm(lm_spec(token_mixer, vocab_size=V, width=D, seq_len=L), seed=0)
    names = [name for name, _ in model.named_parameters()]
    assert not any("head" in n for n in names)
    hidden = model.norm(model.hidden_states(torch.zeros(1, 4, dtype=torch.long)))
    expected = hidden @ model.embedding.weight.T
    assert torch.equal(model(torch.zeros(1, 4, dtype=torch.long)), expected)


def test_blocks_have_independent_mixers_and_the_configured_parts(token_mixer):
    spec = lm_spec(token_mixer, vocab_size=V, width=D, num_layers=3, seq_len=L, mlp_ratio=2.0)
    model = build_lm(spec, seed=0)
    assert len(model.blocks) == 3
    w0, w1 = model.blocks[0].mixer.weight, model.blocks[1].mixer.weight
    assert w0 is not w1 and not torch.equal(w0, w1)
    assert model.blocks[0].short_conv.params().weight.shape == (D, 4)
    assert model.blocks[0].mlp.up.weight.shape == (2 * D, D)
    no_conv = build_lm(
        lm_spec(token_mixer, vocab_size=V, width=D, seq_len=L, short_conv_size=None), seed=0
    )
    assert no_conv.blocks[0].short_conv is None and no_conv.blocks[0].mlp is None


def test_seeded_builds_are_identical(token_mixer):
    spec = lm_spec(token_mixer, vocab_size=V, width=D, seq_len=L)
    a, b = build_lm(spec, seed=5), build_lm(spec, seed=5)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)


def test_unknown_mixer_lists_the_registered_ones():
    with pytest.raises(
        ValueError, match=r"unknown mixer 'nope'; registered mixers are .*attention"
    ):
        mixer_spec("nope", width=D, seq_len=L)


def test_register_mixer_rejects_a_second_builder_under_one_name():
    with pytest.raises(ValueError, match="already registered"):

        @register_mixer("attention")
        def other(*, width, seq_len):  # pragma: no cover - never called
            return {}


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="width must be a positive int, got 0"):
        MixerLM(vocab_size=V, width=0, num_layers=1, mixer=None)
    model = MixerLM(
        vocab_size=V, width=D, num_layers=1, mixer=LazyConfig(nn.Identity)(), short_conv=None
    )
    with pytest.raises(ValueError, match=r"tokens must be \[B, T\]"):
        model(torch.zeros(2, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"positions must be \[B, K\] with B = 2"):
        model(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(TypeError, match=r"must build an nn\.Module"):
        MixerLM(vocab_size=V, width=D, num_layers=1, mixer=LazyConfig(dict)())


def test_weight_decay_only_on_matrices(token_mixer):
    model = build_lm(lm_spec(token_mixer, vocab_size=V, width=D, seq_len=L), seed=0)
    opt = make_optimizer(model, TrainConfig(weight_decay=0.1))
    by_decay = {g["weight_decay"]: g["params"] for g in opt.param_groups}
    assert all(p.ndim >= 2 for p in by_decay[0.1])
    assert all(p.ndim < 2 for p in by_decay[0.0])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(
        p.numel() for p in model.parameters()
    )
    assert any(p is model.embedding.weight for p in by_decay[0.1])


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_fit_learns_and_is_deterministic(token_mixer, schedule):
    # A per-token mixer cannot recall, but it can learn which tokens are values: the test loss
    # must fall below its initial value. Two runs from one seed must agree exactly.
    task = MQARConfig(vocab_size=V, seq_len=L, num_pairs=2, num_train=256, num_test=64, seed=0)
    data = make_mqar(task)
    spec = lm_spec(token_mixer, vocab_size=V, width=D, seq_len=L)
    cfg = TrainConfig(epochs=3, batch_size=32, lr=3e-3, schedule=schedule, early_stop_acc=None)
    runs = []
    for _ in range(2):
        model = build_lm(spec, seed=0)
        before = evaluate(model, data.test)[0]
        result = fit(model, data, cfg, progress=False)
        runs.append((result, model))
    (r1, m1), (r2, m2) = runs
    assert [h.test_acc for h in r1.history] == [h.test_acc for h in r2.history]
    assert [h.train_loss for h in r1.history] == [h.train_loss for h in r2.history]
    assert r1.epochs == 3 and not r1.stopped_early
    assert r1.history[-1].test_loss < before
    for pa, pb in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(pa, pb)


def test_fit_stops_early(token_mixer):
    task = MQARConfig(vocab_size=V, seq_len=L, num_pairs=2, num_train=64, num_test=32)
    data = make_mqar(task)
    model = build_lm(lm_spec(token_mixer, vocab_size=V, width=D, seq_len=L), seed=0)
    # Any accuracy reaches a threshold of 0: the first epoch ends the run.
    result = fit(model, data, TrainConfig(epochs=5, early_stop_acc=0.0), progress=False)
    assert result.epochs == 1 and result.stopped_early


def test_evaluate_scores_only_the_labelled_positions(token_mixer):
    # evaluate (logits at query positions only) equals the full-sequence loss and accuracy over
    # the labels, whose every other position is IGNORE_INDEX.
    task = MQARConfig(vocab_size=V, seq_len=L, num_pairs=3, num_train=8, num_test=40, seed=2)
    split = make_mqar(task).test
    model = build_lm(lm_spec(token_mixer, vocab_size=V, width=D, seq_len=L), seed=3).double()
    loss, acc = evaluate(model, split, batch_size=16)  # batches of 16, 16 and 8
    with torch.no_grad():
        logits = model(split.inputs)
    labels = split.labels
    expected_loss = F.cross_entropy(
        logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX
    )
    scored = labels != IGNORE_INDEX
    assert int(scored.sum()) == 40 * 3
    expected_acc = float((logits.argmax(-1)[scored] == labels[scored]).double().mean())
    assert abs(loss - float(expected_loss)) < 1e-12
    assert acc == expected_acc


def _learning_rates(schedule: str, total_steps: int = 100, warmup: float = 0.1) -> list[float]:
    cfg = TrainConfig(lr=1.0, schedule=schedule, warmup=warmup)
    optimizer = make_optimizer(nn.Linear(2, 2), cfg)
    scheduler = _make_schedule(optimizer, cfg, total_steps)
    rates = []
    for _ in range(total_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_cosine_schedule_warms_up_linearly_then_decays_to_zero():
    rates = _learning_rates("cosine")
    assert rates[:10] == pytest.approx([(i + 1) / 10 for i in range(10)], abs=1e-12)
    after = rates[10:]
    expected = [0.5 * (1 + math.cos(math.pi * i / 90)) for i in range(90)]
    assert after == pytest.approx(expected, abs=1e-12)
    assert rates[-1] < 1e-3


def test_onecycle_and_constant_schedules():
    rates = _learning_rates("onecycle", warmup=0.3)
    peak = max(range(100), key=rates.__getitem__)
    assert abs(peak - 29) <= 1 and rates[peak] == pytest.approx(1.0, abs=1e-12)
    assert rates[0] < 0.05 and rates[-1] < 1e-3
    assert all(a <= b for a, b in itertools.pairwise(rates[: peak + 1]))
    assert all(a >= b for a, b in itertools.pairwise(rates[peak:]))
    assert _learning_rates("constant") == [1.0] * 100


def test_progress_bar_shows_loss_and_accuracy(token_mixer, capsys):
    task = MQARConfig(vocab_size=V, seq_len=L, num_pairs=2, num_train=64, num_test=16)
    model = build_lm(lm_spec(token_mixer, vocab_size=V, width=D, seq_len=L), seed=0)
    cfg = TrainConfig(epochs=2, batch_size=32, early_stop_acc=None)
    result = fit(model, make_mqar(task), cfg, progress=True, desc="probe")
    err = capsys.readouterr().err
    final = err.replace("\r", "\n").strip().splitlines()[-1]
    assert final.startswith("probe") and "4/4" in final
    assert f"loss={result.history[-1].train_loss:.3f}" in final
    assert f"acc={result.test_acc:.3f}" in final and "epoch=2" in final


def test_bad_train_settings():
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match=r"lr: expected a positive number, got 0.0"):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match=r"early_stop_acc: expected a number in \[0, 1\]"):
        TrainConfig(early_stop_acc=1.5)
    with pytest.raises(ValueError, match=r"warmup: expected a number in \[0, 1\], got 1.5$"):
        TrainConfig(warmup=1.5)
    with pytest.raises(ValueError, match=r"TrainConfig\.seed: expected an int, got False"):
        TrainConfig(seed=False)


def test_spec_is_plain_json():
    spec = lm_spec("attention", vocab_size=V, width=D, seq_len=L)
    text = to_json(spec)
    assert json.loads(text)["mixer"]["_target_"] == "subq.nn.mixer.QKVSequenceMixer"
    assert isinstance(instantiate(from_json(text)), MixerLM)
