"""The ``subq`` command: argument errors, bad demo settings, bench plumbing."""

from __future__ import annotations

import json

import pytest

from subq import cli


def _run(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        ([], "the following arguments are required: command"),
        (["nonsense"], "invalid choice: 'nonsense'"),
        (["demo", "--pairs", "0"], "argument --pairs: expected a positive integer, got '0'"),
        (["demo", "--seq-len", "abc"], "argument --seq-len: expected a positive integer"),
        (["demo", "--lr", "-1"], "argument --lr: expected a positive number, got '-1'"),
        (["demo", "--lr", "fast"], "argument --lr: expected a positive number, got 'fast'"),
        (["demo", "--epochs", "0"], "argument --epochs: expected a positive integer, got '0'"),
        (["demo", "--seed", "x"], "argument --seed: invalid int value: 'x'"),
        (["demo", "--mixers"], "argument --mixers: expected at least one argument"),
        (["demo", "--bogus"], "unrecognized arguments: --bogus"),
        (["bench", "--only"], "argument --only: expected at least one argument"),
    ],
)
def test_argument_errors_exit_2_with_a_message(capsys, argv, match):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert match in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--seq-len", "16", "--pairs", "5"], "4·num_pairs <= seq_len"),
        (["--vocab-size", "6", "--pairs", "3"], "vocab_size=6 is too small"),
        (["--mixers", "attention", "nope"], "unknown mixer 'nope'; registered mixers are"),
        (["--mixers", "hyena", "hyena"], "DemoConfig.mixers: names must be distinct"),
        (
            ["--vocab-size", "6", "--pairs", "2", "--seq-len", "8", "--test-examples", "500"],
            "could not draw num_train=1000 training sequences disjoint",
        ),
    ],
)
def test_bad_demo_settings_are_rejected_before_training(capsys, tmp_path, argv, match):
    out = tmp_path / "out"
    code, _, err = _run(capsys, "demo", "--quick", "--out", str(out), *argv)
    assert code == 2
    assert match in err and err.startswith("subq demo: error:")
    assert not out.exists()


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("info", "demo", "bench"):
        assert command in out


def test_bench_unknown_name_lists_the_registered_ones(capsys):
    # Checked before anything runs, as a usage error of `subq bench` (same checks as
    # `python -m subq.bench`).
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--only", "no_such_bench", "--quick", "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "subq bench: error: argument --only: unknown benchmark(s) ['no_such_bench']" in err
    assert "'rms_norm'" in err


def test_bench_device_and_out_are_checked_before_running(capsys, tmp_path):
    afile = tmp_path / "a_file"
    afile.write_text("")
    for argv, message in (
        (["--device", "nonsense:0"], "argument --device: 'nonsense:0' is not a torch device"),
        (["--out", str(afile)], "exists and is not a directory"),
    ):
        with pytest.raises(SystemExit):
            cli.main(["bench", "--only", "rms_norm", "--quick", *argv])
        assert message in capsys.readouterr().err


def test_bench_list_and_one_quick_benchmark(capsys, tmp_path):
    code, out, _ = _run(capsys, "bench", "--list")
    assert code == 0
    names = out.split()
    assert names, "no benchmark is registered"
    name = "rms_norm" if "rms_norm" in names else names[0]
    code, out, _ = _run(
        capsys, "bench", "--only", name, "--quick", "--device", "cpu", "--out", str(tmp_path)
    )
    assert code == 0
    assert f"== {name} ==" in out
    rows = json.loads((tmp_path / f"{name}.json").read_text())["rows"]
    assert rows and all(row["bench"] == name for row in rows)


def test_demo_command_runs_and_writes_results(capsys, tmp_path):
    out = tmp_path / "out"
    tiny = ["--seq-len", "16", "--pairs", "2", "--width", "16", "--train-examples", "64"]
    tiny += ["--test-examples", "16", "--epochs", "1", "--threads", "1", "--device", "cpu"]
    code, stdout, _ = _run(capsys, "demo", "--no-progress", "--out", str(out), *tiny)
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["mixer"] for r in results["results"]] == ["attention", "hyena"]
    assert results["settings"]["seq_len"] == 16 and results["settings"]["threads"] == 1
    assert "test acc" in stdout and "hyena" in stdout


def test_demo_command_rejects_an_unavailable_device(capsys, tmp_path):
    code, _, err = _run(capsys, "demo", "--quick", "--device", "nodevice", "--out", str(tmp_path))
    assert code == 2 and "device" in err


def test_demo_command_does_not_hide_a_failure_during_training(monkeypatch, tmp_path):
    # Only bad settings are usage errors (exit 2, one line); a ValueError raised while training
    # is a fault and propagates with its traceback.
    import subq.demo

    def broken_fit(*args, **kwargs):
        raise ValueError("fault inside training")

    monkeypatch.setattr(subq.demo, "fit", broken_fit)
    with pytest.raises(ValueError, match="fault inside training"):
        cli.main(["demo", "--quick", "--no-progress", "--out", str(tmp_path / "out")])
