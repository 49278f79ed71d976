"""Params pytrees: key paths, None fields as structure, grad/vmap, stacking, flat round trips."""

from __future__ import annotations

import attrs
import pytest
import torch
import torch.utils._pytree as pytree
from torch import Tensor

from subq._pytree import (
    flat_key,
    in_dims_like,
    is_params,
    params_from_flat,
    params_to_flat,
    pytree_node,
    stack_params,
    unstack_params,
)
from subq.nn.base import Shell


@pytree_node
@attrs.define
class LeafParams:
    weight: Tensor
    bias: Tensor | None = None


@pytree_node
@attrs.define
class TreeParams:
    norm: LeafParams
    blocks: tuple[LeafParams, ...]
    scale: Tensor | None = None


def _randn(*shape: int, seed: int) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _tree(seed: int = 0) -> TreeParams:
    return TreeParams(
        norm=LeafParams(_randn(3, seed=seed)),
        blocks=(
            LeafParams(_randn(3, 3, seed=seed + 1), _randn(3, seed=seed + 2)),
            LeafParams(_randn(3, 3, seed=seed + 3)),
        ),
    )


def _apply(p: TreeParams, x: Tensor) -> Tensor:
    y = x * p.norm.weight
    for block in p.blocks:
        y = y @ block.weight.T
        if block.bias is not None:
            y = y + block.bias
    return y if p.scale is None else y * p.scale


def test_key_paths_equal_shell_state_dict_keys():
    params = _tree()
    flat = params_to_flat(params)
    assert list(flat) == ["norm.weight", "blocks.0.weight", "blocks.0.bias", "blocks.1.weight"]
    shell = Shell(params)
    assert list(shell.state_dict()) == list(flat)
    for key, value in shell.state_dict().items():
        assert torch.equal(value, flat[key])


def test_none_fields_are_structure_not_leaves():
    without = LeafParams(torch.ones(2))
    with_bias = LeafParams(torch.ones(2), torch.zeros(2))
    leaves, spec = pytree.tree_flatten(without)
    assert len(leaves) == 1 and all(leaf is not None for leaf in leaves)
    assert spec != pytree.tree_structure(with_bias)
    rebuilt = pytree.tree_unflatten([torch.full((2,), 5.0)], spec)
    assert rebuilt.bias is None and torch.equal(rebuilt.weight, torch.full((2,), 5.0))
    mapped = pytree.tree_map(lambda t: t * 2, without)
    assert isinstance(mapped, LeafParams) and mapped.bias is None


def test_grad_over_params_with_none_fields():
    params, x = _tree(), _randn(4, 3, seed=9)
    cotangent = _randn(4, 3, seed=10)

    def loss(p, inp):
        return (_apply(p, inp) * cotangent).sum()

    grads = torch.func.grad(loss)(params, x)
    assert isinstance(grads, TreeParams)
    assert grads.scale is None and grads.norm.bias is None and grads.blocks[1].bias is None
    leaves = pytree.tree_leaves(params)
    live = [leaf.clone().requires_grad_(True) for leaf in leaves]
    value = loss(pytree.tree_unflatten(live, pytree.tree_structure(params)), x)
    expected = torch.autograd.grad(value, live)
    for got, want in zip(pytree.tree_leaves(grads), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_vmap_over_stacked_params_with_none_fields():
    members = [_tree(seed) for seed in (0, 10, 20)]
    stacked = stack_params(members)
    assert stacked.norm.bias is None and stacked.blocks[0].weight.shape == (3, 3, 3)
    x = _randn(4, 3, seed=1)
    batched = torch.func.vmap(_apply, in_dims=(in_dims_like(stacked), None))(stacked, x)
    for i, member in enumerate(members):
        torch.testing.assert_close(batched[i], _apply(member, x), rtol=1e-12, atol=1e-12)


def test_in_dims_like_matches_structure():
    params = _tree()
    dims = in_dims_like(params, dim=1)
    assert pytree.tree_structure(dims) == pytree.tree_structure(params)
    assert pytree.tree_leaves(dims) == [1, 1, 1, 1]


def test_stack_unstack_round_trip():
    members = [_tree(seed) for seed in (0, 5)]
    back = unstack_params(stack_params(members))
    assert len(back) == 2
    for got, want in zip(back, members, strict=True):
        assert pytree.tree_structure(got) == pytree.tree_structure(want)
        for a, b in zip(pytree.tree_leaves(got), pytree.tree_leaves(want), strict=True):
            assert torch.equal(a, b)


def test_stack_errors():
    with pytest.raises(ValueError, match="stack_params: expected at least one params pytree"):
        stack_params([])
    # A different None structure cannot be stacked; the error says which member differs.
    with pytest.raises(ValueError, match=r"params\[2\] differs in structure from params\[0\]"):
        stack_params([LeafParams(torch.ones(2))] * 2 + [LeafParams(torch.ones(2), torch.ones(2))])


def test_unstack_of_leafless_params_is_itself():
    empty = LeafParams.__new__(LeafParams)
    empty.weight, empty.bias = None, None
    assert unstack_params(empty) == [empty]


def test_flat_round_trip():
    params = _tree()
    back = params_from_flat(params, params_to_flat(params))
    assert pytree.tree_structure(back) == pytree.tree_structure(params)
    for a, b in zip(pytree.tree_leaves(back), pytree.tree_leaves(params), strict=True):
        assert a is b


def test_params_from_flat_names_missing_and_unexpected_keys():
    params = _tree()
    flat = params_to_flat(params)
    del flat["blocks.0.bias"]
    flat["blocks.1.bias"] = torch.zeros(3)
    with pytest.raises(KeyError) as info:
        params_from_flat(params, flat)
    message = str(info.value)
    assert "missing keys ['blocks.0.bias']" in message
    assert "unexpected keys ['blocks.1.bias']" in message


def test_flat_key_renders_every_key_kind():
    path = (pytree.GetAttrKey("blocks"), pytree.SequenceKey(2), pytree.MappingKey("w"))
    assert flat_key(path) == "blocks.2.w"


def test_pytree_node_rejects_non_attrs_classes():
    class Plain:
        pass

    with pytest.raises(TypeError, match="pytree_node expects an attrs class"):
        pytree_node(Plain)


def test_is_params():
    assert is_params(_tree()) and is_params(LeafParams(torch.ones(1)))
    assert not is_params(torch.ones(1)) and not is_params({"weight": torch.ones(1)})


def test_unstack_errors_name_each_leaf_and_its_leading_size():
    ragged = LeafParams(torch.ones(3, 2), torch.ones(2))
    with pytest.raises(ValueError, match=r"same leading \(stacked\) size, got weight: 3, bias: 2"):
        unstack_params(ragged)
    with pytest.raises(ValueError, match=r"got weight: 3, bias: None"):
        unstack_params(LeafParams(torch.ones(3, 2), torch.tensor(1.0)))
