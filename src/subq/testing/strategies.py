"""Hypothesis strategies shared by subq's property tests (requires ``hypothesis``).

Tensors are never drawn from hypothesis directly: draw a seed and use :func:`randn`, which uses
its own ``torch.Generator`` (the global RNG inside ``@given`` makes hypothesis report flakiness).
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

__all__ = ["axis_sizes", "randn", "seeds", "small_dims"]

#: Seeds for ``torch.Generator``.
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def axis_sizes(max_size: int = 17) -> st.SearchStrategy[int]:
    """Axis lengths that include the edge cases: 1, odd, prime and powers of two."""
    special = [s for s in (1, 2, 3, 5, 7, 8, 13, 16, 17) if s <= max_size]
    return st.one_of(st.sampled_from(special), st.integers(1, max_size))


def small_dims(multiple: int = 1, max_multiple: int = 8) -> st.SearchStrategy[int]:
    """Channel counts that are multiples of ``multiple``."""
    return st.integers(1, max_multiple).map(lambda k: k * multiple)


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A standard-normal tensor from a private generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=dtype)
