"""Causal linear attention on the lent GPU against fla's chunked Triton kernel and fused SDPA.

    source .gpu/base/setup.sh && python3 bench/gpu_linear_attention.py   # carry base, peers

B4 × 16 heads × T16384 × 128, bf16, forward and forward+backward (``subq.bench.attention``'s
linear part). Rows go to ``$OUT/linear_attention.json`` as they are measured.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from subq.bench import attention as bench


def main() -> None:
    out = Path(os.environ.get("OUT", "out"))
    out.mkdir(parents=True, exist_ok=True)
    rows = bench._linear_rows(torch.device("cuda"), quick=False)
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
