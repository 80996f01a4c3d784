"""Collections: one SQLCipher database each, with its own random key wrapped per user.

A grant is a key: the collection key is wrapped to the grantee's X25519 public key, so a member
without a grant cannot decrypt the file even with raw SQL tools. Admins are key custodians (they
hold a wrap so they can grant) but, like everyone else, read only through a grant. Revoking deletes
the wrap and rotates the key, so a copied old key stops opening the current file.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .. import config
from ..errors import AccessDenied, AlreadyExists, NotFound, UsageError
from . import crypto, db
from .core import Session, check_name, new_id, utc_now, vault_lock

Perm = Literal["read", "write"]


def collection_key_context(vault_id: str, collection_id: str, file: str, user: str) -> str:
    return f"collection-key|{vault_id}|{collection_id}|{file}|{user}"


@dataclass
class CollectionHandle:
    """An open collection the caller may use, with the limits of their grant."""

    id: str
    name: str
    perm: Perm
    labels: frozenset[str] | None  # None: every label
    conn: db.Connection
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)

    def label_allowed(self, label: str) -> bool:
        return self.labels is None or label in self.labels

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


def _row(session: Session, name: str) -> tuple[str, str] | None:
    r = session.db.execute("SELECT id, file FROM collections WHERE name = ?", (name,)).fetchone()
    return (r[0], r[1]) if r else None


def _denied(session: Session, name: str, why: str) -> AccessDenied:
    # One message whether or not the collection exists: existence is itself information.
    session.audit("access.denied", severity="warning", collection=name, reason=why)
    return AccessDenied(f"access denied: collection {name!r}")


def _holder_pubs(session: Session, collection_id: str) -> dict[str, bytes]:
    rows = session.db.execute(
        "SELECT k.user, u.x25519_pub FROM collection_keys k JOIN users u ON u.name = k.user"
        " WHERE k.collection_id = ? AND u.removed_at IS NULL", (collection_id,)).fetchall()
    return {u: bytes.fromhex(p) for u, p in rows}


def _unwrap_key(session: Session, collection_id: str, file: str) -> bytes | None:
    row = session.db.execute("SELECT wrapped FROM collection_keys WHERE collection_id = ? AND user = ?",
                             (collection_id, session.user)).fetchone()
    if row is None:
        return None
    return crypto.unwrap_with(session.keys.x25519, row[0],
                              collection_key_context(session.vault_id, collection_id, file, session.user))


def _insert_wraps(session: Session, collection_id: str, file: str, key: bytes, pubs: dict[str, bytes]) -> None:
    for user, pub in pubs.items():
        session.db.execute(
            "INSERT OR REPLACE INTO collection_keys(collection_id, user, wrapped) VALUES (?, ?, ?)",
            (collection_id, user,
             crypto.wrap_to(pub, key, collection_key_context(session.vault_id, collection_id, file, user))))


def _admin_pubs(session: Session) -> dict[str, bytes]:
    rows = session.db.execute(
        "SELECT name, x25519_pub FROM users WHERE role = 'admin' AND removed_at IS NULL").fetchall()
    return {u: bytes.fromhex(p) for u, p in rows}


def create_collection(session: Session, name: str) -> dict[str, Any]:
    """Create a collection (admin). Its creator gets a write grant; every admin holds its key."""
    session.require_role("admin", action="creating collections")
    check_name("collection", name)
    if _row(session, name):
        raise AlreadyExists(f"collection {name!r} already exists")
    cid = new_id()
    file = f"{cid}-{new_id()[:8]}.db"
    key = crypto.random_key()
    path = config.ensure_private_dir(session.vault_dir / "collections") / file
    # Under the vault lock, so orphan clean-up in another process never sees the file before its row.
    with vault_lock(session.vault_dir):
        conn = db.connect(path, key, "collection", create=True)
        conn.close()
        try:
            with db.transaction(session.db):
                session.db.execute(
                    "INSERT INTO collections(id, name, file, created_at, created_by) VALUES (?, ?, ?, ?, ?)",
                    (cid, name, file, utc_now(), session.user))
                _insert_wraps(session, cid, file, key, _admin_pubs(session))
                session.db.execute(
                    "INSERT INTO grants(collection_id, user, perm, labels, granted_by, granted_at)"
                    " VALUES (?, ?, 'write', NULL, ?, ?)", (cid, session.user, session.user, utc_now()))
        except BaseException:
            _remove_db_files(path)
            raise
    session.audit("collection.create", collection=name, collection_id=cid)
    return {"name": name, "id": cid}


def list_collections(session: Session) -> list[dict[str, Any]]:
    """Collections the caller may see: admins all, others only those granted to them."""
    rows = session.db.execute(
        "SELECT c.id, c.name, c.created_at, c.created_by, c.retention_days, c.break_glass,"
        " g.perm, g.labels FROM collections c"
        " LEFT JOIN grants g ON g.collection_id = c.id AND g.user = ? ORDER BY c.name",
        (session.user,)).fetchall()
    out = []
    for cid, name, created, by, retention, bg, perm, labels in rows:
        if session.role != "admin" and perm is None:
            continue
        item = {"name": name, "id": cid, "created_at": created, "created_by": by,
                "access": perm or "none", "labels": json.loads(labels) if labels else None,
                "retention_days": retention, "break_glass": bool(bg)}
        if session.role == "admin":
            item["grants"] = [
                {"user": u, "perm": p, "labels": json.loads(lb) if lb else None}
                for u, p, lb in session.db.execute(
                    "SELECT user, perm, labels FROM grants WHERE collection_id = ? ORDER BY user", (cid,))]
        out.append(item)
    return out


def readable_collections(session: Session) -> list[str]:
    """Names of the collections the caller holds a read or write grant on."""
    if session.role == "auditor":
        return []
    return [r[0] for r in session.db.execute(
        "SELECT c.name FROM collections c JOIN grants g ON g.collection_id = c.id WHERE g.user = ?"
        " ORDER BY c.name", (session.user,))]


def open_collection(session: Session, name: str, need: Perm = "read", *,
                    break_glass_reason: str | None = None) -> CollectionHandle:
    """Open a collection for reading or writing, enforcing the caller's grant (fail closed).

    ``break_glass_reason`` lets an enrolled member read without a grant, once, with a high-severity
    audit entry; admins can disable it per collection.
    """
    cached = session._collections.get(name)
    if cached is not None and (need == "read" or cached.perm == "write"):
        return cached
    if session.role == "auditor":
        raise _denied(session, name, "auditors never read documents")
    row = session.db.execute(
        "SELECT c.id, c.file, g.perm, g.labels, c.break_glass FROM collections c"
        " LEFT JOIN grants g ON g.collection_id = c.id AND g.user = ? WHERE c.name = ?",
        (session.user, name)).fetchone()
    if row is None:
        raise _denied(session, name, "no grant")
    cid, file, perm, labels, break_glass = row
    key = None
    if perm is None and break_glass_reason is not None and need == "read":
        key = _break_glass_key(session, name, cid, file, bool(break_glass), break_glass_reason)
        perm, labels = "read", None
    elif perm is None or (need == "write" and perm != "write"):
        raise _denied(session, name, "no grant" if perm is None else "read-only grant")
    else:
        key = _unwrap_key(session, cid, file)
    if key is None:
        raise _denied(session, name, "no key")
    path = session.vault_dir / "collections" / file
    conn = db.connect(path, key, "collection")
    handle = CollectionHandle(cid, name, perm, frozenset(json.loads(labels)) if labels else None, conn, path)
    session._collections[name] = handle
    return handle


def _break_glass_key(session: Session, name: str, cid: str, file: str, allowed: bool, reason: str) -> bytes:
    if not reason.strip():
        raise UsageError("break-glass needs a reason")
    if not allowed or session.setting("break_glass") != "on":
        raise _denied(session, name, "break-glass disabled")
    # The member holds no wrap for this collection; an emergency read is served with a custodian's
    # key only when an admin pre-authorised break-glass by leaving a wrap in vault_keys.
    row = session.db.execute("SELECT wrapped FROM vault_keys WHERE purpose = ? AND user = ?",
                             (f"break-glass:{cid}", session.user)).fetchone()
    if row is None:
        raise _denied(session, name, "no break-glass key provisioned")
    key = crypto.unwrap_with(session.keys.x25519, row[0],
                             collection_key_context(session.vault_id, cid, file, session.user))
    session.audit("break_glass.read", severity="high", collection=name, reason=reason)
    return key


def grant(session: Session, name: str, user: str, perm: Perm, labels: list[str] | None = None) -> dict[str, Any]:
    """Grant ``user`` read or write on ``name`` (admin): wraps the collection key to them."""
    session.require_role("admin", action="granting access")
    if perm not in ("read", "write"):
        raise UsageError("permission must be read or write")
    row = _row(session, name)
    if row is None:
        raise NotFound(f"no such collection: {name!r}")
    cid, file = row
    target = session.db.execute("SELECT role, x25519_pub FROM users WHERE name = ? AND removed_at IS NULL",
                                (user,)).fetchone()
    if target is None:
        raise NotFound(f"no such user: {user!r}")
    if target[0] == "auditor":
        raise UsageError(f"{user!r} is an auditor: auditors read the audit log, never documents")
    key = _unwrap_key(session, cid, file)
    if key is None:
        raise AccessDenied(f"access denied: you hold no key for collection {name!r}")
    clean_labels = sorted({check_name("label", lb) for lb in labels}) if labels else None
    with db.transaction(session.db):
        _insert_wraps(session, cid, file, key, {user: bytes.fromhex(target[1])})
        session.db.execute(
            "INSERT OR REPLACE INTO grants(collection_id, user, perm, labels, granted_by, granted_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (cid, user, perm, json.dumps(clean_labels) if clean_labels else None, session.user, utc_now()))
    session.audit("grant.add", collection=name, user=user, perm=perm, labels=clean_labels)
    return {"collection": name, "user": user, "perm": perm, "labels": clean_labels}


def revoke(session: Session, name: str, user: str) -> dict[str, Any]:
    """Remove ``user``'s grant and key on ``name``, then rotate the collection key (admin)."""
    session.require_role("admin", action="revoking access")
    row = _row(session, name)
    if row is None:
        raise NotFound(f"no such collection: {name!r}")
    cid, _ = row
    had = session.db.execute("SELECT 1 FROM grants WHERE collection_id = ? AND user = ?", (cid, user)).fetchone()
    if had is None:
        raise NotFound(f"{user!r} has no grant on {name!r}")
    is_admin = session.db.execute("SELECT role FROM users WHERE name = ?", (user,)).fetchone()[0] == "admin"
    with db.transaction(session.db):
        session.db.execute("DELETE FROM grants WHERE collection_id = ? AND user = ?", (cid, user))
        if not is_admin:  # admins stay key custodians; their read right is the grant just removed
            session.db.execute("DELETE FROM collection_keys WHERE collection_id = ? AND user = ?", (cid, user))
            session.db.execute("DELETE FROM vault_keys WHERE purpose = ? AND user = ?", (f"break-glass:{cid}", user))
    session.audit("grant.revoke", collection=name, user=user)
    rotate_collection_key(session, name, reason=f"revoked {user}")
    return {"collection": name, "user": user, "revoked": True, "key_rotated": True}


def rotate_collection_key(session: Session, name: str, *, reason: str) -> None:
    """Copy the collection under a new random key, re-wrap it for its holders, switch atomically.

    The copy is made with SQLCipher's online backup and re-keyed with ``PRAGMA rekey`` before the
    catalog points at it, so a crash at any point leaves the old file and key, or the new ones.
    """
    row = _row(session, name)
    if row is None:
        raise NotFound(f"no such collection: {name!r}")
    cid, old_file = row
    old_key = _unwrap_key(session, cid, old_file)
    if old_key is None:
        raise AccessDenied(f"access denied: you hold no key for collection {name!r}")
    cached = session._collections.pop(name, None)
    if cached is not None:
        cached.close()
    coll_dir = session.vault_dir / "collections"
    new_file = f"{cid}-{new_id()[:8]}.db"
    new_key = crypto.random_key()
    with vault_lock(session.vault_dir):
        copy_encrypted(coll_dir / old_file, old_key, coll_dir / new_file, new_key, "collection")
        pubs = _holder_pubs(session, cid)
        bg_users = [r[0] for r in session.db.execute(
            "SELECT user FROM vault_keys WHERE purpose = ?", (f"break-glass:{cid}",))]
        try:
            with db.transaction(session.db):
                session.db.execute("UPDATE collections SET file = ? WHERE id = ?", (new_file, cid))
                session.db.execute("DELETE FROM collection_keys WHERE collection_id = ?", (cid,))
                _insert_wraps(session, cid, new_file, new_key, pubs)
                for u in bg_users:
                    pub = session.db.execute("SELECT x25519_pub FROM users WHERE name = ?", (u,)).fetchone()
                    session.db.execute(
                        "UPDATE vault_keys SET wrapped = ? WHERE purpose = ? AND user = ?",
                        (crypto.wrap_to(bytes.fromhex(pub[0]), new_key,
                                        collection_key_context(session.vault_id, cid, new_file, u)),
                         f"break-glass:{cid}", u))
        except BaseException:
            _remove_db_files(coll_dir / new_file)
            raise
        _remove_db_files(coll_dir / old_file)
    session.audit("collection.rekey", collection=name, reason=reason)


def copy_encrypted(src: Path, src_key: bytes, dst: Path, dst_key: bytes | None, kind: str) -> None:
    """A consistent copy of an encrypted database (online backup), re-keyed if ``dst_key`` is given."""
    src_conn = db.connect(src, src_key, kind, migrate=False)  # type: ignore[arg-type]
    tmp = dst.with_name(dst.name + ".tmp")
    _remove_db_files(tmp)
    try:
        dst_conn = db.connect(tmp, src_key, kind, create=True, migrate=False)  # type: ignore[arg-type]
        try:
            src_conn.backup(dst_conn)
            dst_conn.execute("PRAGMA journal_mode = DELETE").fetchone()
            if dst_key is not None:
                dst_conn.execute(f"PRAGMA rekey = \"x'{dst_key.hex()}'\"")
        finally:
            dst_conn.close()
        os.replace(tmp, dst)
        _fsync_dir(dst.parent)
    finally:
        src_conn.close()
        _remove_db_files(tmp)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_db_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


def drop_collection(session: Session, name: str) -> dict[str, Any]:
    """Delete a collection, its keys and its file (admin)."""
    session.require_role("admin", action="dropping collections")
    row = _row(session, name)
    if row is None:
        raise NotFound(f"no such collection: {name!r}")
    cid, file = row
    cached = session._collections.pop(name, None)
    if cached is not None:
        cached.close()
    with db.transaction(session.db):
        session.db.execute("DELETE FROM collection_keys WHERE collection_id = ?", (cid,))
        session.db.execute("DELETE FROM grants WHERE collection_id = ?", (cid,))
        session.db.execute("DELETE FROM vault_keys WHERE purpose = ?", (f"break-glass:{cid}",))
        session.db.execute("DELETE FROM collections WHERE id = ?", (cid,))
    _remove_db_files(session.vault_dir / "collections" / file)
    session.audit("collection.drop", collection=name, collection_id=cid)
    return {"name": name, "dropped": True}


def wrap_all_collection_keys_for(session: Session, user: str, x25519_pub: bytes) -> None:
    """Give a new admin a custodian wrap of every collection key the acting admin holds."""
    for cid, file in session.db.execute("SELECT id, file FROM collections").fetchall():
        key = _unwrap_key(session, cid, file)
        if key is not None:
            _insert_wraps(session, cid, file, key, {user: x25519_pub})


def collection_key_for_admin(session: Session, name: str) -> tuple[str, str, bytes]:
    """(id, file, key) for an admin custodian: used by backup, rekey and break-glass provisioning."""
    session.require_role("admin", action="handling collection keys")
    row = _row(session, name)
    if row is None:
        raise NotFound(f"no such collection: {name!r}")
    key = _unwrap_key(session, *row)
    if key is None:
        raise AccessDenied(f"access denied: you hold no key for collection {name!r}")
    return row[0], row[1], key
