"""Causal linear attention on the lent GPU against fla's chunked Triton kernel and fused SDPA.

    source .gpu/base/setup.sh && python3 bench/gpu_linear_attention.py [IMPL ...]  # carry base, peers

B4 × 16 heads × T16384 × 128, bf16, forward and forward+backward (``subq.bench.attention``'s
linear part; the named implementations only, if any are given), after a parity check of the
CUDA ``compiled`` backend against the reference (float32, forward and gradients). Rows are
printed as they are measured and written to ``$OUT/linear_attention.json`` at the end.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from subq.bench import attention as bench


def parity() -> None:
    from subq.ops import linear_attention as ops
    from subq.testing import compute_relative_error

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (
        torch.randn(2, 4, 300, 64, device="cuda", generator=g, requires_grad=True) for _ in "qkv"
    )
    mask = torch.rand(2, 300, device="cuda", generator=g) > 0.2
    for causal in (True, False):
        args = (q, k, v, mask, None, None, causal, "elu", 64, True, 0.0)
        want = ops.linear_attention_reference(*args)[0]
        got = ops._linear_attention_compiled(*args)[0]
        gw = torch.autograd.grad(want.square().sum(), (q, k, v))
        gg = torch.autograd.grad(got.square().sum(), (q, k, v))
        errs = [compute_relative_error(want, got)] + [
            compute_relative_error(a, b) for a, b in zip(gw, gg, strict=True)
        ]
        print(f"parity causal={causal}: max rel err {max(errs):.2e}", flush=True)
        assert max(errs) < 1e-4, errs


def main() -> None:
    parity()
    out = Path(os.environ.get("OUT", "out"))
    out.mkdir(parents=True, exist_ok=True)
    from subq import ops

    print(ops.explain("linear_attention", device="cuda", dtype=torch.bfloat16), flush=True)
    only = tuple(sys.argv[1:]) or None
    rows = bench._linear_rows(torch.device("cuda"), quick=False, only=only, fla_limit_s=150)
    (out / "linear_attention.json").write_text(json.dumps(rows, indent=1) + "\n")
    for row in rows:
        if "ms" in row:
            print(
                f"{row['impl']:28s} {row['mode']:8s} {row['ms']:8.3f} ms  "
                f"fla/this {row['fla_ms/ms']:.2f}  sdpa/this {row['sdpa_ms/ms']:.2f}"
            )
        else:
            print(f"{row['impl']:28s} {row.get('mode', '')} ERROR {row['error']}")


if __name__ == "__main__":
    main()
