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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .. import config
from ..errors import AccessDenied, AlreadyExists, NotFound, OfflineError, UsageError
from ..memwipe import wipe
from . import crypto, db
from .authz import Policy, read_image
from .emergency import code_purpose, disable, emergency_key, provisioned_users, reseal, user_purpose
from .keys import check_name, new_id, utc_now, vault_lock
from .session import Session, signed_wrap

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


def collection_row(session: Session, name: str) -> tuple[str, str] | None:
    """(id, file) of collection ``name`` as the signed policy has it."""
    found = session.policy.collection(name)
    return (found[0], found[1]["file"]) if found else None


def _denied(session: Session, name: str, why: str) -> AccessDenied:
    # One message whether or not the collection exists: existence is itself information.
    session.audit("access.denied", severity="warning", collection=name, reason=why)
    return AccessDenied(f"access denied: collection {name!r}")


def _holder_pubs(session: Session, collection_id: str) -> dict[str, bytes]:
    """Who gets the key at a rotation: the policy's holders, never whoever has a row in the table."""
    pol = session.policy
    return {u: pub for u in pol.key_holders(collection_id) if (pub := pol.wrap_pub(u)) is not None}


def unwrap_collection_key(session: Session, collection_id: str, file: str) -> bytes | None:
    """The collection key through the caller's own signed wrap (None: they hold none)."""
    wrapped = signed_wrap(session, "collection_keys", collection_id, session.user)
    if wrapped is None:
        return None
    return crypto.unwrap_with(
        session.keys.x25519,
        wrapped,
        collection_key_context(session.vault_id, collection_id, file, session.user),
    )


def _insert_wraps(
    session: Session, collection_id: str, file: str, key: bytes, pubs: dict[str, bytes]
) -> None:
    for user, pub in pubs.items():
        session.db.execute(
            "INSERT OR REPLACE INTO collection_keys(collection_id, user, wrapped) VALUES (?, ?, ?)",
            (
                collection_id,
                user,
                crypto.wrap_to(pub, key, collection_key_context(session.vault_id, collection_id, file, user)),
            ),
        )


def _admin_pubs(session: Session) -> dict[str, bytes]:
    pol = session.policy
    return {u: pub for u in pol.users("admin") if (pub := pol.wrap_pub(u)) is not None}


def create_collection(session: Session, name: str) -> dict[str, Any]:
    """Create a collection (admin). Its creator gets a write grant; every admin holds its key."""
    session.require_role("admin", action="creating collections")
    check_name("collection", name)
    if collection_row(session, name):
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
            with session.change("collection.create", collection=name, collection_id=cid):
                if collection_row(session, name):
                    raise AlreadyExists(f"collection {name!r} already exists")
                session.db.execute(
                    "INSERT INTO collections(id, name, file, created_at, created_by) VALUES (?, ?, ?, ?, ?)",
                    (cid, name, file, utc_now(), session.user),
                )
                _insert_wraps(session, cid, file, key, _admin_pubs(session))
                session.db.execute(
                    "INSERT INTO grants(collection_id, user, perm, labels, granted_by, granted_at)"
                    " VALUES (?, ?, 'write', NULL, ?, ?)",
                    (cid, session.user, session.user, utc_now()),
                )
        except BaseException:
            remove_db_files(path)
            raise
    return {"name": name, "id": cid}


def _labels(text: str | None) -> list[str] | None:
    return json.loads(text) if text else None


def list_collections(session: Session) -> list[dict[str, Any]]:
    """Collections the caller may see (admins all, others those granted to them), from the policy."""
    pol = session.policy
    mine = pol.grants_of(session.user)
    out = []
    for key, row in sorted(pol.image["collections"].items(), key=lambda kv: kv[1]["name"]):
        cid = json.loads(key)[0]
        g = mine.get(cid)
        if session.role != "admin" and (g is None or session.role == "auditor"):
            continue
        item = {
            "name": row["name"],
            "id": cid,
            "created_at": row["created_at"],
            "created_by": row["created_by"],
            "access": g["perm"] if g else "none",
            "labels": _labels(g["labels"]) if g else None,
            "retention_days": row["retention_days"],
            "break_glass": bool(row["break_glass"]),
        }
        if session.role == "admin":
            item["grants"] = list_grants(session, row["name"])
            item["key_holders"] = key_holders(session, row["name"])
        out.append(item)
    return out


def list_grants(session: Session, name: str | None = None) -> list[dict[str, Any]]:
    """Grants as the signed policy holds them (admins: every grant; others: their own)."""
    pol = session.policy
    out = []
    for key, g in pol.image["grants"].items():
        cid, user = json.loads(key)
        crow = pol.row("collections", cid)
        if crow is None or pol.user(user) is None or (name is not None and crow["name"] != name):
            continue
        if session.role != "admin" and user != session.user:
            continue
        out.append(
            {
                "collection": crow["name"],
                "user": user,
                "perm": g["perm"],
                "labels": _labels(g["labels"]),
                "granted_by": g["granted_by"],
                "granted_at": g["granted_at"],
            }
        )
    return sorted(out, key=lambda g: (g["collection"], g["user"]))


def key_holders(session: Session, name: str) -> list[dict[str, str]]:
    """Everyone who holds a wrap of the collection's key, and why (admin): grant, custodian, break-glass."""
    session.require_role("admin", action="listing key holders")
    row = collection_row(session, name)
    if row is None:
        raise NotFound(f"no such collection: {name!r}")
    cid = row[0]
    pol = session.policy
    out = []
    for key in pol.image["collection_keys"]:
        c, user = json.loads(key)
        if c == cid:
            why = (
                "grant"
                if pol.grant(cid, user)
                else ("custodian" if pol.role(user) == "admin" else "unexplained")
            )
            out.append({"user": user, "holds": "collection key", "why": why})
    for user in provisioned_users(session, cid):
        out.append(
            {"user": user, "holds": "break-glass wrap (needs the emergency code)", "why": "break-glass"}
        )
    return sorted(out, key=lambda d: (d["user"], d["holds"]))


def readable_collections(session: Session) -> list[str]:
    """Names of the collections the caller holds a read or write grant on (signed policy)."""
    if session.role not in ("admin", "member"):
        return []
    pol = session.policy
    names = [
        pol.row("collections", cid)["name"]
        for cid in pol.grants_of(session.user)
        if pol.row("collections", cid) is not None
    ]
    return sorted(names)


def open_collection(
    session: Session,
    name: str,
    need: Perm = "read",
    *,
    break_glass_reason: str | None = None,
    break_glass_code: str | Callable[[], str | None] | None = None,
) -> CollectionHandle:
    """Open a collection for reading or writing, enforcing the caller's signed grant (fail closed).

    ``break_glass_reason`` (with the emergency code) lets a provisioned member read without a
    grant, with a high-severity audit entry committed before the key is used.
    """
    cached = session.cached_handle(name)
    if cached is not None and (need == "read" or cached.perm == "write"):
        return cached
    if session.role not in ("admin", "member"):
        raise _denied(
            session, name, "auditors never read documents" if session.role == "auditor" else "not enrolled"
        )
    found = session.policy.collection(name)
    if found is None:
        raise _denied(session, name, "no grant")
    cid, crow = found
    file = crow["file"]
    g = session.policy.grant(cid, session.user)
    perm, labels = (g["perm"], g["labels"]) if g else (None, None)
    key = None
    if perm is None and break_glass_reason is not None and need == "read":
        key = _break_glass_key(
            session, name, cid, file, bool(crow["break_glass"]), break_glass_reason, break_glass_code
        )
        perm, labels = "read", None
    elif perm is None or (need == "write" and perm != "write"):
        raise _denied(session, name, "no grant" if perm is None else "read-only grant")
    else:
        key = unwrap_collection_key(session, cid, file)
    if key is None:
        raise _denied(session, name, "no key")
    path = session.vault_dir / "collections" / file
    try:
        conn = db.connect(path, key, "collection")
    finally:
        wipe(key)  # SQLCipher holds its own copy (wiped when the connection closes)
    handle = CollectionHandle(cid, name, perm, frozenset(json.loads(labels)) if labels else None, conn, path)
    session.keep_handle(name, handle)
    return handle


def _break_glass_key(
    session: Session,
    name: str,
    cid: str,
    file: str,
    allowed: bool,
    reason: str,
    code: str | Callable[[], str | None] | None,
) -> bytes:
    if not reason.strip():
        raise UsageError("break-glass needs a reason")
    if not allowed or session.setting("break_glass") != "on":
        raise _denied(session, name, "break-glass disabled")
    if session.policy.row("vault_keys", user_purpose(cid), session.user) is None:
        raise _denied(session, name, "no break-glass key provisioned")
    if callable(code):
        code = code()  # asked only once the emergency path is open to this user
    try:
        key = emergency_key(session, cid, file, code)
    except AccessDenied as exc:
        raise _denied(session, name, str(exc).removeprefix("access denied: ")) from None
    # Committed before the key opens anything: no emergency read through the kit goes unlogged.
    session.audit("break_glass.read", severity="high", collection=name, reason=reason)
    return key


def grant(
    session: Session, name: str, user: str, perm: Perm, labels: list[str] | None = None
) -> dict[str, Any]:
    """Grant ``user`` read or write on ``name`` (admin): wraps the collection key to them."""
    session.require_role("admin", action="granting access")
    if perm not in ("read", "write"):
        raise UsageError("permission must be read or write")
    clean_labels = sorted({check_name("label", lb) for lb in labels}) if labels else None
    with session.change("grant.add", collection=name, user=user, perm=perm, labels=clean_labels) as extra:
        row = collection_row(session, name)
        if row is None:
            raise NotFound(f"no such collection: {name!r}")
        cid, file = row
        target = session.policy.user(user)
        if target is None:
            raise NotFound(f"no such user: {user!r}")
        if target["role"] == "auditor":
            raise UsageError(f"{user!r} is an auditor: auditors read the audit log, never documents")
        key = unwrap_collection_key(session, cid, file)
        if key is None:
            raise AccessDenied(f"access denied: you hold no key for collection {name!r}")
        pub = session.policy.wrap_pub(user)
        if pub is None:
            raise UsageError(f"{user!r} must open the vault once with this version to confirm their keys")
        _insert_wraps(session, cid, file, key, {user: pub})
        session.db.execute(
            "INSERT OR REPLACE INTO grants(collection_id, user, perm, labels, granted_by, granted_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (cid, user, perm, json.dumps(clean_labels) if clean_labels else None, session.user, utc_now()),
        )
        extra["adapter_keys_removed"] = _drop_uncovered_adapter_wraps(session, user)
    return {"collection": name, "user": user, "perm": perm, "labels": clean_labels}


def revoke(session: Session, name: str, user: str) -> dict[str, Any]:
    """Remove ``user``'s grant and key on ``name``, then rotate the collection key (admin).

    Whether ``user`` stays a key custodian is decided by the signed policy, never by their users row;
    adapter keys they held only through this grant go too.
    """
    session.require_role("admin", action="revoking access")
    with session.change("grant.revoke", collection=name, user=user) as extra:
        row = collection_row(session, name)
        if row is None:
            raise NotFound(f"no such collection: {name!r}")
        cid, _ = row
        if session.policy.row("grants", cid, user) is None:
            raise NotFound(f"{user!r} has no grant on {name!r}")
        session.db.execute("DELETE FROM grants WHERE collection_id = ? AND user = ?", (cid, user))
        if session.policy.role(user) != "admin":  # admins stay custodians; their read right was the grant
            session.db.execute(
                "DELETE FROM collection_keys WHERE collection_id = ? AND user = ?", (cid, user)
            )
        extra["adapter_keys_removed"] = _drop_adapter_wraps(session, user, cid)
    rotate_collection_key(session, name, reason=f"revoked {user}")
    return {"collection": name, "user": user, "revoked": True, "key_rotated": True}


def _drop_uncovered_adapter_wraps(session: Session, user: str) -> list[str]:
    """Inside a change that narrows ``user``'s grants: drop wraps of adapters they may no longer read.

    Judged on the tables as this change leaves them (a grant narrowed to other labels counts).
    """
    after = Policy(read_image(session.db), started=True)
    dropped = []
    for aid, name, src in session.db.execute(
        "SELECT a.id, a.name, a.source_doc_ids FROM adapters a JOIN adapter_keys k ON k.adapter_id = a.id"
        " WHERE k.user = ?",
        (user,),
    ).fetchall():
        sources = json.loads(src or "[]")
        if sources and not after.may_read_sources(user, sources):
            session.db.execute("DELETE FROM adapter_keys WHERE adapter_id = ? AND user = ?", (aid, user))
            dropped.append(name)
    return dropped


def _drop_adapter_wraps(session: Session, user: str, collection_id: str) -> list[str]:
    """Inside a change: delete ``user``'s wraps of adapters trained on ``collection_id``."""
    dropped = []
    for aid, name, src in session.db.execute(
        "SELECT a.id, a.name, a.source_doc_ids FROM adapters a JOIN adapter_keys k ON k.adapter_id = a.id"
        " WHERE k.user = ?",
        (user,),
    ).fetchall():
        if any(s.get("collection_id") == collection_id for s in json.loads(src or "[]")):
            session.db.execute("DELETE FROM adapter_keys WHERE adapter_id = ? AND user = ?", (aid, user))
            dropped.append(name)
    return dropped


def rotate_collection_key(session: Session, name: str, *, reason: str) -> None:
    """Copy the collection under a new random key, wrap it to the policy's holders, switch atomically.

    The copy is made with SQLCipher's online backup and re-keyed with ``PRAGMA rekey`` before the
    catalog points at it, so a crash at any point leaves the old file and key, or the new ones.
    The new key is wrapped only to principals the signed policy names (every admin and every
    grantee): a planted ``collection_keys`` row gets nothing, and is refused on open anyway.
    """
    row = collection_row(session, name)
    if row is None:
        raise NotFound(f"no such collection: {name!r}")
    cid, old_file = row
    old_key = unwrap_collection_key(session, cid, old_file)
    if old_key is None:
        raise AccessDenied(f"access denied: you hold no key for collection {name!r}")
    session.drop_handle(name)
    coll_dir = session.vault_dir / "collections"
    new_file = f"{cid}-{new_id()[:8]}.db"
    new_key = crypto.random_key()
    with vault_lock(session.vault_dir), db.write_locked(coll_dir / old_file, old_key, "collection"):
        copy_encrypted(coll_dir / old_file, old_key, coll_dir / new_file, new_key, "collection")
        try:
            with session.change("collection.rekey", collection=name, reason=reason) as extra:
                if collection_row(session, name) != (cid, old_file):
                    raise OfflineError(f"collection {name!r} changed while it was being re-keyed; try again")
                pubs = _holder_pubs(session, cid)
                session.db.execute("UPDATE collections SET file = ? WHERE id = ?", (new_file, cid))
                session.db.execute("DELETE FROM collection_keys WHERE collection_id = ?", (cid,))
                _insert_wraps(session, cid, new_file, new_key, pubs)
                reseal(session, cid, new_file, new_key)
                extra["holders"] = sorted(pubs)
        except BaseException:
            remove_db_files(coll_dir / new_file)
            raise
        remove_db_files(coll_dir / old_file)


def copy_encrypted(src: Path, src_key: bytes, dst: Path, dst_key: bytes | None, kind: str) -> None:
    """A consistent copy of an encrypted database (online backup), re-keyed if ``dst_key`` is given."""
    src_conn = db.connect(src, src_key, kind, migrate=False)  # type: ignore[arg-type]
    try:
        db.check_schema(src_conn, kind, src.name)  # type: ignore[arg-type]  (never copy a planted trigger)
    except BaseException:
        src_conn.close()
        raise
    tmp = dst.with_name(dst.name + ".tmp")
    remove_db_files(tmp)
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
        remove_db_files(tmp)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_db_files(path: Path) -> None:
    """Delete a database file and its SQLite side files (journal, WAL, shared memory), if present."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


def drop_collection(session: Session, name: str) -> dict[str, Any]:
    """Delete a collection, its keys and its file (admin)."""
    session.require_role("admin", action="dropping collections")
    with session.change("collection.drop", collection=name) as extra:
        row = collection_row(session, name)
        if row is None:
            raise NotFound(f"no such collection: {name!r}")
        cid, file = row
        extra["collection_id"] = cid
        session.drop_handle(name)
        session.db.execute("DELETE FROM collection_keys WHERE collection_id = ?", (cid,))
        session.db.execute("DELETE FROM grants WHERE collection_id = ?", (cid,))
        session.db.execute(
            "DELETE FROM vault_keys WHERE purpose IN (?, ?)", (user_purpose(cid), code_purpose(cid))
        )
        session.db.execute("DELETE FROM collections WHERE id = ?", (cid,))
    remove_db_files(session.vault_dir / "collections" / file)
    return {"name": name, "dropped": True}


def wrap_all_collection_keys_for(session: Session, user: str, x25519_pub: bytes) -> None:
    """Give a new admin a custodian wrap of every collection key the acting admin holds."""
    for key, row in session.policy.image["collections"].items():
        cid = json.loads(key)[0]
        ckey = unwrap_collection_key(session, cid, row["file"])
        if ckey is not None:
            _insert_wraps(session, cid, row["file"], ckey, {user: x25519_pub})


def collection_key_for_admin(session: Session, name: str) -> tuple[str, str, bytes]:
    """(id, file, key) for an admin custodian: used by backup, rekey and break-glass provisioning."""
    session.require_role("admin", action="handling collection keys")
    row = collection_row(session, name)
    if row is None:
        raise NotFound(f"no such collection: {name!r}")
    key = unwrap_collection_key(session, *row)
    if key is None:
        raise AccessDenied(f"access denied: you hold no key for collection {name!r}")
    return row[0], row[1], key


def disable_everywhere(session: Session) -> list[str]:
    """Vault-wide off: every collection's emergency wraps and blob go, and its key rotates (admin)."""
    done = []
    for key, row in sorted(session.policy.image["collections"].items()):
        if not row.get("break_glass") and not row.get("emergency"):
            continue
        cid = json.loads(key)[0]
        with session.change(
            "break_glass.disable", severity="notice", collection=row["name"], vault_wide=True
        ) as extra:
            extra["wraps_removed"] = disable(session, cid)
        rotate_collection_key(session, row["name"], reason="break-glass disabled vault-wide")
        done.append(row["name"])
    return done
