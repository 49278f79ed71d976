import os
import subprocess
import sys

import pytest

# Turn runtime shape checks on before subq is imported (shapecheck decides at decoration time).
os.environ.setdefault("SUBQ_TYPECHECK", "1")

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.register_profile(
    "dev", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture
def triton_interpreted():
    """Run a Python snippet under Triton's CPU interpreter in a fresh process (``TRITON_INTERPRET``
    must be set before kernels are defined) and return the last ``count`` numbers it prints.

    Half-precision results there are within one ulp, not half: the interpreter's casts may
    truncate rather than round.
    """
    pytest.importorskip("triton")

    def run(code: str, count: int) -> list[float]:
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "TRITON_INTERPRET": "1"},
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return [float(v) for v in result.stdout.split()[-count:]]

    return run


@pytest.fixture
def gated_fourstep_errors():
    """Worst relative error of Hyena's gated four-step convolution (forward and the gradients of
    q, k, v and the kernel, float32) against the float64 reference, for channels-last inputs."""
    import torch

    from subq.ops import fftconv as ops

    def rel(want, got):
        return ((want - got.double()).abs().max() / want.abs().max()).item()

    def run(q, k, v, kernel, skip, modes, value_gate="sigmoid", chunk_size=None) -> float:
        leaves = [t.double().requires_grad_() for t in (q, k, v, kernel)]
        want = ops.gated_fft_conv_reference(*leaves, skip.double(), modes, value_gate)
        dy = torch.randn_like(want)
        g_want = torch.autograd.grad(want, leaves, dy)
        leaves32 = [t.detach().float().requires_grad_() for t in (q, k, v, kernel)]
        got = ops._gated_fourstep(*leaves32, skip.float(), modes, value_gate, chunk_size)
        g_got = torch.autograd.grad(got, leaves32, dy.float())
        return max(rel(w, g) for w, g in [(want, got), *zip(g_want, g_got, strict=True)])

    return run
