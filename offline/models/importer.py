"""``offline models import``: register a GGUF file or a sentence-transformers folder a user copied in.

The candidate is checked structurally before anything is copied (a GGUF must parse completely and
its tensor data must fit in the file; a sentence-transformers folder needs its config and
safetensors weights whose header and length agree), then copied under a temporary name into
``<models dir>/imported/``, hashed, compared with the source's hash, and renamed into place; the
registry is rewritten atomically last. A refused or failed import leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import config
from ..errors import AlreadyExists, InvalidInput, NotFound, UsageError
from .catalog import all_models
from .hashing import model_hash, model_size
from .info import ModelInfo
from .registry import IMPORTED_DIR, load_registry, record_info, save_registry

GGUF_MAGIC = b"GGUF"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# Pickle-based weights (pytorch_model.bin) are refused on purpose: loading them can run code.
_WEIGHTS = ("model.safetensors",)


def inspect_gguf(path: Path) -> dict[str, Any]:
    """Parse a GGUF completely; return its architecture and tensor count or raise InvalidInput."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise InvalidInput(f"{path.name} is not a GGUF file (bad magic bytes)")
    from gguf import GGUFReader  # numpy-heavy: imported only when importing a model

    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # the reader raises ValueError/IndexError/struct errors on damage
        raise InvalidInput(
            f"{path.name} is a damaged or truncated GGUF file ({exc.__class__.__name__})"
        ) from None
    if not reader.tensors:
        raise InvalidInput(f"{path.name} is a GGUF file without tensors")
    end = max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors)
    if end > size:
        raise InvalidInput(f"{path.name} is truncated: tensor data needs {end} bytes, file has {size}")
    arch = None
    field = reader.fields.get("general.architecture")
    if field is not None and field.data:
        arch = bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
    if not arch:
        raise InvalidInput(f"{path.name} is a GGUF file without general.architecture")
    return {"architecture": arch, "tensors": len(reader.tensors)}


def _check_safetensors(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise InvalidInput(f"{path.name} is truncated")
        (hlen,) = struct.unpack("<Q", head)
        if hlen > min(size - 8, 100 << 20):
            raise InvalidInput(f"{path.name} is not a valid safetensors file (header length {hlen})")
        try:
            header = json.loads(fh.read(hlen))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InvalidInput(f"{path.name} is not a valid safetensors file (bad header)") from None
    if not isinstance(header, dict):
        raise InvalidInput(f"{path.name} is not a valid safetensors file (bad header)")
    ends = [
        int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
    ]
    if not ends or 8 + hlen + max(ends) != size:
        raise InvalidInput(f"{path.name} is truncated or padded: header and file length disagree")


def inspect_st_folder(path: Path) -> dict[str, Any]:
    """Check a sentence-transformers folder: config (modules.json or config.json) + safetensors weights."""
    if not ((path / "modules.json").is_file() or (path / "config.json").is_file()):
        raise InvalidInput(
            f"{path.name} is not a sentence-transformers folder (no modules.json or config.json)"
        )
    for f in path.rglob("*"):
        if f.is_symlink():
            raise InvalidInput(f"{path.name} contains a symlink ({f.relative_to(path)}); copy real files")
    weights = [p for p in path.rglob("*") if p.name in _WEIGHTS]
    if not weights:
        if any(path.rglob("pytorch_model.bin")):
            raise InvalidInput(
                f"{path.name} has only pickle weights (pytorch_model.bin); convert to safetensors"
            )
        raise InvalidInput(f"{path.name} has no model.safetensors weights")
    for w in weights:
        _check_safetensors(w)
    for j in ("modules.json", "config.json"):
        if (path / j).is_file():
            try:
                json.loads((path / j).read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise InvalidInput(f"{path.name}/{j} is not valid JSON") from None
    arch = None
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
        arch = (cfg.get("architectures") or [cfg.get("model_type")])[0]
    except (OSError, json.JSONDecodeError, AttributeError, IndexError):
        pass
    return {"architecture": arch or "unknown"}


def _default_name(path: Path) -> str:
    stem = path.name[:-5] if path.name.lower().endswith(".gguf") else path.name
    return re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")[:64] or "model"


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, symlinks=False)
    else:
        shutil.copyfile(src, dst)


def import_model(path: str | os.PathLike[str], name: str | None = None, role: str | None = None) -> ModelInfo:
    """Check, copy into the models folder and register a GGUF file or sentence-transformers folder.

    ``role`` defaults to "generate" for a GGUF and "embed" for a folder (the only roles each kind
    supports); ``name`` defaults to the file name. Returns the new model's :class:`ModelInfo`.
    """
    src = Path(path).expanduser()
    if not src.exists():
        raise NotFound(f"no such file or folder: {src}")
    kind = "st-folder" if src.is_dir() else "gguf"
    expected_role = "embed" if kind == "st-folder" else "generate"
    if role is not None and role != expected_role:
        raise UsageError(
            f"a {'sentence-transformers folder' if kind == 'st-folder' else 'GGUF file'} "
            f"can only be imported as a {expected_role} model"
        )
    name = name or _default_name(src)
    if not _NAME.match(name):
        raise UsageError(f"invalid model name {name!r}: use lowercase letters, digits, '.', '_' or '-'")
    if any(m.name == name for m in all_models()):
        raise AlreadyExists(f"a model named {name!r} already exists")
    details = inspect_st_folder(src) if kind == "st-folder" else inspect_gguf(src)
    src_hash = model_hash(src, fresh=True)

    d = config.models_dir()
    dest_dir = d / IMPORTED_DIR
    dest_dir.mkdir(parents=True, exist_ok=True)
    local = f"{IMPORTED_DIR}/{name}{'.gguf' if kind == 'gguf' else ''}"
    target = d / local
    if target.exists():
        raise AlreadyExists.naming(
            "{target} already exists; remove it or choose another {name}", "name", target=target
        )
    tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        _copy(src, tmp)
        if model_hash(tmp, fresh=True) != src_hash:
            raise InvalidInput(f"{src.name} changed while it was being copied; try again")
        os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp)
        elif tmp.exists():
            tmp.unlink()
    rec = {
        "name": name,
        "role": expected_role,
        "kind": kind,
        "local": local,
        "sha256": src_hash,
        "size": model_size(target),
        "source": f"imported from {src.resolve()}",
        "licence": "unknown",
        "imported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **details,
    }
    try:
        save_registry([*load_registry(d), rec], d)
    except BaseException:
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        raise
    return record_info(rec, d)
