"""Option types every command shares, so a bad value is a usage error (exit 2) before any work.

click's ``float`` accepts ``nan``, ``inf`` and ``-1e309`` (which is ``-inf``), and a ``FloatRange``
lets ``nan`` through (every comparison with it is false); such values then failed deep inside
retrieval, the model or the audit log (JSON has no infinity) -- after the answer was printed.
Text arguments arrive through the shell decoded with ``surrogateescape``: bytes that are not
UTF-8 become lone surrogates that fail later when encoded. Every numeric option uses
:class:`Number` or :func:`Count`; every free-text argument uses :data:`TEXT`.
"""

from __future__ import annotations

import math
from typing import Any

import click

from ..textsafe import one_line


class Number(click.ParamType):
    """A finite float, optionally bounded (``min_open``/``max_open`` exclude the bound itself)."""

    name = "number"

    def __init__(self, min: float | None = None, max: float | None = None, *, min_open: bool = False,
                 max_open: bool = False):
        self.min, self.max, self.min_open, self.max_open = min, max, min_open, max_open

    def _range(self) -> str:
        lo = "" if self.min is None else f"{'>' if self.min_open else '>='} {self.min:g}"
        hi = "" if self.max is None else f"{'<' if self.max_open else '<='} {self.max:g}"
        return " and ".join(x for x in (lo, hi) if x)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, bool):
            self.fail(f"{value!r} is not a number", param, ctx)
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            self.fail(f"{one_line(value, limit=40)!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{one_line(value, limit=40)!r} is not a finite number", param, ctx)
        low_bad = self.min is not None and (number <= self.min if self.min_open else number < self.min)
        high_bad = self.max is not None and (number >= self.max if self.max_open else number > self.max)
        if low_bad or high_bad:
            self.fail(f"{number:g} is out of range (must be {self._range()})", param, ctx)
        return number

    def __repr__(self) -> str:
        return f"Number({self._range() or 'finite'})"


def Count(min: int = 0, max: int = 1_000_000) -> click.IntRange:  # noqa: N802 - reads like a type
    """An integer between ``min`` and ``max`` inclusive: never unbounded, so a 400-digit number
    is refused here rather than overflowing a C library later."""
    return click.IntRange(min, max)


class Text(click.ParamType):
    """A string that is valid Unicode: refuses bytes the shell could not decode as UTF-8."""

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            self.fail(f"{one_line(text, limit=60)!r} is not valid UTF-8 text", param, ctx)
        if "\x00" in text:
            self.fail("text may not contain NUL characters", param, ctx)
        return text


TEXT = Text()
# Seeds: torch, numpy and Python all take a 32-bit value without complaint.
SEED = Count(0, 2**32 - 1)
