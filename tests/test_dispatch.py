"""The backend dispatcher: decisions from static facts, explanations, strict mode, errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

import subq
from subq.functional.norm import RMSNormConfig, init_rms_norm, rms_norm
from subq.ops import capabilities, dispatch
from subq.ops.capabilities import cuda_supports_quack, module_available, quack_unavailable_reason
from subq.ops.dispatch import (
    Backend,
    BackendUnavailableError,
    Op,
    explain,
    get_op,
    is_strict,
    registered_ops,
    strict,
)


@pytest.fixture
def ops_registry(monkeypatch):
    """A private copy of the op registry, so test ops do not leak into ``subq info``."""
    monkeypatch.setattr(dispatch, "_OPS", dict(dispatch._OPS))
    monkeypatch.delenv("SUBQ_STRICT_DISPATCH", raising=False)


def _needs_fp16(facts):
    return None if facts["dtype"] == torch.float16 else f"dtype {facts['dtype']} is not float16"


def _op(name: str = "test_toy") -> Op:
    return Op(
        name,
        [
            Backend("fast_cuda", lambda x: ("fast_cuda", x), devices=("cuda",), check=_needs_fp16),
            Backend("fast_any", lambda x: ("fast_any", x), check=_needs_fp16),
            Backend("reference", lambda x: ("reference", x)),
        ],
    )


def test_first_applicable_backend_that_accepts_wins(ops_registry):
    op = _op()
    assert op.decide({"device": "cpu", "dtype": torch.float16}).chosen == "fast_any"
    assert op.decide({"device": "cuda", "dtype": torch.float16}).chosen == "fast_cuda"
    decision = op.decide({"device": "cpu", "dtype": torch.float32})
    assert decision.chosen == "reference"
    assert decision.rejected == (
        ("fast_cuda", "targets cuda, not cpu"),
        ("fast_any", "dtype torch.float32 is not float16"),
    )
    assert op.select({"device": "cpu", "dtype": torch.float16})(1) == ("fast_any", 1)


def test_decision_text(ops_registry):
    text = str(_op().decide({"device": "cpu", "dtype": torch.float32}))
    assert text == (
        "test_toy: using 'reference'\n"
        "  not 'fast_cuda': targets cuda, not cpu\n"
        "  not 'fast_any': dtype torch.float32 is not float16"
    )


def test_explain_uses_the_registry_and_defaults_to_cpu(ops_registry):
    _op()
    assert explain("test_toy", dtype=torch.float16) == (
        "test_toy: using 'fast_any'\n  not 'fast_cuda': targets cuda, not cpu"
    )


def test_explain_rms_norm_on_cpu():
    text = explain("rms_norm", device="cpu", dtype=torch.float32, n=64)
    assert text.splitlines()[0] == "rms_norm: using 'reference'"
    assert "  not 'torch': targets cuda, not cpu" in text.splitlines()


def test_rms_norm_on_cuda_facts_prefers_a_fused_path():
    # Facts are static: a decision for CUDA can be made (and explained) on a CPU-only machine.
    decision = get_op("rms_norm").decide({"device": "cuda", "dtype": torch.bfloat16, "n": 4096})
    assert decision.chosen != "reference"
    float64 = get_op("rms_norm").decide({"device": "cuda", "dtype": torch.float64, "n": 4096})
    assert float64.chosen == "reference"
    reasons = dict(float64.rejected)
    assert "torch" in reasons and "float64" in reasons["torch"]


def test_strict_mode_raises_on_fallback(ops_registry):
    op = _op()
    facts = {"device": "cpu", "dtype": torch.float32}
    with strict():
        assert is_strict()
        with pytest.raises(BackendUnavailableError) as info:
            op.decide(facts)
        # The error is the explanation: the backend it would have fallen back to, and why each
        # faster one was rejected.
        assert str(info.value) == (
            "test_toy: using 'reference'\n"
            "  not 'fast_cuda': targets cuda, not cpu\n"
            "  not 'fast_any': dtype torch.float32 is not float16\n"
            "(strict dispatch: refusing to fall back)"
        )
        assert explain("test_toy", dtype=torch.float32).endswith("refusing to fall back)")
        # Not applicable to the device is not a fallback: fp16 on CPU skips fast_cuda silently.
        assert op.decide({"device": "cpu", "dtype": torch.float16}).chosen == "fast_any"
    assert not is_strict()
    assert op.decide(facts).chosen == "reference"


def test_scope_and_prefer_are_not_fallbacks(ops_registry):
    def scope(facts):
        return None if facts.get("rank", 1) == 1 else f"rank {facts['rank']} (1D only)"

    def prefer(facts):
        return "long rows are faster elsewhere" if facts.get("length", 0) > 100 else None

    op = Op(
        "test_scoped",
        [
            Backend("fast", lambda: "fast", scope=scope, prefer=prefer, check=_needs_fp16),
            Backend("reference", lambda: "reference"),
        ],
    )
    fp16 = {"device": "cpu", "dtype": torch.float16}
    with strict():
        assert op.decide(fp16 | {"rank": 2}).chosen == "reference"  # out of scope: no raise
        decision = op.decide(fp16 | {"length": 500})
        assert decision.chosen == "reference"
        assert decision.rejected == (("fast", "long rows are faster elsewhere"),)
        with pytest.raises(BackendUnavailableError, match="refusing to fall back"):
            op.decide({"device": "cpu", "dtype": torch.float32})  # a failed check still is
    # Named: a preference does not stop it; scope and check do.
    assert op.decide(fp16 | {"length": 500}, "fast").chosen == "fast"
    with pytest.raises(BackendUnavailableError, match=r"cannot run: rank 2 \(1D only\)"):
        op.decide(fp16 | {"rank": 2}, "fast")
    with pytest.raises(BackendUnavailableError, match="is not float16"):
        op.decide({"device": "cpu", "dtype": torch.float32, "length": 500}, "fast")


def test_kernels_without_a_jvp_are_out_of_scope_in_forward_mode_ad(ops_registry):
    op = Op(
        "test_fwd_ad",
        [
            Backend("kernel", lambda: "kernel", forward_ad=False),
            Backend("reference", lambda: "reference"),
        ],
    )
    facts = {"device": "cpu", "dtype": torch.float32}
    assert op.decide(facts).chosen == "kernel"
    with torch.autograd.forward_ad.dual_level(), strict():
        decision = op.decide(facts)  # out of scope: not a fallback, so strict does not raise
        assert decision.chosen == "reference"
        assert decision.rejected == (
            ("kernel", "inside forward-mode AD (its kernels have no jvp)"),
        )
        with pytest.raises(BackendUnavailableError, match="forward-mode AD"):
            op.decide(facts, "kernel")
    assert op.decide(facts).chosen == "kernel"
    # The shipped custom-kernel backends declare it.
    for name, backend in [("rope", "triton"), ("rms_norm", "quack"), ("layer_norm", "quack"),
                          ("fft_conv", "fourstep"), ("gated_fft_conv", "fourstep")]:  # fmt: skip
        assert not next(b for b in get_op(name).backends if b.name == backend).forward_ad, name


def test_strict_mode_from_environment_and_nesting(ops_registry, monkeypatch):
    op = _op()
    facts = {"device": "cpu", "dtype": torch.float32}
    monkeypatch.setenv("SUBQ_STRICT_DISPATCH", "1")
    assert is_strict()
    with pytest.raises(BackendUnavailableError):
        op.decide(facts)
    with strict(False):
        assert op.decide(facts).chosen == "reference"
        with strict():
            assert is_strict()
        assert not is_strict()
    assert is_strict()


def test_strict_mode_is_per_thread(ops_registry):
    seen = []
    with strict():
        thread = threading.Thread(target=lambda: seen.append(is_strict()))
        thread.start()
        thread.join()
    assert seen == [False]


def test_strict_mode_does_not_break_rms_norm_on_cpu():
    # On CPU every fast rms_norm backend targets CUDA: choosing the reference is not a fallback.
    params = init_rms_norm(RMSNormConfig(dim=4))
    with strict():
        assert rms_norm(params, torch.ones(2, 4)).shape == (2, 4)


def test_unknown_backend_name(ops_registry):
    with pytest.raises(
        ValueError,
        match=r"test_toy: backend must be one of \['fast_cuda', 'fast_any', 'reference'\] or "
        r"None, got 'nope'",
    ):
        _op().decide({"device": "cpu", "dtype": torch.float16}, backend="nope")


def test_requested_unavailable_backend(ops_registry):
    op = _op()
    with pytest.raises(
        BackendUnavailableError,
        match=r"^test_toy: backend 'fast_cuda' cannot run: targets cuda, not cpu$",
    ):
        op.decide({"device": "cpu", "dtype": torch.float16}, backend="fast_cuda")
    with pytest.raises(
        BackendUnavailableError,
        match=r"^test_toy: backend 'fast_any' cannot run: dtype torch\.float32 is not float16$",
    ):
        op.decide({"device": "cpu", "dtype": torch.float32}, backend="fast_any")
    # Strict mode changes nothing for a forced backend.
    with strict(), pytest.raises(BackendUnavailableError, match="'fast_any' cannot run"):
        op.decide({"device": "cpu", "dtype": torch.float32}, backend="fast_any")
    # A requested backend that can run is used even where the default would differ.
    assert op.decide({"device": "cpu", "dtype": torch.float16}, backend="reference").chosen == (
        "reference"
    )


def test_rms_norm_backend_argument():
    params, x = init_rms_norm(RMSNormConfig(dim=4)), torch.randn(2, 4)
    torch.testing.assert_close(rms_norm(params, x, backend="reference"), rms_norm(params, x))
    with pytest.raises(
        BackendUnavailableError,
        match=r"^rms_norm: backend 'torch' cannot run: targets cuda, not cpu$",
    ):
        rms_norm(params, x, backend="torch")
    with pytest.raises(ValueError, match="backend must be one of"):
        rms_norm(params, x, backend="nope")


def test_no_backend_accepts(ops_registry):
    op = Op("test_picky", [Backend("only", lambda: None, check=lambda facts: "never")])
    with pytest.raises(BackendUnavailableError, match="test_picky: using '<none>'"):
        op.decide({"device": "cpu"})
    assert "not 'only': never" in explain("test_picky")


def test_op_needs_a_backend(ops_registry):
    with pytest.raises(ValueError, match="Op 'empty': expected at least one backend, got none"):
        Op("empty", [])


def test_op_backend_names_are_unique(ops_registry):
    twice = [Backend("a", lambda: 1), Backend("b", lambda: 2), Backend("a", lambda: 3)]
    with pytest.raises(
        ValueError, match=r"Op 'test_twice': backend names must be unique, got \['a', 'b', 'a'\]"
    ):
        Op("test_twice", twice)
    assert "test_twice" not in dispatch._OPS


def test_explain_names_a_missing_fact():
    with pytest.raises(
        TypeError,
        match=r"explain\('rms_norm'\): missing fact 'dtype'; given \['device'\], expected facts "
        r"such as \['device', 'dtype', 'n', 'weight_ndim'\]",
    ):
        explain("rms_norm", device="cuda")
    with pytest.raises(KeyError, match="unknown op 'nope'"):
        explain("nope", dtype=torch.float32)


def test_registry_lookup():
    assert "rms_norm" in registered_ops()
    assert get_op("rms_norm").backend_names[-1] == "reference"
    with pytest.raises(KeyError, match="unknown op 'nope'; registered ops: \\["):
        get_op("nope")


def test_every_registered_op_ends_with_a_reference_that_runs_on_cpu():
    for name, op in registered_ops().items():
        last = op.backends[-1]
        assert last.applies_to("cpu"), name
        facts = {"device": "cpu", "dtype": torch.float32, **op.example_facts}
        assert op.decide(facts).chosen in op.backend_names


# --- capabilities ---------------------------------------------------------------------------


def test_cuda_supports_quack_is_false_off_cuda():
    assert cuda_supports_quack("cpu") is False
    assert quack_unavailable_reason("cpu") == "device type is cpu, not cuda"
    assert quack_unavailable_reason(torch.device("meta")) == "device type is meta, not cuda"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without CUDA")
def test_quack_reason_without_cuda():
    assert quack_unavailable_reason() == "CUDA is not available"
    assert quack_unavailable_reason(0) == "CUDA is not available"
    assert cuda_supports_quack("cuda") is False


def test_module_available_reports_any_import_failure(tmp_path, monkeypatch):
    assert module_available("json") is None
    assert module_available("subq_no_such_module_xyz").startswith(
        "import subq_no_such_module_xyz failed: ModuleNotFoundError"
    )
    (tmp_path / "subq_broken_xyz.py").write_text("raise RuntimeError('half installed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert module_available("subq_broken_xyz") == (
        "import subq_broken_xyz failed: RuntimeError: half installed"
    )


@pytest.fixture
def fake_cuda(monkeypatch):
    """A machine with two NVIDIA GPUs (capability 9.0 and 8.0), quack's imports all working.

    Returns the list of device indices whose capability was queried, to check the caching.
    """
    queried: list[int] = []
    capability = {0: (9, 0), 1: (8, 0)}

    def get_device_capability(index):
        queried.append(index)
        return capability[index]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", get_device_capability)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(capabilities, "module_available", lambda name: None)
    capabilities._quack_reason.cache_clear()
    yield queried
    capabilities._quack_reason.cache_clear()


def test_quack_capability_per_device_and_cached(fake_cuda, monkeypatch):
    for device in (0, "cuda:0", torch.device("cuda", 0), "cuda", None):
        assert quack_unavailable_reason(device) is None
        assert cuda_supports_quack(device) is True
    reason = "compute capability 8.0 < 9.0 (quack needs Hopper or newer)"
    assert quack_unavailable_reason("cuda:1") == reason
    assert cuda_supports_quack(1) is False
    assert quack_unavailable_reason(5) == "no CUDA device 5 (this machine has 2)"
    assert fake_cuda == [0, 1]  # one probe per device, however the device was named
    # "The current device" is resolved before the cache: switching devices changes the answer.
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert quack_unavailable_reason() == reason
    assert quack_unavailable_reason("cuda") == reason
    assert fake_cuda == [0, 1]


@pytest.mark.parametrize("missing", ["triton", "cutlass", "quack"])
def test_quack_needs_triton_cutlass_and_quack(fake_cuda, monkeypatch, missing):
    def available(name):
        return f"import {name} failed: ImportError: broken" if name == missing else None

    monkeypatch.setattr(capabilities, "module_available", available)
    assert quack_unavailable_reason(0) == f"import {missing} failed: ImportError: broken"
    assert cuda_supports_quack(0) is False


def test_quack_refuses_rocm(fake_cuda, monkeypatch):
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert quack_unavailable_reason(0) == "ROCm build of PyTorch (quack targets NVIDIA GPUs)"
    assert fake_cuda == []


def test_import_subq_imports_no_optional_dependency(tmp_path):
    # Stand-ins for the optional packages record which file imports them, then fail like a
    # missing package (torch itself probes triton, and must keep working). A guarded import in
    # subq leaves no trace in sys.modules on a machine without triton or quack; this sees it.
    heavy = ("quack", "triton", "cutlass", "matplotlib")
    log = tmp_path / "imports.log"
    stand_in = textwrap.dedent(
        f"""
        import importlib, os, traceback
        machinery = os.path.dirname(importlib.__file__)
        frames = [f.filename for f in traceback.extract_stack()[:-1]]
        importer = [f for f in frames if not f.startswith(("<", machinery))][-1]
        with open({str(log)!r}, "a") as out:
            out.write(__name__ + " " + importer + "\\n")
        raise ModuleNotFoundError("stand-in for " + __name__)
        """
    )
    for name in heavy:
        (tmp_path / f"{name}.py").write_text(stand_in)
    package = str(Path(subq.__file__).parent)

    def imported_by_subq(snippet: str) -> tuple[list[str], list[str]]:
        code = f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n{snippet}\n" + (
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))"
        )
        log.unlink(missing_ok=True)
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        attempts = log.read_text().splitlines() if log.exists() else []
        return result.stdout.splitlines(), [a.split()[0] for a in attempts if package in a]

    out, attempts = imported_by_subq(
        "import torch, subq, subq.ops\n"
        "subq.ops.registered_ops()\n"  # explain and `subq info` import every op module
        "print(subq.ops.explain('rms_norm', device='cpu', dtype=torch.float32))"
    )
    assert out[0] == "rms_norm: using 'reference'" and out[-1] == "[]"
    assert attempts == []
    # The check does see subq's own attempts: the quack probe imports all three.
    _, attempts = imported_by_subq(
        "import subq.ops.capabilities as c\n"
        "print([c.module_available(n) for n in ('triton', 'cutlass', 'quack')])"
    )
    assert attempts == ["triton", "cutlass", "quack"]


# --- the compiled backends' helpers ----------------------------------------------------------


def test_compiled_check_reasons(monkeypatch):
    from subq.ops import _compile

    monkeypatch.setattr(_compile, "module_available", lambda name: None)
    facts = {"device": "cuda", "dtype": torch.bfloat16}
    assert _compile.compiled_check(facts) is None
    assert _compile.compiled_check(facts | {"dtype": torch.float64}) == (
        "dtype torch.float64 (the compiled path is for float16/bfloat16/float32)"
    )
    monkeypatch.setattr(_compile, "module_available", lambda name: f"import {name} failed: X")
    assert _compile.compiled_check(facts) == "import triton failed: X"


def test_compiled_for_caches_per_signature_and_steps_aside_under_transforms(monkeypatch):
    from subq.ops import _compile

    compiled = []

    def fake_compile(fn, **kwargs):
        compiled.append((fn, kwargs))
        return lambda *a: ("compiled", fn(*a))

    def double(x):
        return 2 * x

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(_compile, "_COMPILED", {})
    x = torch.ones(3)
    key = _compile.tensor_signature(x, None)
    assert key == (((3,), torch.float32, torch.device("cpu"), False), None)
    first = _compile.compiled_for("test_double", double, key)
    assert first is _compile.compiled_for("test_double", double, key)
    other = _compile.compiled_for("test_double", double, _compile.tensor_signature(x[:2]))
    assert other is not first
    assert first(x)[0] == "compiled" and torch.equal(first(x)[1], 2 * x)
    # Each signature compiles its own copy of the code (dynamo's recompile limit is per code).
    assert [kw for _, kw in compiled] == [{"fullgraph": True, "dynamic": False}] * 2
    assert compiled[0][0] is not double and compiled[0][0].__code__ is not double.__code__
    # Under torch.func transforms the plain function runs.
    seen = []
    torch.func.vmap(lambda t: seen.append(_compile.compiled_for("test_double", double, key)) or t)(
        torch.ones(2, 3)
    )
    assert seen == [double]
