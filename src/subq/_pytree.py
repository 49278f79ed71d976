"""Params pytrees: attrs classes registered with ``torch.utils._pytree``.

A params class is ``@pytree_node`` over ``@attrs.define``. Its tensor fields are leaves; fields that
are ``None`` are part of the *structure* (the tree's context), not leaves, because a ``None`` leaf
breaks ``torch.func.grad`` and ``vmap(in_dims=0)``. Key paths render as dotted names that equal the
``state_dict`` keys of the matching shell, so ``torch.func.functional_call(shell, flat, ...)`` and
``params_from_flat`` speak the same language.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import attrs
import torch
import torch.utils._pytree as pytree
from torch import Tensor

__all__ = [
    "flat_key",
    "in_dims_like",
    "is_params",
    "params_from_flat",
    "params_to_flat",
    "pytree_node",
    "stack_params",
    "unstack_params",
]

T = TypeVar("T")


def pytree_node(cls: type[T]) -> type[T]:
    """Register an attrs class as a torch pytree node with ``None`` fields as structure.

    Example:
        >>> import attrs, torch
        >>> @pytree_node
        ... @attrs.define
        ... class P:
        ...     weight: torch.Tensor
        ...     bias: torch.Tensor | None = None
        >>> leaves, spec = torch.utils._pytree.tree_flatten(P(torch.ones(2)))
        >>> len(leaves)
        1
    """
    if not attrs.has(cls):
        raise TypeError(f"pytree_node expects an attrs class, got {cls!r}")
    names = tuple(f.name for f in attrs.fields(cls))

    def flatten(obj: Any) -> tuple[list[Any], tuple[str, ...]]:
        present = tuple(n for n in names if getattr(obj, n) is not None)
        return [getattr(obj, n) for n in present], present

    def unflatten(values: Sequence[Any], present: tuple[str, ...]) -> Any:
        kwargs: dict[str, Any] = dict.fromkeys(names)
        kwargs.update(zip(present, values))
        return cls(**kwargs)

    def flatten_with_keys(obj: Any) -> tuple[list[tuple[Any, Any]], tuple[str, ...]]:
        values, present = flatten(obj)
        return [(pytree.GetAttrKey(n), v) for n, v in zip(present, values)], present

    pytree.register_pytree_node(
        cls,
        flatten,
        unflatten,
        serialized_type_name=f"{cls.__module__}.{cls.__qualname__}",
        flatten_with_keys_fn=flatten_with_keys,
    )
    cls.__subq_params__ = True  # type: ignore[attr-defined]
    return cls


def is_params(obj: Any) -> bool:
    """Whether ``obj`` is an instance of a ``pytree_node`` params class."""
    return getattr(type(obj), "__subq_params__", False)


def flat_key(path: Sequence[Any]) -> str:
    """Render a pytree key path as a ``state_dict`` key (``"blocks.0.mixer.weight"``)."""
    parts = []
    for key in path:
        if isinstance(key, pytree.GetAttrKey):
            parts.append(key.name)
        elif isinstance(key, pytree.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, pytree.MappingKey):
            parts.append(str(key.key))
        else:
            parts.append(str(key))
    return ".".join(parts)


def params_to_flat(params: Any) -> dict[str, Tensor]:
    """Flatten a params pytree into ``{state_dict key: tensor}``."""
    leaves, _ = pytree.tree_flatten_with_path(params)
    return {flat_key(path): leaf for path, leaf in leaves}


def params_from_flat(template: T, flat: Mapping[str, Tensor]) -> T:
    """Rebuild a params pytree shaped like ``template`` from ``{state_dict key: tensor}``.

    Raises:
        KeyError: if ``flat`` lacks a key of ``template`` or has keys ``template`` does not.
    """
    leaves, spec = pytree.tree_flatten_with_path(template)
    keys = [flat_key(path) for path, _ in leaves]
    missing = [k for k in keys if k not in flat]
    unexpected = sorted(set(flat) - set(keys))
    if missing or unexpected:
        raise KeyError(f"params_from_flat: missing keys {missing}, unexpected keys {unexpected}")
    return pytree.tree_unflatten([flat[k] for k in keys], spec)


def stack_params(params: Sequence[T]) -> T:
    """Stack structurally identical params on a new leading axis (for ``vmap`` ensembles)."""
    if not params:
        raise ValueError("stack_params: expected at least one params pytree, got none")
    first = pytree.tree_structure(params[0])
    for i, member in enumerate(params[1:], start=1):
        if pytree.tree_structure(member) != first:
            raise ValueError(
                f"stack_params: params[{i}] differs in structure from params[0] (a field is None "
                f"in one and a tensor in the other, or the types differ):\n"
                f"params[0]: {first}\nparams[{i}]: {pytree.tree_structure(member)}"
            )
    return pytree.tree_map(lambda *xs: torch.stack(xs), params[0], *params[1:])


def unstack_params(params: T) -> list[T]:
    """Inverse of :func:`stack_params`: split the leading axis into a list of pytrees."""
    leaves, spec = pytree.tree_flatten_with_path(params)
    if not leaves:
        return [params]
    sizes = {flat_key(path): leaf.shape[0] if leaf.ndim else None for path, leaf in leaves}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise ValueError(
            "unstack_params: every leaf needs the same leading (stacked) size, got "
            + ", ".join(f"{key}: {n}" for key, n in sizes.items())
        )
    n = leaves[0][1].shape[0]
    return [pytree.tree_unflatten([leaf[i] for _, leaf in leaves], spec) for i in range(n)]


def in_dims_like(params: Any, dim: int = 0) -> Any:
    """A pytree of ``vmap`` in_dims matching ``params`` (every leaf batched along ``dim``).

    Leaves shared across the vmapped axis belong in a separate argument with ``in_dims=None``:
    a ``None`` inside a params pytree would change its structure.
    """
    return pytree.tree_map(lambda _: dim, params)
