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
    checked = {"attn_causal_fwd", "attn_vmap_fwd", "attn_vmap_grad", "attn_fwd_bwd"}
    for row in rows:
        if "error" in row:
            # fla (the Triton peer) is not installed on CPU machines; nothing else may fail.
            assert row["impl"] == "fla_chunk_linear_attn", row
            continue
        timed = row["ms/step"] if row["bench"] == "decode" else row["ms"]
        assert timed > 0, row
        if row["bench"] in checked or (
            row["bench"] == "linear_attn" and row["mode"] == "fwd" and "softmax" not in row["impl"]
        ):
            # Every softmax row (forward and gradients, plain and under vmap) is compared with
            # SDPA's math kernel; linear attention with its float32 reference.
            assert row["rel_err"] < 1e-4, row
    impls = {(row["bench"], row["impl"]) for row in rows}
    assert {
        ("attn_fwd_bwd", "subq_flash"),
        ("attn_vmap_grad", "subq_flash_vmap_grad"),
        ("attn_vmap_fwd", "subq_flash_under_vmap"),
    } <= impls
