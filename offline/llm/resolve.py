"""Which GGUF to generate with: the one place the answering side asks the model registry."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path


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
    """Resolve ``name`` (None = the default) through the model registry (hash-verified, pinned).

    A path to a ``.gguf`` file is accepted too (it is hashed, not trusted by name). There is no
    fallback: a registry that cannot be read is an error, never a reason to serve an unverified file.
    """
    from ..models import resolve_model

    if name and name.endswith(".gguf") and Path(name).is_file():
        p = Path(name).resolve()
        return GenModel(p.name, p, _sha256(p))
    info = resolve_model(name, "generate")
    return GenModel(info.name, Path(info.path), info.sha256)
