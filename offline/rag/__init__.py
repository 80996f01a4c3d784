"""Grounded answers over the vault: :func:`answer` returns an :class:`Answer`."""

from __future__ import annotations

from .answer import DEFAULT_K, DEFAULT_MIN_SCORE, MODES, NO_EVIDENCE, Answer, answer

__all__ = ["Answer", "answer", "MODES", "DEFAULT_K", "DEFAULT_MIN_SCORE", "NO_EVIDENCE"]
