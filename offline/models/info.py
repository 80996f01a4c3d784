"""What the rest of the kit knows about a model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Role = Literal["generate", "embed"]
Kind = Literal["gguf", "st-folder"]
ROLES: tuple[str, ...] = ("generate", "embed")
KINDS: tuple[str, ...] = ("gguf", "st-folder")


@dataclass(frozen=True)
class ModelInfo:
    """One model: where its file (GGUF) or folder (sentence-transformers) is and what it must hash to."""

    name: str
    role: Role
    path: Path
    sha256: str
    size: int
    source: str
    licence: str
    kind: Kind
    default: bool = False
    origin: Literal["manifest", "imported"] = "manifest"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d
