"""A small backend dispatcher: choose an implementation from static facts, and say why.

Each op has an ordered list of backends, fastest first, ending with the plain-PyTorch reference,
which accepts everything. A backend's ``check(facts)`` returns ``None`` if it can run, or a short
reason why not. Facts are static (device, dtype, shapes, flags), never tensor values, so dispatch
costs a few Python comparisons and is traced away by ``torch.compile``.

A backend that is *not applicable* is passed over without counting as a fallback (explanations
still list it): a device type it does not target (a CUDA kernel asked about a CPU tensor), a
problem outside its ``scope`` (a 1D causal kernel asked about a 2D convolution), a custom kernel
without a jvp inside forward-mode AD (``forward_ad=False``), or facts where the op ``prefer``-s a
later backend (measured faster there). A backend that *applies* but is
rejected by its ``check`` (quack not installed, wrong compute capability, unsupported dtype) is a
fallback: in strict mode (``subq.ops.strict()`` or ``SUBQ_STRICT_DISPATCH=1``) a fallback raises
:class:`BackendUnavailableError` instead. Asking for a backend by name that cannot run (wrong
device, out of scope, failed check) always raises; a preference does not stop a named backend.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import attrs
import torch

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "Op",
    "explain",
    "get_op",
    "is_strict",
    "registered_ops",
    "strict",
]


class BackendUnavailableError(RuntimeError):
    """A requested (or, in strict mode, preferred) backend cannot run on the given inputs."""


@attrs.frozen
class Backend:
    """One implementation of an op.

    Attributes:
        name: short name, used in ``backend=`` arguments and in explanations.
        fn: the implementation; called with the op's arguments.
        devices: device types this backend targets (``("cuda",)``); empty means any.
        check: ``facts -> None | reason``; None means it can run. Passing over a backend for a
            reason from ``check`` is a fallback (strict dispatch refuses it).
        scope: ``facts -> None | reason``: the kinds of problem the backend is for, like
            ``devices``; out of scope is not a fallback, and a backend named by ``backend=``
            must be in scope too.
        prefer: ``facts -> None | reason``: where the dispatcher prefers a later backend
            (measured faster); not a fallback, and a backend named by ``backend=`` still runs.
        forward_ad: whether tangents of forward-mode AD (``torch.autograd.forward_ad``) flow
            through it; a custom kernel without a jvp is out of scope inside a dual level (it
            would drop them silently or refuse).
    """

    name: str
    fn: Callable[..., Any]
    devices: tuple[str, ...] = ()
    check: Callable[[Mapping[str, Any]], str | None] = lambda facts: None
    scope: Callable[[Mapping[str, Any]], str | None] = lambda facts: None
    prefer: Callable[[Mapping[str, Any]], str | None] = lambda facts: None
    forward_ad: bool = True

    def applies_to(self, device_type: str) -> bool:
        return not self.devices or device_type in self.devices

    def out_of_scope(self, facts: Mapping[str, Any]) -> str | None:
        """Why ``facts`` are not this backend's kind of problem, or None."""
        if not self.forward_ad and in_forward_ad():
            return "inside forward-mode AD (its kernels have no jvp)"
        return self.scope(facts)


def in_forward_ad() -> bool:
    """Whether a ``torch.autograd.forward_ad.dual_level`` is open (tangents may flow)."""
    return torch.autograd.forward_ad._current_level >= 0


_state = threading.local()
_OPS: dict[str, Op] = {}


def is_strict() -> bool:
    """Whether fallbacks currently raise (``strict()`` context or ``SUBQ_STRICT_DISPATCH=1``)."""
    override = getattr(_state, "strict", None)
    if override is not None:
        return override
    return os.environ.get("SUBQ_STRICT_DISPATCH", "").strip().lower() in {"1", "true", "on"}


@contextlib.contextmanager
def strict(enabled: bool = True) -> Iterator[None]:
    """Within this context, a fallback from an applicable fast backend raises."""
    previous = getattr(_state, "strict", None)
    _state.strict = enabled
    try:
        yield
    finally:
        _state.strict = previous


class Decision(NamedTuple):
    """The outcome of a dispatch: the chosen backend and why each backend ahead of it was passed over."""

    # A NamedTuple, not a frozen attrs class: dispatch runs inside torch.compile regions.
    op: str
    chosen: str
    rejected: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        lines = [f"{self.op}: using '{self.chosen}'"]
        lines += [f"  not '{name}': {reason}" for name, reason in self.rejected]
        return "\n".join(lines)


class Op:
    """A named op with ordered backends; the last backend must accept every input."""

    def __init__(
        self, name: str, backends: list[Backend], example_facts: Mapping[str, Any] | None = None
    ) -> None:
        """``example_facts``: typical op-specific facts, used by ``subq info`` to explain."""
        if not backends:
            raise ValueError(f"Op {name!r}: expected at least one backend, got none")
        names = [b.name for b in backends]
        if len(set(names)) != len(names):
            raise ValueError(f"Op {name!r}: backend names must be unique, got {names}")
        self.name = name
        self.backends = backends
        self.example_facts = dict(example_facts or {})
        _OPS[name] = self

    @property
    def backend_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.backends)

    def decide(self, facts: Mapping[str, Any], backend: str | None = None) -> Decision:
        """Choose a backend for ``facts`` (must include ``device``), or the named one."""
        device_type = torch.device(facts["device"]).type
        if backend is not None:
            by_name = {b.name: b for b in self.backends}
            if backend not in by_name:
                raise ValueError(
                    f"{self.name}: backend must be one of {list(by_name)} or None, got {backend!r}"
                )
            chosen = by_name[backend]
            reason = (
                (
                    None
                    if chosen.applies_to(device_type)
                    else f"targets {'/'.join(chosen.devices)}, not {device_type}"
                )
                or chosen.out_of_scope(facts)
                or chosen.check(facts)
            )
            if reason is not None:
                raise BackendUnavailableError(
                    f"{self.name}: backend '{backend}' cannot run: {reason}"
                )
            return Decision(self.name, backend, ())
        rejected: list[tuple[str, str]] = []
        fallback = False
        for b in self.backends:
            if not b.applies_to(device_type):
                rejected.append((b.name, f"targets {'/'.join(b.devices)}, not {device_type}"))
                continue
            reason = b.out_of_scope(facts) or b.prefer(facts)
            if reason is not None:  # not this backend's kind of problem: not a fallback
                rejected.append((b.name, reason))
                continue
            reason = b.check(facts)
            if reason is None:
                if fallback and is_strict():
                    raise BackendUnavailableError(
                        str(Decision(self.name, b.name, tuple(rejected)))
                        + "\n(strict dispatch: refusing to fall back)"
                    )
                return Decision(self.name, b.name, tuple(rejected))
            rejected.append((b.name, reason))
            fallback = True
        raise BackendUnavailableError(str(Decision(self.name, "<none>", tuple(rejected))))

    def select(self, facts: Mapping[str, Any], backend: str | None = None) -> Callable[..., Any]:
        """The implementation chosen for ``facts``."""
        name = self.decide(facts, backend).chosen
        return next(b.fn for b in self.backends if b.name == name)


def get_op(name: str) -> Op:
    """The registered op called ``name``."""
    _load_all_ops()
    if name not in _OPS:
        raise KeyError(f"unknown op {name!r}; registered ops: {sorted(_OPS)}")
    return _OPS[name]


def registered_ops() -> dict[str, Op]:
    """All registered ops by name."""
    _load_all_ops()
    return dict(_OPS)


def explain(op: str, **facts: Any) -> str:
    """Say which backend ``op`` would use for ``facts`` and why the ones ahead of it were passed over.

    ``device`` defaults to ``"cpu"``; the other facts an op's backends read (``dtype``, sizes,
    flags; ``get_op(op).example_facts`` shows typical ones) must be given, or a ``TypeError``
    names the missing one.

    Example:
        >>> import torch
        >>> print(explain("rms_norm", device="cpu", dtype=torch.float32, n=64))
        rms_norm: using 'reference'
          not 'quack': targets cuda, not cpu
          not 'torch': targets cuda, not cpu
    """
    facts.setdefault("device", "cpu")
    the_op = get_op(op)
    try:
        return str(the_op.decide(facts))
    except BackendUnavailableError as err:
        return str(err)
    except KeyError as err:
        raise TypeError(
            f"explain({op!r}): missing fact {err.args[0]!r}; given {sorted(facts)}, "
            f"expected facts such as {sorted({'device', 'dtype', *the_op.example_facts})}"
        ) from None


def _load_all_ops() -> None:
    # Ops register themselves when their module is imported; every public module of
    # ``subq.ops`` is imported here (not at ``import subq``) so that ``explain`` and ``subq info``
    # see every op. Private modules hold helpers and kernels (some import Triton at the top).
    import importlib
    import pkgutil

    import subq.ops

    for info in pkgutil.iter_modules(subq.ops.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"subq.ops.{info.name}")
