"""Ingest: load files, chunk by embedding tokens, embed, and store documents atomically."""

from __future__ import annotations

from .pipeline import DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT_S, TextRecord, discover, ingest_paths, ingest_records

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_TIMEOUT_S", "TextRecord", "discover", "ingest_paths", "ingest_records"]
