"""Shape-annotated types and the ``shapecheck`` decorator.

Axis glossary (also in ``docs/conventions.md``); every annotation in subq uses these names:

==============  ==========================================================
``b``           batch
``t``           sequence (tokens); ``s`` is the key/value length when it differs
``h w``         spatial height, width (``h`` is *never* heads)
``d h w``       spatial depth, height, width
``*spatial``    any number of spatial axes
``heads``       query heads
``kv_heads``    key/value heads (GQA/MQA)
``c``           channels (model width)
``head_dim``    channels per head
``state``       recurrent state size
``*batch``      any number of leading batch axes
==============  ==========================================================

Layout names from the reference API: ``bhl`` is channels-first ``[B, C, *spatial]`` and ``blh`` is
channels-last ``[B, *spatial, C]``.

``shapecheck`` is decided once, when a function is decorated, from the ``SUBQ_TYPECHECK``
environment variable (off unless set to ``1``/``true``/``on``/``yes``):

* off: the function is returned unchanged (no overhead);
* on: arguments and return values are checked by jaxtyping + beartype in eager mode, the tensor
  fields of params pytrees are checked against their annotations inside the same dimension memo (so
  ``c`` in ``RMSNormParams.weight`` binds to ``c`` in the input), and while
  ``torch.compiler.is_compiling()`` the raw function runs (jaxtyping's checks break dynamo).
"""

from __future__ import annotations

import functools
import os
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import torch
from jaxtyping import Bool, Float, Int, Integer, Num, Shaped, jaxtyped
from torch import Tensor

__all__ = [
    "Bool",
    "Float",
    "Int",
    "Integer",
    "Num",
    "Shaped",
    "Tensor",
    "shapecheck",
    "typecheck_enabled",
]

F = TypeVar("F", bound=Callable[..., Any])


def typecheck_enabled() -> bool:
    """Whether ``SUBQ_TYPECHECK`` asks for runtime shape checks."""
    return os.environ.get("SUBQ_TYPECHECK", "").strip().lower() in {"1", "true", "on", "yes"}


def _jaxtyping_annotation(annotation: Any) -> Any | None:
    """The jaxtyping array type inside ``annotation`` (unwrapping ``X | None``), or None."""
    if isinstance(annotation, type) and hasattr(annotation, "dim_str"):
        return annotation
    for arg in typing.get_args(annotation):
        found = _jaxtyping_annotation(arg)
        if found is not None:
            return found
    return None


@functools.cache
def _field_annotations(cls: type) -> tuple[tuple[str, Any], ...]:
    hints = typing.get_type_hints(cls)
    out = []
    for field in attrs.fields(cls):
        ann = _jaxtyping_annotation(hints.get(field.name))
        out.append((field.name, ann))
    return tuple(out)


def _check_params_fields(value: Any, where: str) -> None:
    """Check tensor fields of (nested) attrs params against their jaxtyping annotations.

    Runs inside the caller's jaxtyping memo, so dimension names bind across arguments.
    """
    if isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            _check_params_fields(item, f"{where}[{i}]")
        return
    if not attrs.has(type(value)):
        return
    for name, ann in _field_annotations(type(value)):
        field_value = getattr(value, name)
        if field_value is None:
            continue
        if isinstance(field_value, Tensor):
            if ann is not None and not isinstance(field_value, ann):
                raise TypeError(
                    f"{where}.{name}: expected {ann.__name__} consistent with the other arguments, "
                    f"got {field_value.dtype} tensor of shape {tuple(field_value.shape)}"
                )
        else:
            _check_params_fields(field_value, f"{where}.{name}")


def shapecheck(fn: F) -> F:
    """Check annotated shapes and dtypes of ``fn`` at runtime when ``SUBQ_TYPECHECK`` is on."""
    if not typecheck_enabled():
        return fn
    from beartype import beartype

    @functools.wraps(fn)
    def with_params_checks(*args: Any, **kwargs: Any) -> Any:
        for i, arg in enumerate(args):
            _check_params_fields(arg, f"argument {i} ({type(arg).__name__})")
        for key, arg in kwargs.items():
            _check_params_fields(arg, key)
        return fn(*args, **kwargs)

    checked = jaxtyped(typechecker=beartype)(with_params_checks)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        return checked(*args, **kwargs)

    return typing.cast(F, wrapper)
