"""attrs validators shared by subq's config classes.

Every error names the class and the field, the expected value and the given one, e.g.
``HyenaConfig.channels: expected a positive int, got 0``. ``bool`` is rejected where a number is
expected, so ``dim=True`` is never read as 1.
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["an_int", "in_range", "one_of", "optional", "positive", "positive_int"]


def _fail(instance: object, attribute: attrs.Attribute, expected: str, value: object) -> None:
    raise ValueError(
        f"{type(instance).__name__}.{attribute.name}: expected {expected}, got {value!r}"
    )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def an_int(instance: object, attribute: attrs.Attribute, value: object) -> None:
    """An ``int`` (not a ``bool``), e.g. a seed."""
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(instance, attribute, "an int", value)


def positive_int(instance: object, attribute: attrs.Attribute, value: object) -> None:
    """A strictly positive ``int``."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        _fail(instance, attribute, "a positive int", value)


def positive(instance: object, attribute: attrs.Attribute, value: object) -> None:
    """A strictly positive ``int`` or ``float``."""
    if not _is_number(value) or not value > 0:
        _fail(instance, attribute, "a positive number", value)


def in_range(low: float, high: float, *, low_open: bool = False):
    """A number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    bracket = "(" if low_open else "["

    def check(instance: object, attribute: attrs.Attribute, value: object) -> None:
        ok = _is_number(value) and (low < value if low_open else low <= value) and value <= high
        if not ok:
            _fail(instance, attribute, f"a number in {bracket}{low}, {high}]", value)

    return check


def one_of(options: tuple[Any, ...]):
    """One of ``options`` (compared with ``in``)."""

    def check(instance: object, attribute: attrs.Attribute, value: object) -> None:
        if value not in options:
            _fail(instance, attribute, f"one of {list(options)}", value)

    return check


def optional(validator):
    """``validator`` or ``None``; the message says that ``None`` is allowed."""

    def check(instance: object, attribute: attrs.Attribute, value: object) -> None:
        if value is None:
            return
        try:
            validator(instance, attribute, value)
        except ValueError as error:
            raise ValueError(f"{error} (None is allowed too)") from None

    return check
