"""The retrieval-trained readers pinned beside the models: ``[[reader]]`` entries of the manifest.

Each names a base model, a LoRA adapter (committed) and optionally the adapter merged into the base
(built by ``offline models fetch``, see :func:`offline.models.fetch.build_merged`). This module
finds and checks those files; :mod:`offline.llm.reader` decides what ``ask`` loads from them.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import config
from ..errors import ModelIntegrityError
from .manifest import manifest_path

_sha_cache: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, cached by (path, size, mtime): readers and generation models are re-checked per
    load."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _sha_cache:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _sha_cache[key] = h.hexdigest()
    return _sha_cache[key]


@dataclass(frozen=True)
class ReaderSpec:
    """One ``[[reader]]`` entry of the manifest."""

    name: str
    base: str
    base_sha256: str
    adapter: str
    adapter_sha256: str
    merged: str | None
    merged_sha256: str | None
    merge_type: str | None
    licence: str


def specs(manifest: Path | None = None) -> list[ReaderSpec]:
    """Every ``[[reader]]`` entry of the manifest (none is fine: then no model has a reader)."""
    p = manifest or manifest_path()
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8")).get("reader", [])
    except (OSError, tomllib.TOMLDecodeError):
        return []  # the model manifest's own loader reports a broken manifest
    return [
        ReaderSpec(
            name=r["name"],
            base=r["base"],
            base_sha256=r["base_sha256"],
            adapter=r["adapter"],
            adapter_sha256=r["adapter_sha256"],
            merged=r.get("merged"),
            merged_sha256=r.get("merged_sha256"),
            merge_type=r.get("merge_type"),
            licence=r.get("licence", ""),
        )
        for r in raw
    ]


def find_file(name: str) -> Path | None:
    """``name`` in the model store, else in the repository's ``models/`` (where the adapter is committed)."""
    for folder in (config.models_dir(), config.REPO_ROOT / "models"):
        p = folder / name
        if p.is_file():
            return p
    return None


def checked_file(name: str, sha256: str) -> Path | None:
    """The pinned file ``name`` if present (None if not); raise if its bytes are not the pinned ones."""
    p = find_file(name)
    if p is None:
        return None
    if file_sha256(p) != sha256:
        raise ModelIntegrityError.naming(
            "reader file {path} does not match its pinned sha256; rebuild it "
            "(`offline models fetch`) or pass {no_reader}",
            "no_reader",
            path=p,
        )
    return p


def verify_files() -> list[dict[str, Any]]:
    """Re-hash every reader file (``offline models verify``): rows like the models', status ok,
    mismatch, missing (the adapter: an error) or not built (the merged file: ``models fetch`` makes it)."""
    rows = []
    for spec in specs():
        for label, name, sha in (
            ("adapter", spec.adapter, spec.adapter_sha256),
            ("merged", spec.merged, spec.merged_sha256),
        ):
            if not name or not sha:
                continue
            p = find_file(name)
            status = (
                ("missing" if label == "adapter" else "not built")
                if p is None
                else ("ok" if file_sha256(p) == sha else "mismatch")
            )
            rows.append(
                {
                    "name": f"{spec.name} ({label})",
                    "role": "reader",
                    "path": str(p or name),
                    "sha256": sha,
                    "status": status,
                }
            )
    return rows
