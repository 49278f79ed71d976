"""The shell base class: an ``nn.Module`` that holds a params pytree as ``nn.Parameter``s."""

from __future__ import annotations

from typing import Any

import attrs
from torch import Tensor, nn

from subq._pytree import is_params

__all__ = ["ParamsHolder", "Shell"]


class Shell(nn.Module):
    """Base of every subq shell.

    ``Shell(params)`` registers each tensor field of the params pytree as an ``nn.Parameter`` under
    the field's name, each nested params pytree as a child module, and each tuple/list of params as
    an ``nn.ModuleList``; ``None`` fields are absent. ``state_dict`` keys therefore equal the
    pytree's key paths, and :meth:`params` rebuilds the pytree from the live parameters (so
    optimisers, ``.to()`` and ``load_state_dict`` act on what the pure function sees).

    A subclass builds its params with ``init_x(cfg, ...)``, calls ``super().__init__(params)`` and
    implements ``forward`` by calling the pure function with ``self.params()``. A nested field may
    also be filled by a specialised shell: pass it in ``children`` and it replaces the generic
    holder (its own ``params()`` is then used).

    ``parameters()`` order is module order (a module's own parameters before its children's), not
    pytree leaf order: match leaves by key (``subq.params_to_flat``), never by zipping.
    """

    def __init__(self, params: Any, children: dict[str, nn.Module] | None = None) -> None:
        super().__init__()
        if not is_params(params):
            raise TypeError(
                f"{type(self).__name__}: expected a params pytree, got {type(params)!r}"
            )
        self._params_cls = type(params)
        self._field_names = tuple(f.name for f in attrs.fields(type(params)))
        self._sequence_types: dict[str, type] = {}
        children = children or {}
        unknown = sorted(set(children) - set(self._field_names))
        if unknown:
            raise ValueError(
                f"{type(self).__name__}: children must name fields of {type(params).__name__} "
                f"{list(self._field_names)}, got {unknown}"
            )
        for name, child in children.items():
            if not isinstance(child, Shell):
                raise TypeError(
                    f"{type(self).__name__}: children[{name!r}] must be a Shell (its params() "
                    f"fills the field), got {type(child).__name__}"
                )
        for name in self._field_names:
            if name in children:
                self.add_module(name, children[name])
                continue
            value = getattr(params, name)
            if value is None:
                continue
            if isinstance(value, Tensor):
                self.register_parameter(
                    name,
                    nn.Parameter(
                        value.detach().clone(),
                        requires_grad=value.dtype.is_floating_point or value.dtype.is_complex,
                    ),
                )
            elif is_params(value):
                self.add_module(name, ParamsHolder(value))
            elif isinstance(value, (tuple, list)):
                self.add_module(name, nn.ModuleList(_as_module(v) for v in value))
                self._sequence_types[name] = type(value)  # params() rebuilds a list as a list
            else:
                raise TypeError(
                    f"{type(self).__name__}: field {name!r} holds {type(value)!r}; params fields "
                    "must be tensors, params pytrees, tuples of them, or None"
                )

    def params(self) -> Any:
        """The params pytree, built from the live parameters (no copies)."""
        kwargs = {}
        for name in self._field_names:
            value = getattr(self, name, None)
            if isinstance(value, nn.ModuleList):
                value = self._sequence_types.get(name, tuple)(m.params() for m in value)
            elif isinstance(value, Shell):
                value = value.params()
            kwargs[name] = value
        return self._params_cls(**kwargs)


class ParamsHolder(Shell):
    """A shell with no ``forward``: holds a nested params pytree inside a larger shell."""


def _as_module(value: Any) -> nn.Module:
    if isinstance(value, nn.Module):
        return value
    return ParamsHolder(value)


def mixer_config(
    owner: str, config_cls: type, hidden_dim: int | None, cfg: Any, fields: dict
) -> Any:
    """The config of a mixer shell built as ``Shell(hidden_dim, cfg)`` or ``Shell(hidden_dim, **fields)``.

    ``QKVSequenceMixer`` builds its inner mixer with ``hidden_dim`` alone; users pass either a
    config or its fields. Conflicting ``hidden_dim`` or both forms at once raise, naming ``owner``.
    """
    if cfg is None:
        return config_cls(hidden_dim=hidden_dim, **fields)
    if hidden_dim is not None and hidden_dim != cfg.hidden_dim:
        raise ValueError(
            f"{owner}: hidden_dim={hidden_dim} differs from cfg.hidden_dim={cfg.hidden_dim}"
        )
    if fields:
        raise TypeError(f"{owner}: pass either cfg or config fields, got both ({sorted(fields)})")
    return cfg
