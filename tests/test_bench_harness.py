"""The benchmark harness: timer, registry, table and JSON output (CPU smoke tests)."""

from __future__ import annotations

import io
import json
import re

import pytest
import torch

from subq.bench import harness
from subq.bench.harness import (
    Timing,
    bandwidth_columns,
    benchmark,
    copy_bandwidth,
    print_table,
    register_benchmark,
    rotation_count,
    run_benchmarks,
    write_json,
)


def test_benchmark_rotates_inputs_and_counts_calls():
    seen = []
    inputs = [(torch.tensor(i),) for i in range(3)]
    t = benchmark(lambda a: seen.append(int(a)), inputs, warmup=2, reps=7)
    assert isinstance(t, Timing)
    assert seen == [i % 3 for i in range(9)]
    assert t.reps == 7
    assert 0 <= t.p10_ms <= t.median_ms <= t.p90_ms


def test_benchmark_measures_wall_clock_on_cpu():
    import time

    t = benchmark(lambda: time.sleep(0.01), [()], warmup=0, reps=3)
    assert 9.0 <= t.median_ms < 200.0


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"inputs": []}, ValueError, r"benchmark: inputs must hold at least one argument tuple"),
        (
            {"inputs": [()], "reps": 0},
            ValueError,
            r"expected reps >= 1 and warmup >= 0, got reps=0",
        ),
        ({"inputs": [()], "warmup": -1}, ValueError, r"got reps=30, warmup=-1"),
        (
            {"inputs": [(), torch.ones(2)]},
            TypeError,
            r"inputs must be a list of argument tuples, got inputs\[1\] of type Tensor",
        ),
    ],
)
def test_benchmark_rejects_bad_arguments(kwargs, error, message):
    calls = []
    with pytest.raises(error, match=message):
        benchmark(lambda *a: calls.append(a), **kwargs)
    assert calls == []  # refused before any call


def test_copy_bandwidth_is_positive_and_cached():
    bw = copy_bandwidth("cpu", nbytes=2**20)
    assert bw > 0
    assert copy_bandwidth("cpu", nbytes=2**20) == bw
    with pytest.raises(ValueError, match="copy_bandwidth: nbytes must be positive, got 0"):
        copy_bandwidth("cpu", nbytes=0)


def test_bandwidth_columns():
    timing = Timing(median_ms=2.0, p10_ms=1.5, p90_ms=3.0, reps=5)
    # 4 GB in 2 ms is 2 TB/s, half of a 4 TB/s copy.
    assert bandwidth_columns(timing, 4 * 10**9, copy_bw=4e12) == {
        "ms": 2.0,
        "p10_ms": 1.5,
        "p90_ms": 3.0,
        "TB/s": 2.0,
        "frac_copy": 0.5,
    }


def test_rotation_count_on_cpu_is_one_and_validates():
    assert rotation_count(10, "cpu") == 1
    with pytest.raises(ValueError, match="bytes_per_set"):
        rotation_count(0, "cpu")


def test_register_benchmark_refuses_a_taken_name():
    @register_benchmark("_test_taken")
    def first(device, quick):
        return []

    with pytest.raises(ValueError, match="_test_taken"):

        @register_benchmark("_test_taken")
        def second(device, quick):
            return []

    del harness._BENCHMARKS["_test_taken"]


def test_print_table_aligns_columns_per_bench():
    buf = io.StringIO()
    rows = [
        {"bench": "a", "impl": "x", "ms": 1.23456},
        {"bench": "a", "impl": "longer", "ms": 0.5, "extra": [2, 3]},
        {"bench": "b", "impl": "y"},
    ]
    print_table(rows, file=buf)
    text = buf.getvalue()
    assert "== a ==" in text and "== b ==" in text
    assert "1.235" in text and "2x3" in text
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("impl"))
    assert header.index("ms") == len("longer  ")


def test_write_json_round_trips(tmp_path):
    rows = [{"impl": "a", "ms": 1.0, "shape": [2, 3]}]
    path = write_json(rows, tmp_path / "sub" / "r.json", meta={"device": "cpu"})
    data = json.loads(path.read_text())
    assert data == {"meta": {"device": "cpu"}, "rows": rows}


def test_write_json_is_strict_json_with_null_for_non_finite(tmp_path):
    rows = [{"impl": "a", "ratio": float("nan"), "nested": [float("inf"), 2.0]}]
    text = write_json(rows, tmp_path / "r.json").read_text()

    def refuse(constant):
        raise ValueError(f"non-JSON constant {constant}")

    data = json.loads(text, parse_constant=refuse)
    assert data["rows"] == [{"impl": "a", "ratio": None, "nested": [None, 2.0]}]


def test_run_benchmarks_rms_norm_quick_on_cpu(tmp_path, capsys):
    rows = run_benchmarks(["rms_norm"], device="cpu", out_dir=tmp_path, quick=True)
    impls = {r["impl"] for r in rows}
    assert {"subq (reference)", "F.rms_norm", "eager formula", "copy_"} <= impls
    timed = [r for r in rows if r["mode"] in ("fwd", "fwd+bwd")]
    assert {r["mode"] for r in timed} == {"fwd", "fwd+bwd"}
    assert all(r["bench"] == "rms_norm" and r["ms"] > 0 and r["TB/s"] > 0 for r in timed)
    # Every implementation agrees with the reference (bf16 rounding only).
    assert all(r["rel_err"] < 2e-2 for r in timed)
    data = json.loads((tmp_path / "rms_norm.json").read_text())
    assert data["rows"] == json.loads(json.dumps(rows))
    assert data["meta"]["device"] == "cpu" and data["meta"]["quick"] is True
    assert "== rms_norm ==" in capsys.readouterr().out


def test_run_benchmarks_rejects_unknown_names():
    with pytest.raises(ValueError, match="no_such_bench"):
        run_benchmarks(["no_such_bench"], device="cpu", quick=True)


def test_main_lists_benchmarks(capsys):
    from subq.bench.__main__ import main

    assert main(["--list"]) == 0
    assert "rms_norm" in capsys.readouterr().out.split()


@pytest.fixture
def tiny_benchmark():
    calls = []

    @register_benchmark("_test_tiny")
    def tiny(device, quick):
        calls.append((device, quick))
        t = benchmark(torch.add, [(torch.ones(4), torch.ones(4))], warmup=0, reps=2)
        return [{"impl": "add", "ms": t.median_ms}, {"bench": "_test_tiny_extra", "impl": "x"}]

    yield calls
    del harness._BENCHMARKS["_test_tiny"]


def test_main_runs_prints_and_writes_json(tiny_benchmark, tmp_path, capsys):
    from subq.bench.__main__ import main

    out = tmp_path / "results"
    assert main(["--only", "_test_tiny", "--quick", "--device", "cpu", "--out", str(out)]) == 0
    assert tiny_benchmark == [(torch.device("cpu"), True)]
    text = capsys.readouterr().out
    assert "== _test_tiny ==" in text and "== _test_tiny_extra ==" in text
    assert [p.name for p in out.iterdir()] == ["_test_tiny.json"]
    data = json.loads((out / "_test_tiny.json").read_text())
    assert data["meta"]["bench"] == "_test_tiny" and data["meta"]["quick"] is True
    assert data["meta"]["device"] == "cpu"
    # A row without a bench name gets the benchmark's; a row's own name is kept.
    assert [(r["bench"], r["impl"]) for r in data["rows"]] == [
        ("_test_tiny", "add"),
        ("_test_tiny_extra", "x"),
    ]
    assert data["rows"][0]["ms"] > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--only", "_test_tiny", "nope"], r"argument --only: unknown benchmark\(s\) \['nope'\]; "),
        (["--device", "nodevice"], r"argument --device: 'nodevice' is not a torch device"),
        (["--out", "FILE"], r"argument --out: '.*FILE' exists and is not a directory"),
        (["--quick", "--bogus"], r"unrecognized arguments: --bogus"),
    ],
)
def test_main_rejects_bad_arguments(tiny_benchmark, tmp_path, capsys, argv, message):
    from subq.bench.__main__ import main

    (tmp_path / "FILE").write_text("")
    argv = [str(tmp_path / "FILE") if a == "FILE" else a for a in argv]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert tiny_benchmark == []  # nothing ran


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)
def test_main_refuses_cuda_without_cuda(tiny_benchmark, capsys):
    from subq.bench.__main__ import main

    with pytest.raises(SystemExit):
        main(["--only", "_test_tiny", "--device", "cuda"])
    assert "argument --device: 'cuda', but CUDA is not available here" in capsys.readouterr().err
    assert tiny_benchmark == []
