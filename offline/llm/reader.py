"""The retrieval-trained reader that ``ask`` serves by default with the default generation model.

``models/manifest.toml`` pins it in a ``[[reader]]`` table: the base model it is for, the RAFT LoRA
adapter (committed, a few MB, with its lineage file) and, optionally, the adapter merged into the
base and re-quantised (:mod:`offline.finetune.merge`; rebuilt by ``offline models fetch`` and
``scripts/setup``, too big to commit). The merged GGUF is preferred because it decodes as fast as
the base; without it the adapter is applied by llama.cpp at load (slower decode, same answers up to
quantisation). Every file is checked against its pinned sha256 before it is used, and a reader that
is pinned but missing or altered fails closed: ``--no-reader`` serves the plain model instead.

The pinned files themselves (manifest entries, hashing, ``models verify`` rows, building the merged
GGUF) are model-store business: :mod:`offline.models.readers` and :mod:`offline.models.fetch`,
re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import NotFound
from ..models.fetch import build_merged
from ..models.readers import ReaderSpec, checked_file, find_file, specs, verify_files
from .resolve import GenModel


@dataclass(frozen=True)
class Reader:
    """What to load: ``model`` (the merged GGUF, or the base) and ``lora_path`` (None when merged)."""

    spec: ReaderSpec
    model: GenModel
    lora_path: Path | None

    def info(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "adapter_sha256": self.spec.adapter_sha256,
            "merged": self.lora_path is None,
            "model_sha256": self.model.sha256,
        }


def reader_for(base: GenModel) -> Reader | None:
    """The reader of ``base`` (None when the manifest pins none for it)."""
    spec = next((s for s in specs() if s.base == base.name and s.base_sha256 == base.sha256), None)
    if spec is None:
        return None
    if spec.merged and spec.merged_sha256:
        merged = checked_file(spec.merged, spec.merged_sha256)
        if merged is not None:
            return Reader(spec, GenModel(spec.name, merged, spec.merged_sha256), None)
    adapter = checked_file(spec.adapter, spec.adapter_sha256)
    if adapter is None:
        raise NotFound.naming(
            "the reader {reader} of {base} is missing ({adapter}); run `offline models fetch` or "
            "pass {no_reader}",
            "no_reader",
            reader=repr(spec.name),
            base=repr(base.name),
            adapter=spec.adapter,
        )
    return Reader(spec, base, adapter)


__all__ = [
    "Reader",
    "ReaderSpec",
    "build_merged",
    "checked_file",
    "find_file",
    "reader_for",
    "specs",
    "verify_files",
]
