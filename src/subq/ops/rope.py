"""The ``rope`` op: apply rotary position embeddings given a cos/sin cache.

``rope_apply(x, cos, sin, sections, pairing)``: ``x`` is ``[..., D]``; ``cos``/``sin`` are
``[..., W]`` and broadcast with ``x``'s leading axes without enlarging them (the caller,
:func:`subq.functional.rope.apply_rope`, has checked the shapes). ``sections`` lists the rotated
channels of each axis block; each block is rotated on its own (pairs never cross blocks).
Channels past ``sum(sections)`` pass through unchanged (partial rotary).

Pairings (per block of ``d`` channels, pair ``j < d/2``):

* ``"split_half"`` (GPT-NeoX): channels ``j`` and ``j + d/2`` form pair ``j``; ``W`` has ``d/2``
  columns per block.
* ``"interleaved"`` (GPT-J): channels ``2j`` and ``2j + 1`` form pair ``j``; ``d/2`` columns.
* ``"nvsubquadratic"``: the reference library's numerics (not a rotation): ``x·cos + rot(x)·sin``
  with the split-half ``rot`` and one column per *channel* (``W`` has ``d`` columns per block).

Backends, fastest first: ``triton`` (CUDA, a fused Triton kernel behind a
``torch.autograd.Function`` with a vmap rule) and ``reference`` (plain PyTorch, any device).
"""

from __future__ import annotations

import torch
from torch import Tensor

from subq.ops.dispatch import Backend, Op

__all__ = ["PAIRINGS", "rope_op", "rope_reference"]

#: Valid pairing names.
PAIRINGS = ("split_half", "interleaved", "nvsubquadratic")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # float32 math for reduced precision; float64 stays float64 (exactness in tests).
    return torch.promote_types(dtype, torch.float32)


def _rotate_block(x: Tensor, cos: Tensor, sin: Tensor, pairing: str) -> Tensor:
    """Rotate one block of channels (all channels of ``x``) with its cos/sin columns."""
    if pairing == "interleaved":
        pairs = x.unflatten(-1, (-1, 2))
        a, b = pairs[..., 0], pairs[..., 1]
        return torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(-2)
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    if pairing == "split_half":
        return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)
    # nvsubquadratic: one angle per channel, so the two members of a "pair" turn by different
    # angles; reproduced as is for loading reference checkpoints.
    rotated = torch.cat((-b, a), dim=-1)
    return x * cos + rotated * sin


def rope_reference(
    x: Tensor, cos: Tensor, sin: Tensor, sections: tuple[int, ...], pairing: str
) -> Tensor:
    """Plain-PyTorch rotary embedding; the oracle of every other backend."""
    ct = _compute_dtype(x.dtype)
    x32, cos, sin = x.to(ct), cos.to(ct), sin.to(ct)
    per_channel = pairing == "nvsubquadratic"
    rot = sum(sections)
    if pairing == "interleaved" or len(sections) == 1:
        # Interleaved pairs never cross an (even-sized) block boundary: one call covers all.
        blocks = [_rotate_block(x32[..., :rot], cos, sin, pairing)]
    else:
        blocks, start, col = [], 0, 0
        for d in sections:
            width = d if per_channel else d // 2
            blocks.append(
                _rotate_block(
                    x32[..., start : start + d],
                    cos[..., col : col + width],
                    sin[..., col : col + width],
                    pairing,
                )
            )
            start, col = start + d, col + width
    if rot < x.shape[-1]:
        blocks.append(x32[..., rot:])
    out = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=-1)
    return out.to(x.dtype)


def _triton_backend() -> list[Backend]:
    # Filled in by the fused kernel module when available (see below).
    return []


rope_op = Op(
    "rope",
    [*_triton_backend(), Backend("reference", rope_reference)],
    example_facts={"dtype": torch.bfloat16, "pairing": "split_half", "n_sections": 1},
)
