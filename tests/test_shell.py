"""The shell base: parameters from a params pytree, live params(), functional_call, dtype moves."""

from __future__ import annotations

import attrs
import pytest
import torch
from torch import Tensor

from subq._pytree import params_to_flat, pytree_node
from subq.functional.norm import (
    LayerNormConfig,
    RMSNormConfig,
    RMSNormParams,
    layer_norm,
    rms_norm,
)
from subq.nn.base import ParamsHolder, Shell
from subq.nn.norm import LayerNorm, RMSNorm
from subq.testing import assert_shell_matches_functional


@pytree_node
@attrs.define
class BlockParams:
    norm: RMSNormParams
    proj: Tensor
    bias: Tensor | None = None
    index: Tensor | None = None


@pytree_node
@attrs.define
class StackParams:
    blocks: tuple[BlockParams, ...]
    head: Tensor


def _randn(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def block(p: BlockParams, x: Tensor) -> Tensor:
    y = rms_norm(p.norm, x) @ p.proj.T
    return y if p.bias is None else y + p.bias


def stack(p: StackParams, x: Tensor) -> Tensor:
    for b in p.blocks:
        x = x + block(b, x)
    return x @ p.head.T


class Stack(Shell):
    def forward(self, x: Tensor) -> Tensor:
        return stack(self.params(), x)


def _stack_params() -> StackParams:
    blocks = tuple(
        BlockParams(
            norm=RMSNormParams(1 + 0.1 * _randn(4, seed=i)),
            proj=_randn(4, 4, seed=10 + i),
            bias=_randn(4, seed=20 + i) if i == 0 else None,
        )
        for i in range(2)
    )
    return StackParams(blocks=blocks, head=_randn(3, 4, seed=30))


def test_state_dict_keys_equal_pytree_key_paths():
    params = _stack_params()
    shell = Stack(params)
    # Same keys; the order differs (nn.Module lists its own parameters before its children's),
    # so leaves must be matched by key, never zipped with shell.parameters().
    assert sorted(shell.state_dict()) == sorted(params_to_flat(params))
    assert sorted(shell.state_dict()) == [
        "blocks.0.bias",
        "blocks.0.norm.weight",
        "blocks.0.proj",
        "blocks.1.norm.weight",
        "blocks.1.proj",
        "head",
    ]
    for key, value in shell.state_dict().items():
        assert torch.equal(value, params_to_flat(params)[key])


def test_params_returns_the_live_parameters():
    shell = Stack(_stack_params())
    params = shell.params()
    assert params.head is shell.head
    assert params.blocks[1].norm.weight is shell.blocks[1].norm.weight
    assert params.blocks[1].bias is None
    optimizer = torch.optim.SGD(shell.parameters(), lr=0.1)
    shell(_randn(2, 4, seed=1)).sum().backward()
    before = shell.params().head.detach().clone()
    optimizer.step()
    assert not torch.equal(shell.params().head, before)  # what the pure function sees moved


def test_shell_copies_the_initial_params():
    params = _stack_params()
    shell = Stack(params)
    params.head.add_(1.0)
    assert not torch.equal(shell.head, params.head)


def test_functional_call_parity():
    params, x = _stack_params(), _randn(2, 4, seed=2)
    shell = Stack(params)
    assert_shell_matches_functional(shell, stack, x, rtol=0.0)
    out = torch.func.functional_call(shell, params_to_flat(params), (x,))
    torch.testing.assert_close(out, stack(params, x), rtol=0, atol=0)


def test_load_state_dict_from_flat_params():
    shell = Stack(_stack_params())
    other = attrs.evolve(_stack_params(), head=_randn(3, 4, seed=99))
    shell.load_state_dict(params_to_flat(other))
    assert torch.equal(shell.params().head, other.head)


def test_non_float_leaves_do_not_require_grad():
    params = BlockParams(
        norm=RMSNormParams(), proj=torch.ones(2, 2), index=torch.arange(2, dtype=torch.int64)
    )
    shell = ParamsHolder(params)
    assert shell.proj.requires_grad and not shell.index.requires_grad
    assert "norm" in dict(shell.named_children())
    assert list(shell.state_dict()) == ["proj", "index"]  # a weightless norm has no keys


def test_children_replace_generic_holders():
    params = BlockParams(norm=RMSNormParams(torch.ones(4)), proj=torch.eye(4))
    norm = RMSNorm(dim=4)
    shell = ParamsHolder(params, children={"norm": norm})
    assert shell.norm is norm
    assert shell.params().norm.weight is norm.weight


def test_children_must_be_shells_for_existing_fields():
    params = BlockParams(norm=RMSNormParams(torch.ones(4)), proj=torch.eye(4))
    with pytest.raises(
        ValueError,
        match=r"ParamsHolder: children must name fields of BlockParams "
        r"\['norm', 'proj', 'bias', 'index'\], got \['nrom'\]",
    ):
        ParamsHolder(params, children={"nrom": RMSNorm(dim=4)})
    with pytest.raises(
        TypeError,
        match=r"children\['norm'\] must be a Shell \(its params\(\) fills the field\), "
        r"got Identity",
    ):
        ParamsHolder(params, children={"norm": torch.nn.Identity()})


def test_complex_leaves_are_trainable():
    params = BlockParams(norm=RMSNormParams(), proj=torch.ones(2, 2, dtype=torch.complex64))
    assert ParamsHolder(params).proj.requires_grad


def test_bfloat16_move_then_forward():
    for shell, fn in (
        (RMSNorm(RMSNormConfig(dim=8)), rms_norm),
        (LayerNorm(LayerNormConfig(dim=8)), layer_norm),
    ):
        shell = shell.to(torch.bfloat16)
        assert all(p.dtype == torch.bfloat16 for p in shell.parameters())
        x = _randn(2, 3, 8, seed=3, dtype=torch.bfloat16)
        out = shell(x)
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out, fn(shell.params(), x), rtol=0, atol=0)
    stack_shell = Stack(_stack_params()).to(torch.bfloat16)
    assert stack_shell(_randn(2, 4, seed=4, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_shell_rejects_what_is_not_params():
    with pytest.raises(TypeError, match="Stack: expected a params pytree, got <class 'dict'>"):
        Stack({"head": torch.ones(1)})

    @pytree_node
    @attrs.define
    class Odd:
        weight: object

    with pytest.raises(TypeError, match="field 'weight' holds <class 'int'>"):
        ParamsHolder(Odd(3))


def test_params_keeps_a_list_field_a_list():
    # A field given as a list comes back as a list (and a tuple as a tuple), with live tensors.
    params = _stack_params()
    as_list = StackParams(blocks=list(params.blocks), head=params.head)
    shell = Stack(as_list)
    rebuilt = shell.params()
    assert type(rebuilt.blocks) is list and len(rebuilt.blocks) == 2
    assert rebuilt.blocks[1].proj is shell.blocks[1].proj
    assert type(Stack(params).params().blocks) is tuple
