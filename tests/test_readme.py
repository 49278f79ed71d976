"""The README's example runs, and its test command is the one CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_readme_example_runs_and_gives_the_commented_shapes():
    readme = (ROOT / "README.md").read_text()
    (code,) = re.findall(r"\[start:example\] -->\n```python\n(.*?)```", readme, re.S)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["y"].shape == (2, 128, 64)
    assert namespace["ys"].shape == (4, 2, 128, 64)
    assert namespace["z"].shape == (2, 32, 32, 64)
    # The ensemble is four different layers, each equal to its own unvmapped call.
    ys, stacked, x, cfg = namespace["ys"], namespace["stacked"], namespace["x"], namespace["cfg"]
    import subq

    for i, p in enumerate(subq.unstack_params(stacked)):
        torch.testing.assert_close(ys[i], subq.multi_head_attention(p, x, cfg=cfg))
    assert not torch.allclose(ys[0], ys[1])


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "```bash\nbash .ci/test\n```" in readme
    assert re.search(r"^bash \.ci/test$", ci, re.M)
    assert "subq demo" in readme
