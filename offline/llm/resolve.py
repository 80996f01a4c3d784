"""Which GGUF to generate with: the one place the answering side asks the model registry."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from .. import config
from ..errors import NotFound

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_sha_cache: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class GenModel:
    """The generation model to load: registry name, file and its sha256 (for audit and cache keys)."""

    name: str
    path: Path
    sha256: str


def _sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _sha_cache:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _sha_cache[key] = h.hexdigest()
    return _sha_cache[key]


def resolve_generate_model(name: str | None) -> GenModel:
    """Resolve ``name`` (None = the default) through :func:`offline.models.resolve_model`.

    Until the registry exists, fall back to the default SmolLM2 GGUF in the models folder.
    A path to a ``.gguf`` file is accepted too (it is hashed, not trusted by name).
    """
    try:
        from ..models import resolve_model  # type: ignore[attr-defined]
    except ImportError:
        resolve_model = None
    if name and name.endswith(".gguf") and Path(name).is_file():
        p = Path(name).resolve()
        return GenModel(p.name, p, _sha256(p))
    if resolve_model is not None:
        info = resolve_model(name, "generate")
        return GenModel(info.name, Path(info.path), info.sha256)
    if name not in (None, "", "smollm2-135m-instruct"):
        raise NotFound(f"no such model: {name!r}")
    path = config.models_dir() / DEFAULT_GGUF
    if not path.is_file():
        path = config.REPO_ROOT / "models" / DEFAULT_GGUF
    if not path.is_file():
        raise NotFound(f"default model not found: {DEFAULT_GGUF} (run `offline models fetch`)")
    return GenModel("smollm2-135m-instruct", path, _sha256(path))
