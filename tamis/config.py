"""Declared parameter constraints, checked when work starts (scikit-learn's discipline).

A check declares ``_parameter_constraints = {"k": Interval(int, 1, None), ...}`` once;
:func:`validate_params` raises :class:`~tamis.errors.ConfigError` naming the parameter,
the value seen and what is allowed.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class Interval:
    """A number of ``kind`` (int or float) in [low, high]; ``closed`` says which ends count."""

    kind: type
    low: float | None
    high: float | None
    closed: str = "both"  # "both", "left", "right", "neither"
    none_ok: bool = False  # None stands for "the scan's setting"

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.none_ok
        if isinstance(value, bool):
            return False
        if self.kind is int and not isinstance(value, numbers.Integral):
            return False
        if not isinstance(value, numbers.Real):
            return False
        if self.low is not None:
            if value < self.low or (value == self.low and self.closed in ("right", "neither")):
                return False
        if self.high is not None:
            if value > self.high or (value == self.high and self.closed in ("left", "neither")):
                return False
        return True

    def describe(self) -> str:
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        low = "-inf" if self.low is None else self.low
        high = "inf" if self.high is None else self.high
        text = f"{'an integer' if self.kind is int else 'a number'} in {left}{low}, {high}{right}"
        return text + " (or None)" if self.none_ok else text


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values."""

    values: tuple

    def accepts(self, value: Any) -> bool:
        return value in self.values

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


@dataclass(frozen=True)
class OptionalString:
    """A string or None (column names and the like)."""

    def accepts(self, value: Any) -> bool:
        return value is None or isinstance(value, str)

    def describe(self) -> str:
        return "a string or None"


def validate_params(owner: str, params: dict[str, Any], constraints: dict[str, Any]) -> None:
    """Raise ConfigError for the first parameter whose value its constraint refuses."""
    for name, value in params.items():
        constraint = constraints.get(name)
        if constraint is None:
            raise ConfigError(f"{owner}: unknown parameter {name!r}; known parameters: "
                              f"{', '.join(sorted(constraints)) or 'none'}")
        if not constraint.accepts(value):
            raise ConfigError(f"{owner}: parameter {name}={value!r} is not {constraint.describe()}")


def coerce(text: str) -> Any:
    """A CLI string as the Python value it spells (int, float, bool, None or the string)."""
    low = text.strip().lower()
    if low in ("true", "yes"):
        return True
    if low in ("false", "no"):
        return False
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def summarise(value: Any) -> Any:
    """``value`` as it goes into summary.json: plain values as they are, data as a short description.

    A parameter may hold a whole store (off_topic's in-memory references); the summary records
    what it was, never the arrays themselves.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict) and all(isinstance(k, str) for k in value) and \
            all(v is None or isinstance(v, (bool, int, float, str, dict)) for v in value.values()):
        return {k: summarise(v) for k, v in value.items()}
    if hasattr(value, "__fspath__"):
        return str(value)
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"<{type(value).__name__} of shape {tuple(shape)}>"
    if isinstance(value, dict):
        return "<in-memory data: " + ", ".join(f"{k}={summarise(v)}" for k, v in value.items()) + ">"
    return f"<{type(value).__name__}>"
