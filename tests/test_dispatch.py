"""The backend dispatcher: decisions from static facts, explanations, strict mode, errors."""

from __future__ import annotations

import threading

import pytest
import torch

from subq.functional.norm import RMSNormConfig, init_rms_norm, rms_norm
from subq.ops import dispatch
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
        with pytest.raises(BackendUnavailableError, match="strict dispatch: refusing to fall back"):
            op.decide(facts)
        # Not applicable to the device is not a fallback: fp16 on CPU skips fast_cuda silently.
        assert op.decide({"device": "cpu", "dtype": torch.float16}).chosen == "fast_any"
    assert not is_strict()
    assert op.decide(facts).chosen == "reference"


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
        BackendUnavailableError, match="backend 'fast_cuda' cannot run: targets cuda, not cpu"
    ):
        op.decide({"device": "cpu", "dtype": torch.float16}, backend="fast_cuda")
    with pytest.raises(
        BackendUnavailableError, match=r"backend 'fast_any' cannot run: dtype torch\.float32"
    ):
        op.decide({"device": "cpu", "dtype": torch.float32}, backend="fast_any")
    # A requested backend that can run is used even where the default would differ.
    assert op.decide({"device": "cpu", "dtype": torch.float16}, backend="reference").chosen == (
        "reference"
    )


def test_rms_norm_backend_argument():
    params, x = init_rms_norm(RMSNormConfig(dim=4)), torch.randn(2, 4)
    torch.testing.assert_close(rms_norm(params, x, backend="reference"), rms_norm(params, x))
    with pytest.raises(BackendUnavailableError, match="backend 'torch' cannot run"):
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
