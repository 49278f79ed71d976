"""``subq demo`` end to end (quick), its outputs, and its rejection of bad settings."""

from __future__ import annotations

import json

import pytest
import torch

from subq.demo import DemoConfig, format_table, reference_accuracy, run_demo
from subq.lazy_config import instantiate
from subq.models import MixerLM


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    lines: list[str] = []
    # Shorter sequences and fewer examples than --quick's defaults keep the suite fast; the
    # pipeline (both default mixers, every output) is the same.
    cfg = DemoConfig(
        quick=True,
        seq_len=32,
        pairs=4,
        width=32,
        num_train=256,
        num_test=64,
        device="cpu",
        threads=1,
    )
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
    for r in on_disk["results"]:
        assert 0.0 <= r["test_acc"] <= 1.0
        assert r["epochs"] == len(r["history"]) >= 1
        assert r["parameters"] > 0 and r["wall_s"] > 0
        # The printed table reports each mixer's accuracy.
        assert any(
            line.startswith(r["mixer"]) and f"{r['test_acc']:.3f}" in line
            for line in printed.splitlines()
        )


def test_saved_config_rebuilds_the_model(quick_run):
    out, summary, _ = quick_run
    saved = json.loads((out / "config_hyena.json").read_text())
    assert saved["task"]["seq_len"] == 32 and saved["train"]["weight_decay"] == 0.1
    torch.manual_seed(0)
    model = instantiate(saved["model"])
    assert isinstance(model, MixerLM)
    hyena = next(r for r in summary["results"] if r["mixer"] == "hyena")
    assert model.num_parameters() == hyena["parameters"]


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
        ({"mixers": ()}, r"at least one mixer"),
        ({"mixers": ("hyena", "hyena")}, r"distinct"),
        (
            {"device": "cuda:7"} if not torch.cuda.is_available() else {"device": "nodevice"},
            r"device",
        ),
    ],
)
def test_bad_settings_fail_before_training(tmp_path, kwargs, match):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        run_demo(DemoConfig(quick=True, **kwargs), out, progress=False, log=lambda _: None)
    assert not out.exists()  # nothing was trained or written
