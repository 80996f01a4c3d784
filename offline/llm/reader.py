"""The retrieval-trained reader that ``ask`` serves by default with the default generation model.

``models/manifest.toml`` pins it in a ``[[reader]]`` table: the base model it is for, the RAFT LoRA
adapter (committed, a few MB, with its lineage file) and, optionally, the adapter merged into the
base and re-quantised (:mod:`offline.finetune.merge`; rebuilt by ``offline models fetch`` and
``scripts/setup``, too big to commit). The merged GGUF is preferred because it decodes as fast as
the base; without it the adapter is applied by llama.cpp at load (slower decode, same answers up to
quantisation). Every file is checked against its pinned sha256 before it is used, and a reader that
is pinned but missing or altered fails closed: ``--no-reader`` serves the plain model instead.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import config
from ..errors import ModelIntegrityError, NotFound
from .resolve import GenModel, _sha256


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


@dataclass(frozen=True)
class Reader:
    """What to load: ``model`` (the merged GGUF, or the base) and ``lora_path`` (None when merged)."""

    spec: ReaderSpec
    model: GenModel
    lora_path: Path | None

    def info(self) -> dict[str, Any]:
        return {"name": self.spec.name, "adapter_sha256": self.spec.adapter_sha256,
                "merged": self.lora_path is None, "model_sha256": self.model.sha256}


def specs(manifest: Path | None = None) -> list[ReaderSpec]:
    """Every ``[[reader]]`` entry of the manifest (none is fine: then no model has a reader)."""
    from ..models.manifest import manifest_path

    p = manifest or manifest_path()
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8")).get("reader", [])
    except (OSError, tomllib.TOMLDecodeError):
        return []  # the model manifest's own loader reports a broken manifest
    return [ReaderSpec(name=r["name"], base=r["base"], base_sha256=r["base_sha256"], adapter=r["adapter"],
                       adapter_sha256=r["adapter_sha256"], merged=r.get("merged"),
                       merged_sha256=r.get("merged_sha256"), merge_type=r.get("merge_type"),
                       licence=r.get("licence", "")) for r in raw]


def find_file(name: str) -> Path | None:
    """``name`` in the model store, else in the repository's ``models/`` (where the adapter is committed)."""
    for folder in (config.models_dir(), config.REPO_ROOT / "models"):
        p = folder / name
        if p.is_file():
            return p
    return None


def _checked(name: str, sha256: str) -> Path | None:
    p = find_file(name)
    if p is None:
        return None
    if _sha256(p) != sha256:
        raise ModelIntegrityError(f"reader file {p} does not match its pinned sha256; "
                                  "rebuild it (`offline models fetch`) or pass --no-reader")
    return p


def reader_for(base: GenModel) -> Reader | None:
    """The reader of ``base`` (None when the manifest pins none for it)."""
    spec = next((s for s in specs() if s.base == base.name and s.base_sha256 == base.sha256), None)
    if spec is None:
        return None
    if spec.merged and spec.merged_sha256:
        merged = _checked(spec.merged, spec.merged_sha256)
        if merged is not None:
            return Reader(spec, GenModel(spec.name, merged, spec.merged_sha256), None)
    adapter = _checked(spec.adapter, spec.adapter_sha256)
    if adapter is None:
        raise NotFound(f"the reader {spec.name!r} of {base.name!r} is missing ({spec.adapter}); "
                       "run `offline models fetch` or pass --no-reader")
    return Reader(spec, base, adapter)


def build_merged(log: Any = None) -> list[dict[str, Any]]:
    """Make every pinned merged reader present in the model store (``offline models fetch`` calls it).

    Idempotent; built from the pinned base and the committed adapter by
    :func:`offline.finetune.merge.merge_lora` into a temporary name, renamed into place only when
    its sha256 is the pinned one (else nothing is kept and the error names both hashes).
    """
    import os

    from ..finetune.merge import merge_lora
    from ..models import resolve_model

    say = log or (lambda _m: None)
    results = []
    for spec in specs():
        if not (spec.merged and spec.merged_sha256):
            continue
        target = config.models_dir() / spec.merged
        if target.is_file() and _sha256(target) == spec.merged_sha256:
            results.append({"name": spec.name, "action": "present", "path": str(target)})
            continue
        base = resolve_model(spec.base, "generate")
        adapter = _checked(spec.adapter, spec.adapter_sha256)
        if adapter is None:
            raise NotFound(f"reader {spec.name!r}: adapter {spec.adapter} is missing")
        tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
        try:
            got = merge_lora(Path(base.path), adapter, tmp, qtype=spec.merge_type)
            if got != spec.merged_sha256:
                raise ModelIntegrityError(f"reader {spec.name!r} merged to sha256 {got[:16]}..., pinned "
                                          f"{spec.merged_sha256[:16]}...; not installed")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        say(f"{spec.name}: merged {spec.adapter} into {spec.base}, sha256 ok")
        results.append({"name": spec.name, "action": "built", "path": str(target)})
    return results


def verify_files() -> list[dict[str, Any]]:
    """Re-hash every reader file (``offline models verify``): rows like the models', status ok,
    mismatch, missing (the adapter: an error) or not built (the merged file: ``models fetch`` makes it)."""
    rows = []
    for spec in specs():
        for label, name, sha in (("adapter", spec.adapter, spec.adapter_sha256),
                                 ("merged", spec.merged, spec.merged_sha256)):
            if not name or not sha:
                continue
            p = find_file(name)
            status = ("missing" if label == "adapter" else "not built") if p is None else (
                "ok" if _sha256(p) == sha else "mismatch")
            rows.append({"name": f"{spec.name} ({label})", "role": "reader", "path": str(p or name),
                         "sha256": sha, "status": status})
    return rows
