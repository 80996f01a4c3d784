"""User-imported models: ``<models dir>/registry.json`` (written atomically, mode 0600)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import config
from ..errors import InvalidInput
from .info import KINDS, ROLES, ModelInfo

REGISTRY_NAME = "registry.json"
IMPORTED_DIR = "imported"


def registry_path(models_dir: Path | None = None) -> Path:
    return (models_dir or config.models_dir()) / REGISTRY_NAME


def load_registry(models_dir: Path | None = None) -> list[dict[str, Any]]:
    """The imported-model records (empty when no model was imported)."""
    p = registry_path(models_dir)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"model registry {p} is unreadable: {exc.__class__.__name__}") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, list):
        raise InvalidInput(f"model registry {p} is malformed")
    for rec in models:
        if not isinstance(rec, dict) or rec.get("role") not in ROLES or rec.get("kind") not in KINDS:
            raise InvalidInput(f"model registry {p} has a malformed entry")
        local = str(rec.get("local", ""))
        if not local.startswith(IMPORTED_DIR + "/") or ".." in Path(local).parts:
            raise InvalidInput(f"model registry {p} has an unsafe path for {rec.get('name')!r}")
    return models


def save_registry(models: list[dict[str, Any]], models_dir: Path | None = None) -> None:
    """Atomically replace the registry (0600)."""
    p = registry_path(models_dir)
    if not p.parent.exists():
        config.ensure_private_dir(p.parent)
    body = json.dumps({"schema": 1, "models": models}, indent=2, sort_keys=True) + "\n"
    config.write_private_file(p, body.encode())


def record_info(rec: dict[str, Any], models_dir: Path) -> ModelInfo:
    return ModelInfo(
        name=rec["name"],
        role=rec["role"],
        path=models_dir / rec["local"],
        sha256=rec["sha256"],
        size=int(rec["size"]),
        source=rec.get("source", "imported"),
        licence=rec.get("licence", "unknown"),
        kind=rec["kind"],
        default=False,
        origin="imported",
        extra={k: rec[k] for k in ("architecture", "imported_at") if k in rec},
    )
