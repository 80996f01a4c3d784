"""Text from documents and users, made safe to print on a terminal or to put on one line.

A document can carry terminal escape sequences (``ESC ] 0;title BEL`` renames the window, OSC 8
forges links, CSI moves the cursor and rewrites what was printed, some terminals answer queries
by typing into the shell) and bidirectional-override characters that make text read differently
from what it is. None of that may reach the terminal: :func:`terminal_safe` removes every escape
sequence and every control character except newline and tab, and is the one function every CLI
output path goes through (``App.emit``, tables, the streamed answer, error lines).

:func:`one_line` is the stricter form for values that sit inside a line of layout (file names,
headings, table cells, error messages): no line breaks of any kind either, so a name holding
``\\n`` cannot print a line of its own.
"""

from __future__ import annotations

import math
import re

from .errors import ParameterError, UsageError

# Whole escape sequences first (so their printable tails go too), 7-bit and 8-bit (C1) forms:
# CSI, OSC (ended by BEL or ST), DCS/SOS/PM/APC strings (ended by ST), then any other ESC + final.
# An unterminated string sequence is cut at the end of its line: the ESC is gone either way.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?"  # CSI ... final
    r"|\x9b[0-?]*[ -/]*[@-~]?"  # 8-bit CSI
    r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)?"  # OSC ... BEL | ST
    r"|(?:\x1b[PX^_]|[\x90\x98\x9e\x9f])[^\x1b\x9c\n]*(?:\x1b\\|\x9c)?"  # DCS SOS PM APC ... ST
    r"|\x1b[ -/]*[0-~]?"  # two-character and charset sequences, or a lone ESC
)
# Bidirectional embeddings, overrides and isolates ("Trojan Source"); marks (LRM/RLM) are harmless.
_BIDI = dict.fromkeys(map(ord, "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"))
# Line breaks a terminal or a reader may honour, beyond \n.
_BREAKS = re.compile(r"[\n\t\v\f\x85\u2028\u2029]+")
_SURROGATES = re.compile("[\ud800-\udfff]")


def _controls(keep: str) -> re.Pattern[str]:
    """Every C0/DEL/C1 control character (Unicode category Cc) except those in ``keep``."""
    chars = [chr(c) for c in (*range(0x00, 0x20), *range(0x7F, 0xA0)) if chr(c) not in keep]
    return re.compile("[" + "".join(re.escape(c) for c in chars) + "]")


_CONTROLS = {"\n\t": _controls("\n\t"), "": _controls("")}


def terminal_safe(text: object, *, keep: str = "\n\t") -> str:
    """``text`` with every escape sequence and control character removed (``keep`` excepted).

    ``\\r\\n`` becomes ``\\n``; a lone ``\\r`` (which would let text overwrite its own line) is
    removed; undecodable bytes become U+FFFD, so printing never raises either.
    """
    s = str(text)
    if s.isprintable():  # the common case: nothing to do
        return s
    s = s.replace("\r\n", "\n")
    s = _ESCAPES.sub("", s)
    s = s.translate(_BIDI)
    s = _SURROGATES.sub("\ufffd", s)  # a byte the shell could not decode (surrogateescape)
    controls = _CONTROLS.get(keep) or _controls(keep)
    return controls.sub("", s)


def one_line(text: object, *, limit: int | None = None) -> str:
    """``text`` safe for the terminal and on one line: every line break or tab becomes a space.

    ``limit`` cuts the result to that many characters (ending in an ellipsis).
    """
    s = _BREAKS.sub(" ", str(text))
    s = terminal_safe(s, keep="")
    if limit is not None and len(s) > limit:
        s = s[: max(0, limit - 1)] + "…"
    return s


def check_text(value: str, what: str) -> str:
    """``value`` if it is valid Unicode text; else a :class:`UsageError` naming ``what``.

    The shell hands Python bytes that are not UTF-8 as lone surrogates (``surrogateescape``);
    they would fail much later, when the text is embedded, indexed or audited.
    """
    try:
        str(value).encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{what} is not valid UTF-8 text") from None
    return value


def check_number(value: float, param: str, low: float, high: float) -> float:
    """``value`` if it is a finite number in [``low``, ``high``]; else a :class:`ParameterError` for
    ``param``."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ParameterError(f"{{{param}}} must be a number", param) from None
    if not math.isfinite(number) or not low <= number <= high:
        raise ParameterError(f"{{{param}}} must be a finite number between {low:g} and {high:g}", param)
    return number


class StreamSanitizer:
    """:func:`terminal_safe` for text that arrives in pieces (a streamed answer).

    An escape sequence split across two pieces is held back until it is complete, so its tail is
    removed with it rather than printed; whatever is held is cleaned on :meth:`flush`.
    """

    _HOLD_MAX = 256  # a longer "sequence" is not one a terminal would wait for either

    def __init__(self) -> None:
        self._held = ""

    def feed(self, piece: str) -> str:
        text = self._held + piece
        self._held = ""
        cut = max(text.rfind("\x1b"), text.rfind("\x9b"), text.rfind("\x9d"))
        if cut >= 0 and len(text) - cut < self._HOLD_MAX and not _complete(text[cut:]):
            text, self._held = text[:cut], text[cut:]
        if text.endswith("\r"):  # maybe the first half of \r\n
            text, self._held = text[:-1], "\r" + self._held
        return terminal_safe(text)

    def flush(self) -> str:
        text, self._held = self._held, ""
        return terminal_safe(text)


def _complete(seq: str) -> bool:
    """Whether ``seq``, which starts at an escape introducer, already holds its whole sequence."""
    m = _ESCAPES.match(seq)
    found = m.group(0) if m else ""
    if seq.startswith(("\x1b]", "\x9d", "\x1bP", "\x1bX", "\x1b^", "\x1b_")) or seq[0] in "\x90\x98\x9e\x9f":
        return found.endswith(("\x07", "\x1b\\", "\x9c")) or "\n" in seq  # strings end at BEL/ST
    if seq.startswith(("\x1b[", "\x9b")):
        return len(found) > (2 if seq[0] == "\x1b" else 1) and "@" <= found[-1] <= "~"  # CSI ends at a final
    return len(found) >= 2  # ESC + final character
