"""The adapter registry: encrypted GGUF LoRA files under ``VAULT/adapters/`` with lineage in vault.db.

Key choice (documented in the README):

- every adapter gets its own random 256-bit key; the file is ``seal(key, gguf_bytes, aad)`` with the
  aad binding vault id, adapter id and file name, so a file swapped between adapters or vaults fails;
- that key is sealed (``key_wrap``) under ``HKDF(adapter root key, "adapter-kek|<vault>|<id>")``;
- the adapter root key is a random key that lives only inside vault.db (table ``adapter_keyring``),
  which SQLCipher encrypts under the vault key. So adapters are exactly as protected at rest as the
  vault catalog, survive ``vault rekey`` (vault.db is re-encrypted as a whole) and ``finetune rm``
  crypto-shreds: once the row is gone (``secure_delete=ON``) the ciphertext cannot be opened.

Who may use an adapter: any enrolled member or admin, except that an adapter trained on a
collection needs a current read grant on that collection (it may have memorised its text), and
auditors never use adapters (they never read documents). Tainted adapters (lineage includes an
erased document) are refused unless an admin recorded an override.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .. import config
from ..errors import AccessDenied, AlreadyExists, IntegrityError, NotFound, UsageError
from ..vault import crypto, db
from ..vault.core import Session, check_name, new_id, utc_now

ADAPTER_DIR = "adapters"
RUNS_DIR = ".runs"  # encrypted training checkpoints, one 0700 folder per run
TMP_DIR = "tmp"

_COLUMNS = ("id", "name", "file", "base_model", "base_sha256", "base_arch", "dataset_sha256", "source_doc_ids",
            "hyperparameters", "loss_curve", "eval_loss_before", "eval_loss_after", "created_by", "created_at",
            "adapter_sha256", "size", "meta", "tainted_at", "taint_reason", "override_reason")
_JSON_COLUMNS = {"source_doc_ids", "hyperparameters", "loss_curve", "meta"}


class AdapterTainted(AccessDenied):
    """The adapter's lineage includes an erased document and no override was recorded."""


# -- keys -------------------------------------------------------------------------------------

def _root_key(session: Session, *, create: bool = False) -> bytes:
    row = session.db.execute("SELECT root_key FROM adapter_keyring WHERE id = 1").fetchone()
    if row is not None:
        return bytes.fromhex(row[0])
    if not create:
        raise NotFound("no adapters in this vault")
    with db.transaction(session.db):
        session.db.execute("INSERT OR IGNORE INTO adapter_keyring(id, root_key) VALUES (1, ?)",
                           (crypto.random_key().hex(),))
    return bytes.fromhex(session.db.execute("SELECT root_key FROM adapter_keyring WHERE id = 1").fetchone()[0])


def _derive(root: bytes, purpose: str, vault_id: str, ident: str) -> bytes:
    info = f"offline/v1/{purpose}|{vault_id}|{ident}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=crypto.KEY_BYTES, salt=None, info=info).derive(root)


def _key_aad(vault_id: str, adapter_id: str) -> bytes:
    return f"offline/v1/adapter-key|{vault_id}|{adapter_id}".encode()


def _file_aad(vault_id: str, adapter_id: str, file: str) -> bytes:
    return f"offline/v1/adapter|{vault_id}|{adapter_id}|{file}".encode()


def checkpoint_key(session: Session, run_name: str) -> bytes:
    """Key for a training run's encrypted checkpoints (stable per run name, so --resume finds it)."""
    return _derive(_root_key(session, create=True), "checkpoint", session.vault_id, run_name)


def runs_dir(session: Session, run_name: str) -> Path:
    """The private 0700 folder holding a run's encrypted checkpoints."""
    check_name("adapter", run_name)
    base = config.ensure_private_dir(session.vault_dir / ADAPTER_DIR / RUNS_DIR)
    return config.ensure_private_dir(base / run_name)


def private_tmp_dir(session: Session) -> Path:
    """Where plaintext may exist briefly: /dev/shm (RAM) when usable, else the vault's 0700 tmp."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return config.ensure_private_dir(session.vault_dir / TMP_DIR)


# -- registry ---------------------------------------------------------------------------------

def _row_to_info(row: tuple) -> dict[str, Any]:
    info = dict(zip(_COLUMNS, row, strict=True))
    for col in _JSON_COLUMNS:
        if info[col] is not None:
            info[col] = json.loads(info[col])
    info["sha256"] = info["adapter_sha256"]
    info["tainted"] = info["tainted_at"] is not None
    return info


def _fetch(session: Session, name: str) -> tuple[dict[str, Any], str] | None:
    row = session.db.execute(f"SELECT {', '.join(_COLUMNS)}, key_wrap FROM adapters WHERE name = ?",
                             (name,)).fetchone()
    if row is None:
        return None
    return _row_to_info(row[:-1]), row[-1]


def _source_collections(info: dict[str, Any]) -> list[str]:
    return [s["collection"] for s in (info.get("source_doc_ids") or []) if s.get("collection")]


def _check_use(session: Session, info: dict[str, Any], action: str) -> None:
    """Fail closed: auditors never use adapters; collection-trained ones need a read grant."""
    from ..vault.collections import readable_collections

    if session.role == "auditor":
        session.audit("access.denied", severity="warning", adapter=info["name"], reason="auditor")
        raise AccessDenied(f"access denied: adapter {info['name']!r}")
    missing = set(_source_collections(info)) - set(readable_collections(session))
    if missing:
        session.audit("access.denied", severity="warning", adapter=info["name"], what=action,
                      reason="no read grant on a source collection")
        raise AccessDenied(f"access denied: adapter {info['name']!r}")


def save_adapter(session: Session, name: str, gguf_bytes: bytes, *, base_model: str, base_sha256: str,
                 base_arch: str, dataset_sha256: str, hyperparameters: dict[str, Any],
                 loss_curve: list[Any], eval_loss_before: float | None, eval_loss_after: float | None,
                 source_doc_ids: list[dict[str, Any]] | None = None,
                 meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Encrypt ``gguf_bytes`` into ``VAULT/adapters/ID.bin`` and record its lineage (one transaction)."""
    check_name("adapter", name)
    if session.role == "auditor":
        raise AccessDenied("access denied: auditors cannot create adapters")
    if session.db.execute("SELECT 1 FROM adapters WHERE name = ?", (name,)).fetchone():
        raise AlreadyExists(f"adapter {name!r} already exists")
    aid = new_id()
    file = f"{aid}.bin"
    key = crypto.random_key()
    root = _root_key(session, create=True)
    key_wrap = crypto.b64e(crypto.seal(_derive(root, "adapter-kek", session.vault_id, aid), key,
                                       _key_aad(session.vault_id, aid)))
    sha = hashlib.sha256(gguf_bytes).hexdigest()
    folder = config.ensure_private_dir(session.vault_dir / ADAPTER_DIR)
    path = folder / file
    config.write_private_file(path, crypto.seal(key, gguf_bytes, _file_aad(session.vault_id, aid, file)))
    now = utc_now()
    try:
        with db.transaction(session.db):
            session.db.execute(
                "INSERT INTO adapters(id, name, file, base_model, base_sha256, base_arch, dataset_sha256,"
                " source_doc_ids, hyperparameters, loss_curve, eval_loss_before, eval_loss_after, created_by,"
                " created_at, adapter_sha256, size, key_wrap, meta) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (aid, name, file, base_model, base_sha256, base_arch, dataset_sha256,
                 json.dumps(source_doc_ids) if source_doc_ids else None, json.dumps(hyperparameters),
                 json.dumps(loss_curve), eval_loss_before, eval_loss_after, session.user, now, sha,
                 len(gguf_bytes), key_wrap, json.dumps(meta or {})))
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    info, _ = _fetch(session, name)  # type: ignore[misc]
    return info


def list_adapters(session: Session) -> list[dict[str, Any]]:
    """Adapters the caller may use (admins see all, with a ``usable`` flag)."""
    from ..vault.collections import readable_collections

    readable = set(readable_collections(session))
    out = []
    for row in session.db.execute(f"SELECT {', '.join(_COLUMNS)} FROM adapters ORDER BY name"):
        info = _row_to_info(row)
        usable = session.role != "auditor" and set(_source_collections(info)) <= readable
        if not usable and session.role != "admin":
            continue
        info["usable"] = usable
        out.append(info)
    return out


def show_adapter(session: Session, name: str) -> dict[str, Any]:
    """Lineage and figures of one adapter (no key material)."""
    found = _fetch(session, name)
    if found is None:
        raise NotFound(f"no such adapter: {name!r}")
    info = found[0]
    if session.role != "admin":
        _check_use(session, info, "show")
    return info


def _usable(session: Session, name: str, *, allow_tainted: bool = False) -> tuple[dict[str, Any], str]:
    """The adapter's row and key wrap once the caller may use it now (access grant, taint)."""
    found = _fetch(session, name)
    if found is None:
        raise NotFound(f"no such adapter: {name!r}")
    info, key_wrap = found
    _check_use(session, info, "use")
    if info["tainted_at"] and not info["override_reason"] and not allow_tainted:
        raise AdapterTainted(
            f"adapter {name!r} is tainted ({info['taint_reason'] or 'its training data included an erased document'});"
            " retrain it or have an admin record an override")
    return info, key_wrap


def check_adapter_use(session: Session, name: str) -> dict[str, Any]:
    """Run every check :func:`open_adapter` runs, without decrypting or auditing: for a caller whose
    llama.cpp may already hold this adapter (by sha256). Such a caller then records the use with
    :func:`record_use` (or :func:`open_adapter` does, when it must decrypt after all)."""
    return _usable(session, name)[0]


def record_use(session: Session, info: dict[str, Any]) -> None:
    """Audit one use: a tainted adapter (served under an admin override) is a high-severity event."""
    if info["tainted_at"]:
        session.audit("adapter.use_tainted", severity="high", adapter=info["name"], adapter_id=info["id"],
                      taint_reason=info["taint_reason"], override_reason=info["override_reason"])
    else:
        session.audit("adapter.open", adapter=info["name"], adapter_id=info["id"], adapter_sha256=info["sha256"])


def read_adapter_bytes(session: Session, name: str, *, allow_tainted: bool = False) -> tuple[bytes, dict[str, Any]]:
    """Decrypt an adapter into memory after the access and taint checks; verifies its sha256."""
    info, key_wrap = _usable(session, name, allow_tainted=allow_tainted)
    root = _root_key(session)
    aid, file = info["id"], info["file"]
    key = crypto.unseal(_derive(root, "adapter-kek", session.vault_id, aid), crypto.b64d(key_wrap),
                        _key_aad(session.vault_id, aid))
    path = session.vault_dir / ADAPTER_DIR / file
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise IntegrityError(f"adapter {name!r}: its encrypted file {file} is missing") from None
    data = crypto.unseal(key, blob, _file_aad(session.vault_id, aid, file))
    if hashlib.sha256(data).hexdigest() != info["adapter_sha256"]:
        raise IntegrityError(f"adapter {name!r}: content does not match its recorded sha256")
    return data, info


@contextlib.contextmanager
def open_adapter(session: Session, name: str) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Decrypt adapter ``name`` for llama.cpp to load; nothing of it remains once the block ends.

    Yields ``(path, info)``; ``info`` has at least ``name``, ``sha256`` (of the GGUF plaintext) and
    ``base_sha256``. The plaintext never gets a name: it goes into an anonymous, sealed 0600
    memory file (:mod:`offline.memfile`) and ``path`` is ``/proc/self/fd/N``, which only this
    process resolves; a process killed at any moment (SIGKILL included) leaves nothing behind,
    since the kernel frees the file with its last descriptor. Only where memfd is unavailable
    does it fall back to a 0600 file in a private 0700 temp dir (/dev/shm when usable, else the
    vault's tmp), removed on exit. llama.cpp reads a LoRA completely at load (mmap is off with a
    LoRA), so callers leave the block as soon as ``Llama(...)`` returns, which closes the
    descriptor. Raises :class:`NotFound`, :class:`AccessDenied`, :class:`AdapterTainted` (an
    AccessDenied) or an :class:`IntegrityError`.
    """
    from .. import memfile

    data, info = read_adapter_bytes(session, name)
    record_use(session, info)
    fd = memfile.anonymous_copy(data, "offline-adapter")
    if fd is not None:
        del data
        try:
            yield memfile.fd_path(fd), info
        finally:
            os.close(fd)
        return
    tmp = Path(tempfile.mkdtemp(prefix="offline-adapter-", dir=private_tmp_dir(session)))
    try:
        os.chmod(tmp, 0o700)
        path = tmp / f"{name}.gguf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        del data
        yield path, info
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_adapter(session: Session, name: str) -> dict[str, Any]:
    """Delete an adapter (admin or its creator): the row with its key, then the ciphertext."""
    found = _fetch(session, name)
    if found is None:
        raise NotFound(f"no such adapter: {name!r}")
    info = found[0]
    if session.role != "admin" and info["created_by"] != session.user:
        session.audit("access.denied", severity="warning", adapter=name, what="finetune.rm")
        raise AccessDenied(f"access denied: removing adapter {name!r} needs admin or its creator")
    with db.transaction(session.db):
        session.db.execute("DELETE FROM adapters WHERE id = ?", (info["id"],))
    (session.vault_dir / ADAPTER_DIR / info["file"]).unlink(missing_ok=True)
    session.audit("finetune.rm", adapter=name, adapter_id=info["id"], adapter_sha256=info["sha256"])
    return {"name": name, "id": info["id"], "removed": True}


# -- lineage hooks for GDPR erasure -----------------------------------------------------------

def adapters_using_document(session: Session, collection_id: str, doc_id: int) -> list[str]:
    """Names of adapters whose lineage includes document ``doc_id`` of collection ``collection_id``."""
    out = []
    for name, src in session.db.execute("SELECT name, source_doc_ids FROM adapters WHERE source_doc_ids IS NOT NULL"):
        for s in json.loads(src):
            if s.get("collection_id") == collection_id and doc_id in s.get("doc_ids", []):
                out.append(name)
                break
    return out


def mark_tainted(session: Session, name: str, reason: str) -> None:
    """Record that ``name`` was trained on since-erased data (the GDPR erase flow calls this)."""
    if not reason.strip():
        raise UsageError("a taint needs a reason")
    with db.transaction(session.db):
        cur = session.db.execute("UPDATE adapters SET tainted_at = ?, taint_reason = ?, override_reason = NULL"
                                 " WHERE name = ?", (utc_now(), reason, name))
    if cur.rowcount == 0:
        raise NotFound(f"no such adapter: {name!r}")
    session.audit("adapter.taint", severity="notice", adapter=name, reason=reason)


def override_taint(session: Session, name: str, reason: str) -> None:
    """Admin: allow a tainted adapter to be served anyway, with a recorded reason."""
    session.require_role("admin", action="overriding an adapter taint")
    if not reason.strip():
        raise UsageError("an override needs a reason")
    with db.transaction(session.db):
        cur = session.db.execute("UPDATE adapters SET override_reason = ? WHERE name = ? AND tainted_at IS NOT NULL",
                                 (reason, name))
    if cur.rowcount == 0:
        raise NotFound(f"no tainted adapter named {name!r}")
    session.audit("adapter.taint_override", severity="high", adapter=name, reason=reason)

