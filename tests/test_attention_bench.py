"""Smoke test of the attention benchmark at its quick (CPU) sizes."""

from __future__ import annotations

import torch

from subq.bench.attention import attention_benchmark


def test_attention_benchmark_quick_on_cpu():
    rows = attention_benchmark(torch.device("cpu"), quick=True)
    benches = {row["bench"] for row in rows}
    assert {
        "attn_causal_fwd",
        "attn_vmap_fwd",
        "attn_vmap_grad",
        "attn_fwd_bwd",
        "attn_memory",
        "linear_attn",
        "decode",
    } <= benches
    for row in rows:
        if "error" in row:
            # fla (the Triton peer) is not installed on CPU machines; nothing else may fail.
            assert row["impl"] == "fla_chunk_linear_attn", row
            continue
        assert row.get("rel_err", 0.0) < 1e-4, row
        assert row.get("ms", 1.0) > 0 or row.get("ms/step", 1.0) > 0, row
