"""The pinned default models: ``models/manifest.toml`` (read-only, read with tomllib)."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import config
from ..errors import InvalidInput
from .info import KINDS, ROLES, ModelInfo

ENV_MANIFEST = "OFFLINE_MODELS_MANIFEST"
_SHA = re.compile(r"^[0-9a-f]{64}$")
_METHODS = ("wheel-file", "assemble", "package-folder")


@dataclass(frozen=True)
class ManifestEntry:
    """One ``[[model]]`` table of the manifest."""

    name: str
    role: str
    default: bool
    kind: str
    local: str
    sha256: str
    size: int
    licence: str
    description: str
    source: dict[str, str]

    @property
    def source_label(self) -> str:
        s = self.source
        return f"{s['package']}=={s['version']}:{s['file']}"

    def info(self, models_dir: Path) -> ModelInfo:
        return ModelInfo(
            name=self.name,
            role=self.role,
            path=models_dir / self.local,  # type: ignore[arg-type]
            sha256=self.sha256,
            size=self.size,
            source=self.source_label,
            licence=self.licence,
            kind=self.kind,
            default=self.default,  # type: ignore[arg-type]
            origin="manifest",
            extra={"description": self.description},
        )


def manifest_path() -> Path:
    """``OFFLINE_MODELS_MANIFEST``, else the repository's ``models/manifest.toml``, else the copy
    that travels with the model files in ``models_dir()`` (an installed kit has no repository)."""
    env = os.environ.get(ENV_MANIFEST)
    if env:
        return Path(env).expanduser()
    in_repo = config.REPO_ROOT / "models" / "manifest.toml"
    return in_repo if in_repo.is_file() else config.models_dir() / "manifest.toml"


def _entry(raw: dict[str, Any], where: str) -> ManifestEntry:
    try:
        src = dict(raw["source"])
        e = ManifestEntry(
            name=str(raw["name"]),
            role=str(raw["role"]),
            default=bool(raw.get("default", False)),
            kind=str(raw["kind"]),
            local=str(raw["local"]),
            sha256=str(raw["sha256"]).lower(),
            size=int(raw["size"]),
            licence=str(raw["licence"]),
            description=str(raw.get("description", "")),
            source={k: str(v) for k, v in src.items()},
        )
        for key in ("package", "version", "file", "method"):
            e.source[key]  # noqa: B018  (presence check)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(
            f"model manifest {where}: malformed entry ({exc.__class__.__name__}: {exc})"
        ) from None
    if (
        e.role not in ROLES
        or e.kind not in KINDS
        or not _SHA.match(e.sha256)
        or e.source["method"] not in _METHODS
    ):
        raise InvalidInput(f"model manifest {where}: entry {e.name!r} has a bad role, kind, sha256 or method")
    if "/" in e.local or e.local.startswith("."):
        raise InvalidInput(f"model manifest {where}: entry {e.name!r} has an unsafe local name")
    return e


_loaded: dict[tuple[str, int], list[ManifestEntry]] = {}


def load_manifest(path: Path | None = None) -> list[ManifestEntry]:
    """Parse and validate the manifest (one default per role, unique names)."""
    p = path or manifest_path()
    try:
        st = p.stat()
        key = (str(p), st.st_mtime_ns)
        if key in _loaded:
            return _loaded[key]
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInput(f"model manifest not found at {p}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInput(f"model manifest {p} cannot be read: {exc}") from None
    entries = [_entry(raw, str(p)) for raw in data.get("model", [])]
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise InvalidInput(f"model manifest {p}: duplicate model names")
    for role in ROLES:
        if sum(1 for e in entries if e.role == role and e.default) != 1:
            raise InvalidInput(f"model manifest {p}: needs exactly one default {role} model")
    _loaded[key] = entries
    return entries
