"""Public testing helpers: numerical comparison, property assertions, strategies, layer registry.

Assertions raise ``AssertionError`` with a message that says what differed and by how much; they
are meant for test suites (subq's own and users' tests of layers built on subq).
"""

from subq.testing.assertions import (
    assert_causal,
    assert_close_rel,
    assert_compiles,
    assert_equivariant,
    assert_grad_matches_autograd,
    assert_init_stats,
    assert_shell_matches_functional,
    assert_vmap_matches_loop,
    compute_relative_error,
)
from subq.testing.registry import LayerSpec, layer_registry, register_layer

__all__ = [
    "LayerSpec",
    "assert_causal",
    "assert_close_rel",
    "assert_compiles",
    "assert_equivariant",
    "assert_grad_matches_autograd",
    "assert_init_stats",
    "assert_shell_matches_functional",
    "assert_vmap_matches_loop",
    "compute_relative_error",
    "layer_registry",
    "register_layer",
]
