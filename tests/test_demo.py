"""``subq demo`` end to end (quick), its outputs, and its rejection of bad settings."""

from __future__ import annotations

import json

import pytest
import torch

from subq.demo import DemoConfig, DemoSettingsError, format_table, reference_accuracy, run_demo
from subq.lazy_config import instantiate
from subq.models import MixerLM, build_lm
from subq.tasks import MQARConfig, make_mqar
from subq.train import TrainConfig, fit


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    # `subq demo --quick` as it ships (default mixers, L=64, kv=4, d=64, 1000/200 examples,
    # 2 epochs: about 3 s), on one CPU thread so that it is repeatable.
    out = tmp_path_factory.mktemp("demo")
    lines: list[str] = []
    cfg = DemoConfig(quick=True, device="cpu", threads=1)
    summary = run_demo(cfg, out, progress=False, log=lines.append)
    return out, summary, "\n".join(lines)


def test_quick_demo_writes_every_output(quick_run):
    out, summary, printed = quick_run
    assert sorted(p.name for p in out.iterdir()) == [
        "accuracy.png",
        "config_attention.json",
        "config_hyena.json",
        "results.json",
    ]
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert [r["mixer"] for r in on_disk["results"]] == ["attention", "hyena"]
    # The quick sizes, resolved, are recorded with the settings as given.
    assert on_disk["settings"]["quick"] is True and on_disk["settings"]["num_train"] is None
    task, train = on_disk["task_config"], on_disk["train_config"]
    assert (task["seq_len"], task["num_pairs"], task["vocab_size"]) == (64, 4, 256)
    assert (task["num_train"], task["num_test"], train["epochs"]) == (1000, 200, 2)
    scored = task["num_test"] * task["num_pairs"]
    for r in on_disk["results"]:
        assert r["epochs"] == len(r["history"]) >= 1
        assert r["test_acc"] == r["history"][-1]["test_acc"]
        # An accuracy over the 800 scored query positions of the test split.
        assert 0.0 <= r["test_acc"] <= 1.0
        assert abs(r["test_acc"] * scored - round(r["test_acc"] * scored)) < 1e-9
        assert r["parameters"] > 0 and r["wall_s"] > 0
        assert r["reference_acc"] == reference_accuracy(r["mixer"], 64, 4, 64)
        # The printed table reports each mixer's accuracy.
        assert any(
            line.startswith(r["mixer"]) and f"{r['test_acc']:.3f}" in line
            for line in printed.splitlines()
        )


def test_saved_config_rebuilds_the_model(quick_run):
    out, summary, _ = quick_run
    saved = json.loads((out / "config_hyena.json").read_text())
    assert saved["task"]["seq_len"] == 64 and saved["train"]["weight_decay"] == 0.1
    torch.manual_seed(0)
    model = instantiate(saved["model"])
    assert isinstance(model, MixerLM)
    hyena = next(r for r in summary["results"] if r["mixer"] == "hyena")
    assert model.num_parameters() == hyena["parameters"]


def test_saved_config_reproduces_the_reported_accuracy(quick_run):
    # config_<mixer>.json is the whole run: rebuilding the data, the model and the training from
    # it alone gives the reported accuracies epoch by epoch.
    out, summary, _ = quick_run
    saved = json.loads((out / "config_attention.json").read_text())
    reported = next(r for r in summary["results"] if r["mixer"] == "attention")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = make_mqar(MQARConfig(**saved["task"]))
        model = build_lm(saved["model"], seed=saved["seed"])
        run = fit(model, data, TrainConfig(**saved["train"]), progress=False)
    finally:
        torch.set_num_threads(threads)
    assert [h.test_acc for h in run.history] == [h["test_acc"] for h in reported["history"]]
    assert [h.train_loss for h in run.history] == [h["train_loss"] for h in reported["history"]]


def test_reference_figures():
    assert reference_accuracy("hyena", 64, 4, 64) == 0.52
    assert reference_accuracy("attention", 64, 4, 64) == 1.0
    assert reference_accuracy("hyena", 32, 4, 32) is None
    table = format_table(
        [
            {
                "mixer": "hyena",
                "parameters": 1234,
                "test_acc": 0.5,
                "epochs": 3,
                "wall_s": 1.0,
                "reference_acc": 0.52,
            },
            {
                "mixer": "x",
                "parameters": 1,
                "test_acc": 1.0,
                "epochs": 1,
                "wall_s": 2.0,
                "reference_acc": None,
            },
        ]
    )
    assert "0.52" in table and "1,234" in table and "—" in table


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seq_len": 16, "pairs": 8}, r"4·num_pairs <= seq_len"),
        ({"vocab_size": 8, "pairs": 4, "seq_len": 16}, r"vocab_size=8 is too small"),
        ({"mixers": ("attention", "mamba9")}, r"unknown mixer 'mamba9'; registered mixers are"),
        (
            {"device": "cuda:7"} if not torch.cuda.is_available() else {"device": "nodevice"},
            r"device: 'cuda:7' was asked for but CUDA is not available"
            if not torch.cuda.is_available()
            else r"device: expected a torch device",
        ),
        # Only 2 keys and 2 values: 500 test sequences leave none for a disjoint train split.
        (
            {"vocab_size": 6, "pairs": 2, "seq_len": 8, "num_train": 500, "num_test": 500},
            r"could not draw num_train=500 training sequences disjoint",
        ),
    ],
)
def test_bad_settings_fail_before_training(tmp_path, kwargs, match):
    out = tmp_path / "out"
    with pytest.raises(DemoSettingsError, match=match):
        run_demo(DemoConfig(quick=True, **kwargs), out, progress=False, log=lambda _: None)
    assert not out.exists()  # nothing was trained or written


def test_a_cuda_index_beyond_the_devices_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    out = tmp_path / "out"
    with pytest.raises(
        DemoSettingsError, match=r"'cuda:2' .* has 2 CUDA devices \(cuda:0 to cuda:1\)"
    ):
        run_demo(DemoConfig(quick=True, device="cuda:2"), out, progress=False, log=lambda _: None)
    assert not out.exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": 0}, r"DemoConfig.lr: expected a positive number, got 0.0"),
        ({"width": 0}, r"DemoConfig.width: expected a positive int, got 0"),
        ({"epochs": -1}, r"DemoConfig.epochs: expected a positive int, got -1"),
        ({"mixers": ()}, r"DemoConfig.mixers: expected at least one mixer name, got none"),
        ({"mixers": ("hyena", "hyena")}, r"DemoConfig.mixers: names must be distinct"),
    ],
)
def test_bad_config_fields_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DemoConfig(**kwargs)
