"""Grounded answers over the vault: :func:`answer` returns an :class:`Answer`."""

from __future__ import annotations

from .answer import (
    DEFAULT_K,
    DEFAULT_MIN_SCORE,
    DEFAULT_MIN_SUPPORT,
    MODES,
    NO_EVIDENCE,
    NOT_SAID,
    NOT_SUPPORTED,
    Answer,
    answer,
)

__all__ = [
    "Answer",
    "answer",
    "MODES",
    "DEFAULT_K",
    "DEFAULT_MIN_SCORE",
    "DEFAULT_MIN_SUPPORT",
    "NO_EVIDENCE",
    "NOT_SAID",
    "NOT_SUPPORTED",
]
