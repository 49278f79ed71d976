"""Lazy configuration: plain, JSON-able specs of what to build, and ``instantiate`` to build them.

``LazyConfig(target)(*args, **kwargs)`` returns a plain ``dict``::

    {"_target_": "subq.nn.norm.RMSNorm", "dim": 512, "eps": 1e-6}

``instantiate(spec, **overrides)`` imports the target and calls it. A spec is data: it can be
printed, compared, edited like any dict, and written to JSON or YAML and read back.

Spec keys:

* ``_target_`` (or ``__target__``, as the reference writes it): a dotted path (``pkg.mod.Name``,
  ``pkg.mod.Outer.Inner``, ``pkg.mod.Class.from_config``) or, in Python only, the callable itself;
* ``_args_``: positional arguments (a list);
* ``_partial_: true``: build ``functools.partial(target, ...)`` instead of calling it;
* ``_call_: false``: the target itself, not called (how classes, functions and dtypes given as
  argument values are stored, e.g. ``activation=torch.nn.GELU``);
* every other key is a keyword argument.

Nesting follows the reference: a nested spec whose target is an ``nn.Module`` subclass is handed
to the parent **unbuilt** (a copy of the spec), so the parent can complete it (``hidden_dim``,
``num_heads`` ...) with ``instantiate(cfg, **overrides)``; ``recursive_instantiate=True`` builds those
too. Every other nested spec (functions, attrs configs, other classes) is built before the parent.
Lists, tuples and dicts are walked.

``PLACEHOLDER`` (the string ``"???"``, as in OmegaConf) marks a value to be filled later, usually
by a parent's overrides; building a spec in which one is left raises a ``ValueError`` naming its
key path. Placeholders inside nested specs handed over unbuilt are the parent's to fill.

When ``LazyConfig(...)`` is called, argument values are stored as data where possible: classes,
functions and ``torch.dtype`` values become ``_call_: false`` references; ``functools.partial``
objects, enum members and attrs instances (e.g. an ``RMSNormConfig``) become specs that rebuild
them. Anything else (a tensor, a
closure, a built module) is kept as the object: the spec still instantiates, but :func:`to_json`
refuses it and names its key. JSON has no tuples: they come back from JSON and YAML as lists.
"""

from __future__ import annotations

import builtins
import enum
import functools
import importlib
import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import torch

__all__ = [
    "PLACEHOLDER",
    "LazyConfig",
    "from_json",
    "from_yaml",
    "instantiate",
    "is_spec",
    "locate",
    "to_json",
    "to_yaml",
]

#: A value to be filled before the spec is built (usually by a parent's overrides).
PLACEHOLDER = "???"

_TARGET_KEYS = ("_target_", "__target__")
_RESERVED = frozenset({"_target_", "__target__", "_args_", "_partial_", "_call_"})


# ---------------------------------------------------------------------------------------------
# locating targets by dotted path


def locate(path: str) -> Any:
    """The object at a dotted path: a module, or attributes reached from the longest module prefix.

    Nested qualnames work (``pkg.mod.Outer.Inner``, ``pkg.mod.Class.classmethod``); a single name
    with no module (``"dict"``) is looked up in ``builtins``.

    Raises:
        ImportError: saying which part of the path failed to import or to resolve.

    Example:
        >>> locate("subq.functional.norm.RMSNormConfig").__name__
        'RMSNormConfig'
    """
    parts = path.split(".") if isinstance(path, str) else []
    if not parts or not all(part.isidentifier() for part in parts):
        raise ValueError(f"locate: expected a dotted path like 'pkg.module.Name', got {path!r}")
    module = None
    imported = 0
    # Import prefixes from the shortest up: the first one that is not a module ends the imports
    # and the rest of the path is attributes. A module that fails *inside* is reported as such.
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:
                break
            raise ImportError(
                f"cannot locate {path!r}: importing module {name!r} failed: {err}"
            ) from err
        except Exception as err:
            raise ImportError(
                f"cannot locate {path!r}: importing module {name!r} failed: "
                f"{type(err).__name__}: {err}"
            ) from err
        imported = i
    if module is None:
        if len(parts) == 1 and hasattr(builtins, parts[0]):
            return getattr(builtins, parts[0])
        raise ImportError(f"cannot locate {path!r}: no module named {parts[0]!r}")
    obj: Any = module
    for j in range(imported, len(parts)):
        try:
            obj = getattr(obj, parts[j])
        except AttributeError:
            raise ImportError(
                f"cannot locate {path!r}: imported module {'.'.join(parts[:imported])!r}, "
                f"but {'.'.join(parts[:j])!r} has no attribute {parts[j]!r}"
            ) from None
    return obj


def _dotted_name(obj: Any) -> str | None:
    """The dotted path that :func:`locate` maps back to ``obj``, or None if there is none."""
    if isinstance(obj, torch.dtype):
        return str(obj)  # "torch.bfloat16"
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return None  # lambdas and local classes have no importable path
    paths = [f"{module}.{qualname}"]
    name = getattr(obj, "__name__", None)
    if inspect.isbuiltin(obj) and isinstance(name, str) and name != qualname:
        # torch's C functions (torch.relu: qualname '_VariableFunctionsClass.relu') live on
        # their module under their plain name.
        paths.append(f"{module}.{name}")
    for path in paths:
        try:
            found = locate(path)
        except (ImportError, ValueError):
            continue
        # Bound classmethods are created anew on each access: equal, not identical.
        if found is obj or found == obj:
            return path
    return None


def _describe(target: Any) -> str:
    if isinstance(target, str):
        return target
    return _dotted_name(target) or repr(target)


# ---------------------------------------------------------------------------------------------
# specs


def is_spec(obj: Any) -> bool:
    """Whether ``obj`` is a spec: a mapping with a ``_target_`` (or ``__target__``) key."""
    return isinstance(obj, Mapping) and any(key in obj for key in _TARGET_KEYS)


def _where(path: str) -> str:
    return f"at {path!r}" if path else "at the top level"


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _target_of(spec: Mapping[str, Any], path: str) -> Any:
    keys = [key for key in _TARGET_KEYS if key in spec]
    if len(keys) == 2:
        raise ValueError(
            f"instantiate: a spec has either '_target_' or '__target__', got both {_where(path)}"
        )
    return spec[keys[0]]


def _encode(value: Any) -> Any:
    """Store ``value`` as spec data where it has a data form (see the module docstring)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, LazyConfig):
        return value()
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if key in _TARGET_KEYS and not isinstance(item, str):
                out[key] = _dotted_name(item) or item
            else:
                out[key] = _encode(item)
        return out
    if isinstance(value, list):
        return [_encode(item) for item in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_encode(item) for item in value)
    if isinstance(value, functools.partial):
        name = _dotted_name(value.func)
        if name is None:
            return value
        spec: dict[str, Any] = {"_target_": name, "_partial_": True}
        if value.args:
            spec["_args_"] = [_encode(a) for a in value.args]
        spec.update((key, _encode(item)) for key, item in value.keywords.items())
        return spec
    if isinstance(value, torch.dtype) or isinstance(value, type) or inspect.isroutine(value):
        name = _dotted_name(value)
        return value if name is None else {"_target_": name, "_call_": False}
    if isinstance(value, enum.Enum):
        name = _dotted_name(type(value))
        return value if name is None else {"_target_": name, "_args_": [_encode(value.value)]}
    if attrs.has(type(value)):
        name = _dotted_name(type(value))
        if name is None:
            return value
        spec = {"_target_": name}
        for field in attrs.fields(type(value)):
            if field.init:
                spec[field.alias] = _encode(getattr(value, field.name))
        return spec
    return value


def _signature(target: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):  # some builtins and C types have none
        return None


def _check_call(
    target: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], path: str, partial: bool
) -> None:
    """Raise a ``TypeError`` naming target, signature and key if the call cannot bind."""
    sig = _signature(target)
    if sig is None:
        return
    sig = sig.replace(return_annotation=inspect.Signature.empty)
    params = sig.parameters
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key in kwargs:
        param = params.get(key)
        if (param is None and not var_kw) or (
            param is not None and param.kind is inspect.Parameter.POSITIONAL_ONLY
        ):
            valid = [
                name
                for name, p in params.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            ]
            raise TypeError(
                f"{_describe(target)}{sig} has no parameter {key!r} "
                f"({_where(_join(path, key))}); valid keys: {valid}"
            )
    try:
        (sig.bind_partial if partial else sig.bind)(*args, **kwargs)
    except TypeError as err:
        raise TypeError(
            f"cannot call {_describe(target)}{sig} with the spec {_where(path)}: {err}"
        ) from None


class LazyConfig:
    """Deferred-instantiation config builder.

    ``LazyConfig(target)(*args, **kwargs)`` returns a plain dict spec (``_target_`` holds the
    target's dotted path, ``_args_`` the positional arguments); :func:`instantiate` builds it.
    When ``target`` is an object (not a path string) unknown keyword names are rejected at once.
    Pass ``_partial_=True`` for a spec that builds a ``functools.partial``.

    Args:
        target: a class, function or other callable, or its dotted path.

    Example:
        >>> from subq.nn.norm import RMSNorm
        >>> spec = LazyConfig(RMSNorm)(dim=8, eps=1e-5)
        >>> spec
        {'_target_': 'subq.nn.norm.RMSNorm', 'dim': 8, 'eps': 1e-05}
        >>> instantiate(spec, dim=16).weight.shape
        torch.Size([16])
    """

    def __init__(self, target: Callable[..., Any] | str) -> None:
        if isinstance(target, str):
            if not target:
                raise ValueError("LazyConfig: target must be a callable or a dotted path, got ''")
        elif not callable(target):
            raise TypeError(
                f"LazyConfig: target must be a callable or a dotted path, got {target!r}"
            )
        self.target = target

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        reserved = sorted(set(kwargs) & (_RESERVED - {"_partial_"}))
        if reserved:
            raise ValueError(
                f"LazyConfig({_describe(self.target)}): {reserved[0]!r} is set by LazyConfig "
                "itself; only '_partial_' may be passed as a keyword"
            )
        partial = kwargs.get("_partial_", False)
        if not isinstance(partial, bool):
            raise ValueError(
                f"LazyConfig({_describe(self.target)}): _partial_ must be a bool, got {partial!r}"
            )
        if not isinstance(self.target, str):
            plain = {k: v for k, v in kwargs.items() if k != "_partial_"}
            # Unknown names are errors now; missing ones may be filled later by a parent.
            _check_call(self.target, args, plain, "", partial=True)
        target = self.target
        if not isinstance(target, str):
            target = _dotted_name(target) or target  # the object itself if it has no path
        spec: dict[str, Any] = {"_target_": target}
        if args:
            spec["_args_"] = [_encode(a) for a in args]
        for key, value in kwargs.items():
            spec[key] = _encode(value)
        return spec

    def __repr__(self) -> str:
        return f"LazyConfig({_describe(self.target)})"


# ---------------------------------------------------------------------------------------------
# instantiate


def _copy(value: Any) -> Any:
    """Copy the containers of a spec, sharing its leaves (the caller may edit the copy)."""
    if isinstance(value, Mapping):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_copy(item) for item in value)
    return value


def _is_module_class(target: Any) -> bool:
    return isinstance(target, type) and issubclass(target, torch.nn.Module)


def _resolve(raw: Any, path: str) -> Any:
    if isinstance(raw, str):
        try:
            return locate(raw)
        except (ImportError, ValueError) as err:
            raise type(err)(f"instantiate ({_where(path)}): {err}") from err
    if callable(raw):
        return raw
    raise TypeError(
        f"instantiate: _target_ must be a dotted path or a callable, got {raw!r} {_where(path)}"
    )


def _build_value(value: Any, recursive: bool, path: str, owner: str) -> Any:
    """Build one argument value; ``owner`` names the target it is an argument of."""
    if isinstance(value, str):
        if value == PLACEHOLDER:
            raise ValueError(
                f"instantiate: {path!r} (in the arguments of {owner}) is still PLACEHOLDER "
                f"({PLACEHOLDER!r}); set it in the spec or pass it as a keyword override"
            )
        return value
    if isinstance(value, LazyConfig):
        value = value()
    if is_spec(value):
        target = _resolve(_target_of(value, path), path)
        if not recursive and value.get("_call_", True) is not False and _is_module_class(target):
            return _copy(value)  # the parent module completes and builds it
        return _build(value, None, {}, recursive, path, target)
    if isinstance(value, Mapping):
        return {
            key: _build_value(item, recursive, _join(path, key), owner)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [
            _build_value(item, recursive, f"{path}[{i}]", owner) for i, item in enumerate(value)
        ]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(
            _build_value(item, recursive, f"{path}[{i}]", owner) for i, item in enumerate(value)
        )
    return value


def _build(
    spec: Mapping[str, Any],
    args: tuple[Any, ...] | None,
    overrides: Mapping[str, Any],
    recursive: bool,
    path: str,
    target: Any = None,
) -> Any:
    raw_target = _target_of(spec, path)
    if target is None:
        target = _resolve(raw_target, path)
    name = _describe(raw_target)
    unknown = [
        key
        for key in spec
        if isinstance(key, str)
        and len(key) > 2
        and key.startswith("_")
        and key.endswith("_")
        and key not in _RESERVED
    ]
    if unknown:
        raise ValueError(
            f"instantiate: unknown reserved key {unknown[0]!r} in the spec of {name} "
            f"{_where(path)}; reserved keys are {sorted(_RESERVED)}"
        )
    bad_overrides = sorted(set(overrides) & _RESERVED)
    if bad_overrides:
        raise ValueError(
            f"instantiate: {bad_overrides[0]!r} cannot be overridden; edit the spec instead"
        )
    call = spec.get("_call_", True)
    partial = spec.get("_partial_", False)
    for key, flag in (("_call_", call), ("_partial_", partial)):
        if not isinstance(flag, bool):
            raise ValueError(
                f"instantiate: {key} must be true or false, got {flag!r} in the spec of {name} "
                f"{_where(path)}"
            )
    kwargs = {key: value for key, value in spec.items() if key not in _RESERVED}
    if not call:
        if kwargs or "_args_" in spec or args or overrides or partial:
            raise ValueError(
                f"instantiate: the spec of {name} {_where(path)} has _call_: false (a reference "
                "to the target itself) and so takes no arguments, overrides or _partial_"
            )
        return target
    spec_args = spec.get("_args_", ())
    if not isinstance(spec_args, (list, tuple)):
        raise ValueError(
            f"instantiate: _args_ must be a list, got {spec_args!r} in the spec of {name} "
            f"{_where(path)}"
        )
    # Positional arguments given at call time replace the spec's (as Hydra does).
    call_args = tuple(args) if args else tuple(spec_args)
    kwargs.update(overrides)
    _check_call(target, call_args, kwargs, path, partial)
    built_args = tuple(
        _build_value(value, recursive, _join(path, f"_args_[{i}]"), name)
        for i, value in enumerate(call_args)
    )
    built_kwargs = {
        key: _build_value(value, recursive, _join(path, key), name) for key, value in kwargs.items()
    }
    if partial:
        return functools.partial(target, *built_args, **built_kwargs)
    try:
        return target(*built_args, **built_kwargs)
    except Exception as err:
        if hasattr(err, "add_note"):  # Python ≥ 3.11
            err.add_note(f"while instantiating {name} {_where(path)}")
        raise


def instantiate(
    config: Any, /, *args: Any, recursive_instantiate: bool = False, **overrides: Any
) -> Any:
    """Instantiate an object from a LazyConfig or ``__target__`` dict.

    Args:
        config: a spec (a mapping with ``_target_`` or ``__target__``) or a :class:`LazyConfig`.
            Anything else is returned as is (so a parent accepts a built object or a spec alike).
        *args: positional arguments; when given they replace the spec's ``_args_``.
        recursive_instantiate: also build nested specs whose target is an ``nn.Module`` subclass
            (by default they are handed to the parent unbuilt).
        **overrides: keyword arguments that replace or add to the spec's keys (top level only).

    Returns:
        The built object, or a ``functools.partial`` for a spec with ``_partial_: true``.

    Raises:
        TypeError: an unknown key or a missing argument (naming target, signature and key).
        ValueError: a PLACEHOLDER left (naming its key path), or a malformed spec.
        ImportError: the dotted path does not resolve (saying which part failed).

    Example:
        >>> spec = LazyConfig("subq.functional.norm.RMSNormConfig")(dim=PLACEHOLDER)
        >>> instantiate(spec, dim=8)
        RMSNormConfig(dim=8, eps=1e-06, affine=True, channels_first=False, num_heads=None)
    """
    if isinstance(config, LazyConfig):
        config = config()
    if not is_spec(config):
        if args or overrides:
            raise TypeError(
                "instantiate: arguments and overrides need a spec with a '_target_' key, "
                f"got {type(config).__name__}"
            )
        return config
    return _build(config, args, overrides, recursive_instantiate, "")


# ---------------------------------------------------------------------------------------------
# JSON and YAML


def _plain(value: Any, path: str) -> Any:
    """``value`` as JSON data (tuples become lists); a ``TypeError`` names any other leaf."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"cannot serialise the spec: key {key!r} {_where(path)} is not a string"
                )
            out[key] = _plain(item, _join(path, key))
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise TypeError(
        f"cannot serialise the spec: {_where(path)} holds a {type(value).__name__} "
        f"({value!r:.80}), which has no data form; give it as a LazyConfig spec instead"
    )


def to_json(spec: Any, *, indent: int | None = 2) -> str:
    """The spec as JSON text (classes, dtypes, enums and attrs configs stored as data)."""
    return json.dumps(_plain(_encode(spec), ""), indent=indent)


def from_json(text: str) -> Any:
    """A spec from JSON text written by :func:`to_json`."""
    return json.loads(text)


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:
        raise ImportError(
            "YAML specs need PyYAML (pip install pyyaml); to_json/from_json need nothing extra"
        ) from None
    return yaml


def to_yaml(spec: Any) -> str:
    """The spec as YAML text (needs PyYAML)."""
    return _yaml().safe_dump(_plain(_encode(spec), ""), sort_keys=False)


def from_yaml(text: str) -> Any:
    """A spec from YAML text (needs PyYAML)."""
    return _yaml().safe_load(text)
