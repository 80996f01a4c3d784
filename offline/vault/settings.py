"""Vault settings: their defaults and the one validator every change goes through.

A value is stored in canonical form (``idle_timeout_s 10m`` is stored as ``600``), so whatever
reads it later never has to parse a unit or guess at a typo: ``banana`` is refused when it is set.
"""

from __future__ import annotations

import re

from ..errors import UsageError

DEFAULTS = {
    "audit_questions": "sealed",
    "idle_timeout_s": "900",
    "break_glass": "on",
    "identifier_detection": "on",
    "subject_id_pattern": "",
}
# Old vaults stored "hash" (an unsalted sha256 that a member could confirm by guessing): it now
# means "sealed", which keeps the question readable only by admins and auditors.
LEGACY = {("audit_questions", "hash"): "sealed"}
CHOICES = {
    "audit_questions": ("sealed", "none", "full"),
    "break_glass": ("on", "off"),
    "identifier_detection": ("on", "off"),
}
PATTERN_MAX = 200
IDLE_MIN_S, IDLE_MAX_S = 30, 24 * 3600
_DURATION = re.compile(r"^\s*(\d{1,7})\s*(s|m|h|d)?\s*$", re.IGNORECASE)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration_s(text: str) -> int:
    """``90``, ``90s``, ``15m``, ``1h`` -> seconds; anything else raises :class:`UsageError`."""
    m = _DURATION.match(str(text))
    if not m:
        raise UsageError(f"not a duration: {text!r} (use e.g. 90s, 15m, 1h)")
    return int(m.group(1)) * _UNIT_S[(m.group(2) or "s").lower()]


def normalise(key: str, value: str) -> str:
    """The canonical stored form of ``value`` for ``key``, or :class:`UsageError` saying why not."""
    if key not in DEFAULTS:
        raise UsageError(f"unknown setting {key!r} (known: {', '.join(sorted(DEFAULTS))})")
    value = str(value).strip()
    value = LEGACY.get((key, value), value)
    if key == "idle_timeout_s":
        seconds = parse_duration_s(value)
        if not IDLE_MIN_S <= seconds <= IDLE_MAX_S:
            raise UsageError(f"idle_timeout_s must be between {IDLE_MIN_S}s and {IDLE_MAX_S // 3600}h")
        return str(seconds)
    if key == "subject_id_pattern":
        return _check_pattern(value)
    if value not in CHOICES[key]:
        raise UsageError(f"{key} must be one of {', '.join(CHOICES[key])} (got {value!r})")
    return value


def _check_pattern(value: str) -> str:
    """A subject-id regex (``PT-\\d{5}``): compiles, bounded, and matches no empty string.

    An empty value turns the pattern off. One that matches "" would tag every position of every
    chunk; one that matches plain words would turn every word into a patient id, so it must need a digit.
    """
    if value in ("", "off", "none"):
        return ""
    if len(value) > PATTERN_MAX:
        raise UsageError(f"subject_id_pattern is longer than {PATTERN_MAX} characters")
    try:
        rx = re.compile(value)
    except re.error as exc:
        raise UsageError(f"subject_id_pattern is not a valid regular expression: {exc}") from None
    if rx.fullmatch("") is not None or rx.search("") is not None:
        raise UsageError("subject_id_pattern must not match an empty string")
    if rx.search("the patient was seen by the doctor today") is not None:
        raise UsageError("subject_id_pattern matches ordinary words; make it need digits (e.g. PT-\\d{5})")
    return value
