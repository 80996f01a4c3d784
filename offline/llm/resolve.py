"""Which GGUF to generate with: the one place the answering side asks the model registry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..models.readers import file_sha256

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class GenModel:
    """The generation model to load: registry name, file and its sha256 (for audit and cache keys)."""

    name: str
    path: Path
    sha256: str


def resolve_generate_model(name: str | None) -> GenModel:
    """Resolve ``name`` (None = the default) through the model registry (hash-verified, pinned).

    A path to a ``.gguf`` file is accepted too (it is hashed, not trusted by name). There is no
    fallback: a registry that cannot be read is an error, never a reason to serve an unverified file.
    """
    from ..models import resolve_model

    if name and name.endswith(".gguf") and Path(name).is_file():
        p = Path(name).resolve()
        return GenModel(p.name, p, file_sha256(p))
    info = resolve_model(name, "generate")
    return GenModel(info.name, Path(info.path), info.sha256)
