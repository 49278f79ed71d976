"""Every property each registered layer declares, over hypothesis-drawn configs and shapes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from subq._pytree import stack_params
from subq.testing import (
    assert_causal,
    assert_compiles,
    assert_grad_matches_autograd,
    assert_shell_matches_functional,
    assert_vmap_matches_loop,
)
from subq.testing.registry import layer_registry
from subq.testing.strategies import randn

REGISTRY = layer_registry()


def _with(prop: str) -> list[str]:
    return sorted(name for name, spec in REGISTRY.items() if prop in spec.properties)


@pytest.mark.parametrize("name", _with("causal"))
@given(data=st.data())
def test_causal(name, data):
    case = REGISTRY[name].build(data.draw)
    assert_causal(lambda x: case.fn(case.params, x), case.x, time_axis=case.time_axis, atol=1e-9)


@pytest.mark.parametrize("name", _with("vmap"))
@given(data=st.data())
def test_vmap_ensemble_equals_loop(name, data):
    case = REGISTRY[name].build(data.draw)
    assume(torch.utils._pytree.tree_leaves(case.params))  # a parameter-free layer has no ensemble
    stacked = stack_params([case.make_params(s) for s in (1, 2, 3)])
    assert_vmap_matches_loop(case.fn, (stacked, case.x), (0, None), rtol=1e-9)


@pytest.mark.parametrize("name", _with("grad"))
@given(data=st.data())
def test_grad_equals_autograd(name, data):
    case = REGISTRY[name].build(data.draw)
    assume(torch.utils._pytree.tree_leaves(case.params))  # nothing to differentiate
    # A fixed random cotangent, so that symmetric outputs cannot cancel their gradients.
    cotangent = randn(*case.fn(case.params, case.x).shape, seed=7)

    def loss(p, x):
        return (case.fn(p, x) * cotangent).sum()

    assert_grad_matches_autograd(loss, case.params, case.x, rtol=1e-9)


@pytest.mark.parametrize("name", _with("shell"))
@given(data=st.data())
def test_shell_equals_functional(name, data):
    case = REGISTRY[name].build(data.draw)
    assert_shell_matches_functional(case.shell, case.fn, case.x, rtol=1e-12)


@pytest.mark.parametrize("name", _with("dtype"))
@given(data=st.data())
def test_bfloat16_in_bfloat16_out(name, data):
    case = REGISTRY[name].build(data.draw)
    params = torch.utils._pytree.tree_map(lambda t: t.to(torch.bfloat16), case.params)
    x = case.x.to(torch.bfloat16)
    y = case.fn(params, x)
    assert y.dtype == torch.bfloat16
    # The float64 function of the *same* bf16-rounded params and input: the error is then the
    # computation's, not the rounding of the data (which tiny ill-conditioned cases amplify
    # well past any fixed bound: 3.5e-2 for a 2-token attention whose computation is good to
    # 4e-3).
    as_f64 = torch.utils._pytree.tree_map(lambda t: t.double(), params)
    reference = case.fn(as_f64, x.double())
    err = (y.double() - reference).norm() / reference.norm().clamp_min(1e-12)
    assert err < 3e-2, f"bf16 relative error {err:.3e}"


@pytest.mark.parametrize("name", _with("compile"))
@settings(max_examples=3)
@given(data=st.data())
def test_compiles_without_graph_breaks(name, data):
    case = REGISTRY[name].build(data.draw)
    assert_compiles(case.fn, case.params, case.x)
