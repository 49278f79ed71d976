"""``shapecheck``: off is free, on checks shapes and dtypes, binds dims across params, compiles."""

from __future__ import annotations

import attrs
import jaxtyping
import pytest
import torch

from subq._pytree import pytree_node
from subq._typing import Float, Int, Tensor, shapecheck, typecheck_enabled
from subq.testing import assert_compiles


@pytree_node
@attrs.define
class ScaleParams:
    weight: Float[Tensor, " c"]
    bias: Float[Tensor, " c"] | None = None


@pytree_node
@attrs.define
class StackParams:
    first: ScaleParams
    rest: tuple[ScaleParams, ...]


def _decorate(monkeypatch, value: str, fn):
    # shapecheck decides when it decorates, so each test decorates a fresh function.
    monkeypatch.setenv("SUBQ_TYPECHECK", value)
    return shapecheck(fn)


def _scale(params: ScaleParams, x: Float[Tensor, "b c"]) -> Float[Tensor, "b c"]:
    y = x * params.weight
    return y if params.bias is None else y + params.bias


def _add(x: Float[Tensor, "b c"], y: Float[Tensor, "b c"]) -> Float[Tensor, "b c"]:
    return x + y


@pytest.mark.parametrize(
    ("value", "enabled"),
    [("1", True), ("true", True), ("ON", True), (" yes ", True), ("0", False), ("", False)],
)
def test_typecheck_enabled_reads_the_environment(monkeypatch, value, enabled):
    monkeypatch.setenv("SUBQ_TYPECHECK", value)
    assert typecheck_enabled() is enabled


def test_off_returns_the_raw_function(monkeypatch):
    assert _decorate(monkeypatch, "0", _add) is _add
    monkeypatch.delenv("SUBQ_TYPECHECK")
    assert shapecheck(_add) is _add
    # ... and so a wrong shape goes unchecked (broadcasting happily).
    assert _add(torch.ones(2, 3), torch.ones(1, 3)).shape == (2, 3)


def test_on_keeps_name_and_doc(monkeypatch):
    checked = _decorate(monkeypatch, "1", _add)
    assert checked is not _add
    assert checked.__name__ == "_add" and checked.__wrapped__ is _add


def test_on_catches_a_wrong_rank_naming_the_argument(monkeypatch):
    checked = _decorate(monkeypatch, "1", _add)
    assert checked(torch.ones(2, 3), torch.ones(2, 3)).shape == (2, 3)
    with pytest.raises(jaxtyping.TypeCheckError, match="y") as info:
        checked(torch.ones(2, 3), torch.ones(3))
    assert "b c" in str(info.value)


def test_on_binds_dims_across_arguments(monkeypatch):
    checked = _decorate(monkeypatch, "1", _add)
    with pytest.raises(jaxtyping.TypeCheckError):
        checked(torch.ones(2, 3), torch.ones(2, 4))
    with pytest.raises(jaxtyping.TypeCheckError):
        checked(torch.ones(2, 3), torch.ones(1, 3))  # would broadcast unchecked


def test_on_checks_dtype_category(monkeypatch):
    def index(x: Int[Tensor, " n"]) -> Int[Tensor, " n"]:
        return x

    checked = _decorate(monkeypatch, "1", index)
    assert checked(torch.arange(3)).dtype == torch.int64
    with pytest.raises(jaxtyping.TypeCheckError):
        checked(torch.ones(3))


def test_on_checks_the_return_value(monkeypatch):
    def wrong(x: Float[Tensor, "b c"]) -> Float[Tensor, "b c"]:
        return x.sum(-1)

    with pytest.raises(jaxtyping.TypeCheckError):
        _decorate(monkeypatch, "1", wrong)(torch.ones(2, 3))


def test_on_binds_dims_of_params_fields_to_arguments(monkeypatch):
    checked = _decorate(monkeypatch, "1", _scale)
    good = ScaleParams(torch.ones(3))
    assert checked(good, torch.ones(2, 3)).shape == (2, 3)
    # weight of size 1 would broadcast; the check binds c = 3 from x and rejects it.
    with pytest.raises(TypeError, match=r"argument 0 \(ScaleParams\)\.weight: .*'c'.*\(1,\)"):
        checked(ScaleParams(torch.ones(1)), torch.ones(2, 3))
    with pytest.raises(TypeError, match=r"argument 0 \(ScaleParams\)\.bias: .*shape \(4,\)"):
        checked(ScaleParams(torch.ones(3), torch.ones(4)), torch.ones(2, 3))


def test_params_passed_by_keyword_are_named(monkeypatch):
    checked = _decorate(monkeypatch, "1", _scale)
    with pytest.raises(TypeError, match=r"^params\.weight: "):
        checked(params=ScaleParams(torch.ones(5)), x=torch.ones(2, 3))


def test_nested_and_tuple_params_fields_are_checked(monkeypatch):
    def apply(params: StackParams, x: Float[Tensor, "b c"]) -> Float[Tensor, "b c"]:
        y = _scale(params.first, x)
        for p in params.rest:
            y = _scale(p, y)
        return y

    checked = _decorate(monkeypatch, "1", apply)
    good = StackParams(ScaleParams(torch.ones(3)), (ScaleParams(torch.ones(3)),) * 2)
    assert checked(good, torch.ones(2, 3)).shape == (2, 3)
    bad = StackParams(
        ScaleParams(torch.ones(3)), (ScaleParams(torch.ones(3)), ScaleParams(torch.ones(2)))
    )
    with pytest.raises(TypeError, match=r"argument 0 \(StackParams\)\.rest\[1\]\.weight"):
        checked(bad, torch.ones(2, 3))


def test_compiles_with_zero_graph_breaks_when_on(monkeypatch):
    checked = _decorate(monkeypatch, "1", _scale)
    params, x = ScaleParams(torch.randn(3), torch.randn(3)), torch.randn(2, 3)
    out = assert_compiles(checked, params, x)  # counts graph breaks, compares with eager
    torch.testing.assert_close(out, x * params.weight + params.bias, rtol=0, atol=0)


def test_compiled_checked_function_matches_eager(monkeypatch):
    checked = _decorate(monkeypatch, "1", _add)
    x, y = torch.randn(2, 3), torch.randn(2, 3)
    compiled = torch.compile(checked, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, y), x + y, rtol=0, atol=0)
