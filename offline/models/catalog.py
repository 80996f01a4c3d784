"""Every known model (pinned + imported), name resolution, status and verification."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import config
from ..errors import ModelIntegrityError, NotFound, UsageError
from .hashing import model_hash, model_size
from .info import ROLES, ModelInfo
from .manifest import load_manifest
from .readers import verify_files
from .registry import load_registry, record_info


def all_models(models_dir: Path | None = None) -> list[ModelInfo]:
    """The manifest's models first, then imported ones."""
    d = models_dir or config.models_dir()
    return [e.info(d) for e in load_manifest()] + [record_info(r, d) for r in load_registry(d)]


def _find(name: str | None, role: str) -> ModelInfo:
    if role not in ROLES:
        raise UsageError(f"unknown model role {role!r}: use generate or embed")
    models = all_models()
    if name is None:
        return next(m for m in models if m.role == role and m.default)
    for m in models:
        if m.name == name:
            if m.role != role:
                raise UsageError(f"model {name!r} is a {m.role} model, not a {role} model")
            return m
    known = ", ".join(m.name for m in models if m.role == role)
    raise NotFound(f"unknown {role} model {name!r} (known: {known})")


def resolve_model(name: str | None, role: str, *, check: bool = True) -> ModelInfo:
    """The model to use for ``role`` ("generate" or "embed"); ``None`` means that role's default.

    The file must be present; with ``check`` (the default) its hash is compared with the pinned or
    recorded value (memoised per process by path, inode, size and mtime) and a mismatch raises
    :class:`ModelIntegrityError`, so a swapped model is never loaded.
    """
    m = _find(name, role)
    if not m.path.exists():
        hint = "run `offline models fetch`" if m.origin == "manifest" else "import it again"
        raise NotFound(f"model {m.name!r} is missing from {m.path.parent} ({hint})")
    if check:
        _check(m, fresh=False)
    return m


def _check(m: ModelInfo, *, fresh: bool) -> None:
    got = model_hash(m.path, fresh=fresh)
    if got != m.sha256:
        raise ModelIntegrityError(
            f"model {m.name!r} failed verification: sha256 of {m.path} is {got[:16]}..., "
            f"expected {m.sha256[:16]}..."
        )


def model_status(m: ModelInfo, *, check: bool) -> str:
    """ok / missing / mismatch / unchecked (a size mismatch is a mismatch even unchecked)."""
    if not m.path.exists():
        return "missing"
    if model_size(m.path) != m.size:
        return "mismatch"
    if not check:
        return "unchecked"
    return "ok" if model_hash(m.path, fresh=True) == m.sha256 else "mismatch"


def list_models(*, check: bool = False) -> list[dict[str, Any]]:
    """One row per model with its status; ``check`` re-hashes (else only presence and size)."""
    rows = []
    for m in all_models():
        d = m.to_dict()
        d.pop("extra")
        d.update(m.extra)
        d["status"] = model_status(m, check=check)
        rows.append(d)
    return rows


def verify_models(names: list[str] | None = None) -> list[dict[str, Any]]:
    """Re-hash every byte of every model (or the named ones).

    Returns the per-model report; raises :class:`ModelIntegrityError` naming every model whose hash
    differs, or :class:`NotFound` when a model is missing (after checking all the others).
    """
    models = all_models()
    if names:
        unknown = sorted(set(names) - {m.name for m in models})
        if unknown:
            raise NotFound(f"unknown model(s): {', '.join(unknown)}")
        models = [m for m in models if m.name in names]
    rows, bad, missing = [], [], []
    for m in models:
        status = (
            "missing"
            if not m.path.exists()
            else ("ok" if model_hash(m.path, fresh=True) == m.sha256 else "mismatch")
        )
        rows.append(
            {"name": m.name, "role": m.role, "path": str(m.path), "sha256": m.sha256, "status": status}
        )
        (bad if status == "mismatch" else missing if status == "missing" else []).append(m.name)
    if not names:  # the retrieval-trained readers pinned beside the models (offline.models.readers)
        for r in verify_files():
            rows.append(r)
            (bad if r["status"] == "mismatch" else missing if r["status"] == "missing" else []).append(
                r["name"]
            )
    if bad:
        raise ModelIntegrityError(
            f"model integrity check failed for {', '.join(bad)}: "
            "file contents do not match the recorded sha256"
        )
    if missing:
        raise NotFound(f"model(s) missing: {', '.join(missing)} (run `offline models fetch`)")
    return rows
