"""Ingest: load files, chunk by embedding tokens, embed, and store documents atomically."""

from __future__ import annotations

from .discovery import discover
from .pipeline import (
    DEFAULT_MAX_BYTES,
    DEFAULT_TIMEOUT_S,
    Source,
    TextRecord,
    ingest_paths,
    ingest_records,
    ingest_sources,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_TIMEOUT_S",
    "Source",
    "TextRecord",
    "discover",
    "ingest_paths",
    "ingest_records",
    "ingest_sources",
]
