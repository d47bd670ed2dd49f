"""Allowed ranges of config fields: declared beside each field of a schema (``ranged``) and checked
in one place, at the root of a config (``check_ranges``, from ``TrainConfig.__post_init__``), where
every field's dotted name is known.

It imports nothing from aurora, so that every schema (``aurora.config``, ``aurora.data``) can use it.
"""

import dataclasses
import math
from typing import Any

_RANGE = "aurora.range"
"""The key of a field's range in its dataclass metadata."""


@dataclasses.dataclass(frozen=True)
class Range:
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    """``low`` itself is excluded (a value must be above it)."""

    def admits(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False  # NaN fails every comparison below anyway; inf is no setting either
        above_low = self.low is None or (value > self.low if self.low_open else value >= self.low)
        return above_low and (self.high is None or value <= self.high)

    def __str__(self) -> str:
        low, high = _number(self.low), _number(self.high)
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {low}"
        if self.low is None:
            return f"<= {high}"
        return f"in {'(' if self.low_open else '['}{low}, {high}]"


def _number(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def ranged(default: Any, low: float | None = None, high: float | None = None, *, above: float | None = None):
    """A dataclass field with ``default`` whose value must lie in [low, high], or above ``above``
    (exclusive) and at most ``high``; None (for an Optional field) is always allowed."""
    if above is not None:
        low = above
    return dataclasses.field(default=default, metadata={_RANGE: Range(low, high, low_open=above is not None)})


def check_ranges(cfg: Any, prefix: str = "") -> None:
    """Raise ValueError (one line: the field, its allowed range, the value) for the first field of
    ``cfg`` or of a section below it that lies outside its declared range."""
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if dataclasses.is_dataclass(value):
            check_ranges(value, f"{prefix}{field.name}.")
        elif value is not None and _RANGE in field.metadata and not field.metadata[_RANGE].admits(value):
            raise ValueError(f"{prefix}{field.name} must be {field.metadata[_RANGE]}, got {value}: set it in "
                             f"that range")
