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
