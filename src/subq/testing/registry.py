"""The layer registry that property tests iterate.

Each layer family declares, in ``subq/testing/layers/<family>.py``, how to draw a random instance
(config, params, input) and which properties it has. ``property_tests/`` runs every declared
property for every registered layer, so a new layer is covered by registering it.

Properties (strings in ``LayerSpec.properties``):

* ``"causal"``: outputs before t do not depend on inputs after t (perturbation and gradient);
* ``"vmap"``: ``vmap`` over a stacked-params ensemble equals a loop;
* ``"grad"``: ``torch.func.grad`` equals autograd;
* ``"shell"``: the ``nn.Module`` shell equals the pure function, also via ``functional_call``;
* ``"compile"``: ``torch.compile(fullgraph=True)`` with zero graph breaks;
* ``"dtype"``: a bfloat16 input gives a bfloat16 output.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

import attrs
from torch import Tensor, nn

__all__ = ["PROPERTIES", "LayerCase", "LayerSpec", "layer_registry", "register_layer"]

PROPERTIES = frozenset({"causal", "vmap", "grad", "shell", "compile", "dtype"})


@attrs.define
class LayerCase:
    """One drawn instance of a layer.

    Attributes:
        fn: ``fn(params, x) -> y``, the pure function with options bound.
        params: the params pytree (float64 for exactness).
        x: an input (float64).
        shell: the matching ``nn.Module`` (same params), or None.
        make_params: ``seed -> params`` of the same config, for ensembles.
        time_axis: the sequence axis of ``x`` and ``y`` (for causality).
    """

    fn: Callable[[Any, Tensor], Tensor]
    params: Any
    x: Tensor
    shell: nn.Module | None = None
    make_params: Callable[[int], Any] | None = None
    time_axis: int = 1


@attrs.frozen
class LayerSpec:
    """A registered layer: ``build(draw)`` draws a :class:`LayerCase` with hypothesis' ``draw``."""

    name: str
    build: Callable[[Callable[..., Any]], LayerCase]
    properties: frozenset[str]

    def __attrs_post_init__(self) -> None:
        unknown = set(self.properties) - PROPERTIES
        if unknown:
            raise ValueError(
                f"LayerSpec {self.name!r}: unknown properties {sorted(unknown)}; "
                f"valid: {sorted(PROPERTIES)}"
            )


_REGISTRY: dict[str, LayerSpec] = {}


def register_layer(
    name: str, properties: set[str] | frozenset[str]
) -> Callable[
    [Callable[[Callable[..., Any]], LayerCase]], Callable[[Callable[..., Any]], LayerCase]
]:
    """Decorator registering ``build(draw) -> LayerCase`` under ``name``."""

    def decorate(build: Callable[[Callable[..., Any]], LayerCase]):
        if name in _REGISTRY:
            raise ValueError(f"register_layer: {name!r} is already registered")
        _REGISTRY[name] = LayerSpec(name, build, frozenset(properties))
        return build

    return decorate


def layer_registry() -> dict[str, LayerSpec]:
    """Every registered layer (imports each module of ``subq.testing.layers``)."""
    import subq.testing.layers

    for info in pkgutil.iter_modules(subq.testing.layers.__path__):
        importlib.import_module(f"subq.testing.layers.{info.name}")
    return dict(_REGISTRY)
