"""The adapter registry: encrypted GGUF LoRA files under ``VAULT/adapters/`` with lineage in vault.db.

Keys (documented in the README):

- every adapter gets its own random 256-bit key; the file is ``seal(key, gguf_bytes, aad)`` with the
  aad binding vault id, adapter id and file name, so a file swapped between adapters or vaults fails;
- that key is wrapped (X25519 + HKDF + AES-GCM, like a collection key) to each **reader** in
  ``adapter_keys``. Readers of an adapter trained on collections are the users who may read *all*
  its sources, collection and labels, when it is made; one trained from a file belongs to its
  creator, who may share it with an explicit grant (``finetune share``). Rows are authorization
  state: they count only as the signed audit chain recorded them (offline.vault.authz), so the
  auditor or a member without the grants holds nothing that decrypts an adapter, raw tools or not.
- ``finetune rm`` crypto-shreds: the wraps go with the row (``secure_delete=ON``).

Who may use an adapter: a reader whose grants (signed policy) still cover every source; auditors
never. Tainted adapters (lineage includes an erased document) are refused unless an admin recorded
an override (``adapters override-taint``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .. import config
from ..errors import AccessDenied, AlreadyExists, IntegrityError, NotFound, UsageError
from ..vault import crypto
from ..vault.core import Session, check_name, new_id, signed_wrap, utc_now

ADAPTER_DIR = "adapters"
RUNS_DIR = ".runs"  # encrypted training checkpoints, one 0700 folder per run
TMP_DIR = "tmp"

_COLUMNS = (
    "id",
    "name",
    "file",
    "base_model",
    "base_sha256",
    "base_arch",
    "dataset_sha256",
    "source_doc_ids",
    "hyperparameters",
    "loss_curve",
    "eval_loss_before",
    "eval_loss_after",
    "created_by",
    "created_at",
    "adapter_sha256",
    "size",
    "meta",
    "tainted_at",
    "taint_reason",
    "override_reason",
)
_JSON_COLUMNS = {"source_doc_ids", "hyperparameters", "loss_curve", "meta"}


class AdapterTainted(AccessDenied):
    """The adapter's lineage includes an erased document and no override was recorded."""


# -- keys -------------------------------------------------------------------------------------


def _wrap_context(vault_id: str, adapter_id: str, user: str) -> str:
    return f"adapter-key|{vault_id}|{adapter_id}|{user}"


def _wrap_rows(session: Session, aid: str, key: bytes, users: list[str]) -> None:
    for u in users:
        pub = session.policy.wrap_pub(u)
        if pub is None:  # keys not confirmed yet (an upgraded vault): nothing is wrapped to them
            continue
        session.db.execute(
            "INSERT OR REPLACE INTO adapter_keys(adapter_id, user, wrapped) VALUES (?, ?, ?)",
            (aid, u, crypto.wrap_to(pub, key, _wrap_context(session.vault_id, aid, u))),
        )


def _readers(session: Session, sources: list[dict[str, Any]] | None) -> list[str]:
    """Who may read an adapter now: with sources, everyone whose grants cover them all; else its creator."""
    if not sources:
        return [session.user]
    return [u for u in session.policy.users("admin", "member") if session.policy.may_read_sources(u, sources)]


def _adapter_key(session: Session, info: dict[str, Any]) -> bytes:
    wrapped = signed_wrap(session, "adapter_keys", info["id"], session.user)
    if wrapped is None:
        raise AccessDenied(f"access denied: adapter {info['name']!r}")
    return crypto.unwrap_with(
        session.keys.x25519, wrapped, _wrap_context(session.vault_id, info["id"], session.user)
    )


def _derive(root: bytes, purpose: str, vault_id: str, ident: str) -> bytes:
    info = f"offline/v1/{purpose}|{vault_id}|{ident}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=crypto.KEY_BYTES, salt=None, info=info).derive(root)


def adapter_path(session: Session, info: dict[str, Any]) -> Path:
    """``VAULT/adapters/<id>.bin``, refusing any other name: a row's ``file`` is never a path to follow."""
    aid, file = str(info["id"]), str(info["file"])
    if not re.fullmatch(r"[0-9a-f]{16}", aid) or file != f"{aid}.bin":
        raise IntegrityError(f"adapter {info.get('name')!r}: its file name {file!r} is not the kit's")
    return session.vault_dir / ADAPTER_DIR / file


def _file_aad(vault_id: str, adapter_id: str, file: str) -> bytes:
    return f"offline/v1/adapter|{vault_id}|{adapter_id}|{file}".encode()


def checkpoint_key(session: Session, run_name: str) -> bytes:
    """Key for a training run's encrypted checkpoints (stable per run name, so --resume finds it)."""
    # Derived from the trainer's own private key: only they can read or resume their checkpoints.
    return _derive(
        crypto.private_bytes(session.keys.x25519),
        "checkpoint",
        session.vault_id,
        f"{session.user}|{run_name}",
    )


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
    row = session.db.execute(
        f"SELECT {', '.join(_COLUMNS)}, key_wrap FROM adapters WHERE name = ?", (name,)
    ).fetchone()
    if row is None:
        return None
    return _row_to_info(row[:-1]), row[-1]


def _source_collections(info: dict[str, Any]) -> list[str]:
    return [s["collection"] for s in (info.get("source_doc_ids") or []) if s.get("collection")]


def _check_use(session: Session, info: dict[str, Any], action: str) -> None:
    """Fail closed: auditors never use adapters; a collection-trained one needs grants covering its
    sources (collections and labels, as the signed policy holds them); every use needs a key wrap."""
    sources = info.get("source_doc_ids") or []
    ok = session.role in ("admin", "member") and (
        session.policy.may_read_sources(session.user, sources) if sources else True
    )
    ok = ok and session.policy.row("adapter_keys", info["id"], session.user) is not None
    if not ok:
        session.audit(
            "access.denied",
            severity="warning",
            adapter=info["name"],
            what=action,
            reason="auditor" if session.role == "auditor" else "no grant covering its sources",
        )
        raise AccessDenied(f"access denied: adapter {info['name']!r}")


def save_adapter(
    session: Session,
    name: str,
    gguf_bytes: bytes,
    *,
    base_model: str,
    base_sha256: str,
    base_arch: str,
    dataset_sha256: str,
    hyperparameters: dict[str, Any],
    loss_curve: list[Any],
    eval_loss_before: float | None,
    eval_loss_after: float | None,
    source_doc_ids: list[dict[str, Any]] | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Encrypt ``gguf_bytes`` into ``VAULT/adapters/ID.bin`` and record its lineage (one transaction)."""
    check_name("adapter", name)
    if session.role == "auditor":
        raise AccessDenied("access denied: auditors cannot create adapters")
    aid = new_id()
    file = f"{aid}.bin"
    key = crypto.random_key()
    sha = hashlib.sha256(gguf_bytes).hexdigest()
    folder = config.ensure_private_dir(session.vault_dir / ADAPTER_DIR)
    path = folder / file
    config.write_private_file(path, crypto.seal(key, gguf_bytes, _file_aad(session.vault_id, aid, file)))
    now = utc_now()
    try:
        with session.change("adapter.save", adapter=name, adapter_id=aid, adapter_sha256=sha) as extra:
            if session.db.execute("SELECT 1 FROM adapters WHERE name = ?", (name,)).fetchone():
                raise AlreadyExists(f"adapter {name!r} already exists")
            session.db.execute(
                "INSERT INTO adapters(id, name, file, base_model, base_sha256, base_arch, dataset_sha256,"
                " source_doc_ids, hyperparameters, loss_curve, eval_loss_before, eval_loss_after, created_by,"
                " created_at, adapter_sha256, size, key_wrap, meta)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    aid,
                    name,
                    file,
                    base_model,
                    base_sha256,
                    base_arch,
                    dataset_sha256,
                    json.dumps(source_doc_ids) if source_doc_ids else None,
                    json.dumps(hyperparameters),
                    json.dumps(loss_curve),
                    eval_loss_before,
                    eval_loss_after,
                    session.user,
                    now,
                    sha,
                    len(gguf_bytes),
                    "",
                    json.dumps(meta or {}),
                ),
            )
            readers = _readers(session, source_doc_ids)
            _wrap_rows(session, aid, key, readers)
            extra["readers"] = readers
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    info, _ = _fetch(session, name)  # type: ignore[misc]
    return info


def _owned(session: Session, name: str, what: str, verb: str) -> dict[str, Any]:
    """The adapter's row, if the caller is an admin or its creator (else audited and denied)."""
    found = _fetch(session, name)
    if found is None:
        raise NotFound(f"no such adapter: {name!r}")
    info = found[0]
    if session.role != "admin" and info["created_by"] != session.user:
        session.audit("access.denied", severity="warning", adapter=name, what=what)
        raise AccessDenied(f"access denied: {verb} adapter {name!r} needs admin or its creator")
    return info


def share_adapter(session: Session, name: str, user: str) -> dict[str, Any]:
    """Let ``user`` use adapter ``name`` (its creator, or an admin who can read it): a signed key wrap.

    An adapter trained on collections is shared only with users whose grants cover all its sources.
    """
    info = _owned(session, name, "finetune.share", "sharing")
    if session.policy.role(user) not in ("admin", "member"):
        raise NotFound(
            f"no such user: {user!r}"
            if session.policy.user(user) is None
            else f"{user!r} is an auditor: auditors never use adapters"
        )
    sources = info.get("source_doc_ids") or []
    if sources and not session.policy.may_read_sources(user, sources):
        raise AccessDenied(
            f"access denied: {user!r} may not read every source adapter {name!r} was trained on"
        )
    key = _adapter_key(session, info)
    with session.change("adapter.share", adapter=name, adapter_id=info["id"], user=user):
        _wrap_rows(session, info["id"], key, [user])
    return {"adapter": name, "user": user, "shared": True}


def list_adapters(session: Session) -> list[dict[str, Any]]:
    """Adapters the caller may use (admins see all, with a ``usable`` flag)."""
    out = []
    for row in session.db.execute(f"SELECT {', '.join(_COLUMNS)} FROM adapters ORDER BY name"):
        info = _row_to_info(row)
        sources = info.get("source_doc_ids") or []
        usable = (
            session.role in ("admin", "member")
            and session.policy.row("adapter_keys", info["id"], session.user) is not None
            and (not sources or session.policy.may_read_sources(session.user, sources))
        )
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
            f"adapter {name!r} is tainted "
            f"({info['taint_reason'] or 'its training data included an erased document'});"
            " retrain it, or an admin runs `offline finetune override-taint NAME --reason TEXT`"
        )
    return info, key_wrap


def check_adapter_use(session: Session, name: str) -> dict[str, Any]:
    """Run every check :func:`open_adapter` runs, without decrypting or auditing: for a caller whose
    llama.cpp may already hold this adapter (by sha256). Such a caller then records the use with
    :func:`record_use` (or :func:`open_adapter` does, when it must decrypt after all)."""
    return _usable(session, name)[0]


def record_use(session: Session, info: dict[str, Any]) -> None:
    """Audit one use: a tainted adapter (served under an admin override) is a high-severity event."""
    if info["tainted_at"]:
        session.audit(
            "adapter.use_tainted",
            severity="high",
            adapter=info["name"],
            adapter_id=info["id"],
            taint_reason=info["taint_reason"],
            override_reason=info["override_reason"],
        )
    else:
        session.audit(
            "adapter.open", adapter=info["name"], adapter_id=info["id"], adapter_sha256=info["sha256"]
        )


def read_adapter_bytes(
    session: Session, name: str, *, allow_tainted: bool = False
) -> tuple[bytes, dict[str, Any]]:
    """Decrypt an adapter into memory after the access and taint checks; verifies its sha256."""
    info, _ = _usable(session, name, allow_tainted=allow_tainted)
    aid, file = info["id"], info["file"]
    path = adapter_path(session, info)
    key = _adapter_key(session, info)
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
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        del data
        yield path, info
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_adapter(session: Session, name: str) -> dict[str, Any]:
    """Delete an adapter (admin or its creator): the row with its key, then the ciphertext."""
    info = _owned(session, name, "finetune.rm", "removing")
    with session.change("finetune.rm", adapter=name, adapter_id=info["id"], adapter_sha256=info["sha256"]):
        session.db.execute("DELETE FROM adapter_keys WHERE adapter_id = ?", (info["id"],))
        session.db.execute("DELETE FROM adapters WHERE id = ?", (info["id"],))
    with contextlib.suppress(IntegrityError):  # a row naming another path deletes nothing but itself
        adapter_path(session, info).unlink(missing_ok=True)
    return {"name": name, "id": info["id"], "removed": True}


# -- lineage hooks for GDPR erasure -----------------------------------------------------------


def adapters_using_document(session: Session, collection_id: str, doc_id: int) -> list[str]:
    """Names of adapters whose lineage includes document ``doc_id`` of collection ``collection_id``."""
    out = []
    for name, src in session.db.execute(
        "SELECT name, source_doc_ids FROM adapters WHERE source_doc_ids IS NOT NULL"
    ):
        for s in json.loads(src):
            if s.get("collection_id") == collection_id and doc_id in s.get("doc_ids", []):
                out.append(name)
                break
    return out


def mark_tainted(session: Session, name: str, reason: str) -> None:
    """Record that ``name`` was trained on since-erased data (the GDPR erase flow calls this)."""
    if not reason.strip():
        raise UsageError("a taint needs a reason")
    with session.change("adapter.taint", severity="notice", adapter=name, reason=reason):
        cur = session.db.execute(
            "UPDATE adapters SET tainted_at = ?, taint_reason = ?, override_reason = NULL WHERE name = ?",
            (utc_now(), reason, name),
        )
        if cur.rowcount == 0:
            raise NotFound(f"no such adapter: {name!r}")


def override_taint(session: Session, name: str, reason: str) -> None:
    """Admin: allow a tainted adapter to be served anyway, with a recorded reason."""
    session.require_role("admin", action="overriding an adapter taint")
    if not reason.strip():
        raise UsageError("an override needs a reason")
    with session.change("adapter.taint_override", severity="high", adapter=name, reason=reason):
        cur = session.db.execute(
            "UPDATE adapters SET override_reason = ? WHERE name = ? AND tainted_at IS NOT NULL",
            (reason, name),
        )
        if cur.rowcount == 0:
            raise NotFound(f"no tainted adapter named {name!r}")
