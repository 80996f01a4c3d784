"""Option types every command shares, so a bad value is a usage error (exit 2) before any work.

click's ``float`` accepts ``nan``, ``inf`` and ``-1e309`` (which is ``-inf``), and a ``FloatRange``
lets ``nan`` through (every comparison with it is false); such values then failed deep inside
retrieval, the model or the audit log (JSON has no infinity) -- after the answer was printed.
Text arguments arrive through the shell decoded with ``surrogateescape``: bytes that are not
UTF-8 become lone surrogates that fail later when encoded. Every numeric option uses
:class:`Number` or :class:`Count`; every free-text argument uses :data:`TEXT`. Their messages
follow the library's wording (``--rank must be between 1 and 1024``).
"""

from __future__ import annotations

import math
import os
from typing import Any

import click

from ..limits import MAX_K
from ..textsafe import one_line
from .app import App


def _name(param: click.Parameter | None) -> str:
    """How the user typed it: ``--max-tokens`` (the long form) or ``QUERY``."""
    if isinstance(param, click.Option) and param.opts:
        return max(param.opts, key=len)
    return param.human_readable_name if param is not None else "the value"


def _refuse(message: str) -> None:
    # A plain UsageError: the message already names the option, in the library's own wording.
    raise click.UsageError(message)


class Number(click.ParamType):
    """A finite float, optionally bounded (``min_open``/``max_open`` exclude the bound itself)."""

    name = "number"

    def __init__(
        self,
        min: float | None = None,
        max: float | None = None,
        *,
        min_open: bool = False,
        max_open: bool = False,
    ):
        self.min, self.max, self.min_open, self.max_open = min, max, min_open, max_open

    def _range(self) -> str:
        lo = "" if self.min is None else f"{'>' if self.min_open else '>='} {self.min:g}"
        hi = "" if self.max is None else f"{'<' if self.max_open else '<='} {self.max:g}"
        if self.min is not None and self.max is not None and not (self.min_open or self.max_open):
            return f" between {self.min:g} and {self.max:g}"
        return (" " + " and ".join(x for x in (lo, hi) if x)) if (lo or hi) else ""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        want = f"{_name(param)} must be a finite number{self._range()}"
        if isinstance(value, bool):
            _refuse(want)
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            _refuse(f"{want}, not {one_line(value, limit=40)!r}")
        if not math.isfinite(number):
            _refuse(f"{want}, not {one_line(value, limit=40)!r}")
        low_bad = self.min is not None and (number <= self.min if self.min_open else number < self.min)
        high_bad = self.max is not None and (number >= self.max if self.max_open else number > self.max)
        if low_bad or high_bad:
            _refuse(want)
        return number

    def __repr__(self) -> str:
        return f"Number({self._range().strip() or 'finite'})"


class Count(click.ParamType):
    """A whole number between ``min`` and ``max`` inclusive: never unbounded, so a 400-digit
    number is refused here rather than overflowing a C library (or looping for ever) later."""

    name = "integer"

    def __init__(self, min: int = 0, max: int = 1_000_000):
        self.min, self.max = min, max

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        want = f"{_name(param)} must be between {self.min} and {self.max}"
        if isinstance(value, bool):
            _refuse(want)
        if isinstance(value, int):
            number = value
        else:
            text = str(value).strip()
            if len(text) > 24 or not text.lstrip("+-").isdigit():  # no 400-digit parse, no "1e3", no "nan"
                _refuse(f"{_name(param)} must be a whole number between {self.min} and {self.max}")
            number = int(text)
        if not self.min <= number <= self.max:
            _refuse(want)
        return number

    def __repr__(self) -> str:
        return f"Count({self.min}..{self.max})"


class Text(click.ParamType):
    """A string that is valid Unicode: refuses bytes the shell could not decode as UTF-8."""

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            _refuse(f"{_name(param)} is not valid UTF-8 text: {one_line(text, limit=60)!r}")
        if "\x00" in text:
            _refuse(f"{_name(param)} may not contain NUL characters")
        return text


class FsPath(click.Path):
    """``click.Path``, read relative to the caller's working folder.

    That folder is this process's own, except when the agent runs the command for a client
    (``App.cwd``): the agent never changes its own working folder.
    """

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        base = getattr(ctx.find_object(App), "cwd", None) if ctx is not None else None
        if base is not None and isinstance(value, (str, os.PathLike)) and not os.path.isabs(value):
            value = os.path.join(base, value)
        return super().convert(value, param, ctx)


TEXT = Text()
# -k of ask, search, eval qa and compare: the library's one bound (offline.limits).
K = Count(1, MAX_K)
# Seeds: torch, numpy and Python all take a 32-bit value without complaint.
SEED = Count(0, 2**32 - 1)
