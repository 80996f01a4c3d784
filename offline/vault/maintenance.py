"""Vault-wide maintenance: integrity check, online backup, full re-key.

Re-keying never modifies a live file in place. Every database is copied with SQLCipher's online
backup and re-keyed with ``PRAGMA rekey`` under a new file name; the new vault database points at
the new collection files; only then is ``header.json`` replaced atomically. A crash before that
rename leaves the old header, old files and old keys; after it, the new ones. Files that no header
references are removed the next time the vault is opened with nobody else holding the lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import OfflineError, UsageError, VaultCorrupted
from . import crypto, db, trust
from . import header as hdr
from .collections import (
    collection_key_context,
    collection_key_for_admin,
    collection_row,
    copy_encrypted,
    remove_db_files,
    unwrap_collection_key,
)
from .emergency import reseal
from .keys import SEAL_PURPOSE, new_id, vault_key_context, vault_lock
from .session import Session, share_seal_key


def check_vault(session: Session) -> dict[str, Any]:
    """Run SQLCipher's HMAC check and SQLite's integrity check on every database; raise on damage.

    Admins check every collection (they hold every key as custodians); others check the vault
    database and the collections they can open.
    """
    files = []
    problems = db.integrity_check(session.db)
    if problems:
        raise VaultCorrupted(f"{session.header.db_file}: {problems[0]}")
    files.append(session.header.db_file)
    for _cid, name, file in session.db.execute(
        "SELECT id, name, file FROM collections ORDER BY name"
    ).fetchall():
        key = _key_or_none(session, name)
        if key is None:
            continue
        path = session.vault_dir / "collections" / file
        conn = db.connect(path, key, "collection", migrate=False)
        try:
            bad = db.integrity_check(conn)
        finally:
            conn.close()
        if bad:
            raise VaultCorrupted(f"collections/{file} ({name}): {bad[0]}")
        files.append(f"collections/{file}")
    session.audit("vault.check", files=len(files), ok=True)
    return {"ok": True, "files": files}


def _key_or_none(session: Session, name: str) -> bytes | None:
    row = collection_row(session, name)
    return unwrap_collection_key(session, *row) if row else None


def backup_vault(session: Session, dest: Path) -> dict[str, Any]:
    """Write a complete, still-encrypted, consistent vault folder to ``dest`` (admin).

    Uses SQLCipher's online backup, so it is safe while other processes read and write. The result
    is itself a vault: restore by copying it back into place (or open it directly with ``--vault``).
    """
    session.require_role("admin", action="backing up the vault")
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UsageError(f"backup destination {dest} must be a new or empty folder")
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("", "collections", "adapters", trust.CLIENTS_DIR):
        (tmp / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    count = 0
    try:
        # The lock keeps key rotations out so catalog and collection files match.
        with vault_lock(session.vault_dir):
            h = hdr.load(session.vault_dir)
            # Client states before the databases: each then names a head the copied chain holds.
            for f in (session.vault_dir / trust.CLIENTS_DIR).glob("*.state"):
                shutil.copy2(f, tmp / trust.CLIENTS_DIR / f.name)
            shutil.copy2(session.vault_dir / hdr.HEADER, tmp / hdr.HEADER)
            os.chmod(tmp / hdr.HEADER, 0o600)
            copy_encrypted(session.vault_dir / h.db_file, session.vault_key, tmp / h.db_file, None, "vault")
            count += 2
            for name, file in [(r["name"], r["file"]) for r in session.policy.image["collections"].values()]:
                _, _, key = collection_key_for_admin(session, name)
                copy_encrypted(
                    session.vault_dir / "collections" / file,
                    key,
                    tmp / "collections" / file,
                    None,
                    "collection",
                )
                count += 1
            for f in (session.vault_dir / "adapters").glob("*"):
                if f.is_file():
                    shutil.copy2(f, tmp / "adapters" / f.name)
                    os.chmod(tmp / "adapters" / f.name, 0o600)
                    count += 1
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    session.audit("vault.backup", dest=str(dest.resolve()), files=count)
    return {"dest": str(dest), "files": count}


def rekey_vault(session: Session) -> dict[str, Any]:
    """Rotate the vault database key and every collection key; re-wrap every keyslot (admin).

    Collections first: each is copied under a new key, then one signed ``vault.rekey`` change points
    the catalog at the copies and wraps the new keys to the policy's holders only. Then the vault
    database itself moves to a new key (:func:`rotate_vault_db_key`).
    """
    session.require_role("admin", action="re-keying the vault")
    vault_dir = session.vault_dir
    coll_dir = vault_dir / "collections"
    with vault_lock(vault_dir), contextlib.ExitStack() as locks:
        rows = [
            (cid, r["name"], r["file"])
            for cid, r in ((json.loads(k)[0], r) for k, r in session.policy.image["collections"].items())
        ]
        new_files: list[Path] = []
        try:
            plan = []
            for cid, name, file in rows:
                _, _, old_key = collection_key_for_admin(session, name)
                # No write may commit to the old file between its copy and its retirement.
                locks.enter_context(db.write_locked(coll_dir / file, old_key, "collection"))
                new_key, new_file = crypto.random_key(), f"{cid}-{new_id()[:8]}.db"
                copy_encrypted(coll_dir / file, old_key, coll_dir / new_file, new_key, "collection")
                new_files.append(coll_dir / new_file)
                plan.append((cid, file, new_file, new_key))
            session.forget_handles()
            with session.change("vault.rekey", collections=len(rows)):
                for cid, old_file, new_file, key in plan:
                    if session.policy.row("collections", cid)["file"] != old_file:
                        raise OfflineError(
                            "a collection changed while the vault was being re-keyed; try again"
                        )
                    holders = session.policy.key_holders(cid)
                    session.db.execute("UPDATE collections SET file = ? WHERE id = ?", (new_file, cid))
                    session.db.execute("DELETE FROM collection_keys WHERE collection_id = ?", (cid,))
                    for user in holders:
                        pub = session.policy.wrap_pub(user)
                        if pub is None:
                            continue
                        session.db.execute(
                            "INSERT INTO collection_keys(collection_id, user, wrapped) VALUES (?, ?, ?)",
                            (
                                cid,
                                user,
                                crypto.wrap_to(
                                    pub, key, collection_key_context(session.vault_id, cid, new_file, user)
                                ),
                            ),
                        )
                    reseal(session, cid, new_file, key)
        except BaseException:
            for f in new_files:
                remove_db_files(f)
            raise
        for _, old_file, _, _ in plan:
            remove_db_files(coll_dir / old_file)
        new_db_file = _switch_vault_key(session)
    return {"collections": len(rows), "db_file": new_db_file}


def rotate_vault_db_key(session: Session, *, reason: str) -> dict[str, Any]:
    """Move the vault database to a new key and re-wrap it to the keyslots that remain (admin).

    Used when a user is removed: the key they held then opens nothing written afterwards.
    """
    session.require_role("admin", action="re-keying the vault")
    session.audit("vault.rekey_db", severity="notice", reason=reason)
    with vault_lock(session.vault_dir):
        new_db_file = _switch_vault_key(session)
    return {"db_file": new_db_file}


def finish_pending(session: Session) -> list[str]:
    """An admin's open finishes what may be pending (nothing for anyone else).

    - Keyslots of users the signed state no longer enrols go, with a vault key rotation: ``users
      remove`` drops the slot in the same header swap that rotates the key, and a process killed in
      between leaves it.
    - Admins and auditors of an upgraded vault who have since confirmed their keys get the audit
      seal key, which was sealed to the adopting admin alone.
    """
    if session.role != "admin":
        return []
    pol = session.policy
    waiting = [
        u
        for u in pol.users("admin", "auditor")
        if pol.row("vault_keys", SEAL_PURPOSE, u) is None and pol.wrap_pub(u) is not None
    ]
    if waiting and pol.row("vault_keys", SEAL_PURPOSE, session.user) is not None:
        with session.change("audit.seal_key.share", users=waiting):
            for u in waiting:
                share_seal_key(session, u, pol.wrap_pub(u))  # type: ignore[arg-type]
    stale = sorted(
        {u for u in session.header.slots if pol.user(u) is None}
        | {str(t.get("user")) for t in session.header.tokens.values() if pol.user(str(t.get("user"))) is None}
    )
    if stale:
        rotate_vault_db_key(session, reason=f"finishing the removal of {', '.join(sorted(stale))}")
    return stale


def _switch_vault_key(session: Session) -> str:
    """Under the vault lock: copy vault.db under a new key, then swap ``header.json`` (the commit point).

    The new header keeps only the keyslots (and token slots) of users the signed state enrols, so a
    removed user's slot disappears in the same atomic rename that retires the key it opens.
    """
    vault_dir = session.vault_dir
    h = hdr.load(vault_dir)
    session.sync()
    new_vault_key = crypto.random_key()
    new_db_file = f"vault-{new_id()[:8]}.db"
    with db.write_locked(vault_dir / h.db_file, session.vault_key, "vault"):
        return _switch_locked(session, h, new_vault_key, new_db_file)


def _switch_locked(session: Session, h: hdr.Header, new_vault_key: bytes, new_db_file: str) -> str:
    vault_dir = session.vault_dir
    try:
        copy_encrypted(
            vault_dir / h.db_file, session.vault_key, vault_dir / new_db_file, new_vault_key, "vault"
        )
        new_h = hdr.Header(
            vault_id=h.vault_id,
            db_file=new_db_file,
            created_at=h.created_at,
            slots={u: dict(s) for u, s in h.slots.items() if session.policy.user(u) is not None},
            tokens={
                t: dict(s) for t, s in h.tokens.items() if session.policy.user(str(s.get("user"))) is not None
            },
            version=h.version,
        )
        for user, slot in new_h.slots.items():
            # To the key the signed users table holds: header.json is not authenticated, and a
            # member could have put their own public key in someone else's slot.
            pub = session.policy.user(user)["x25519_pub"]
            if slot.get("x25519") != pub:
                raise VaultCorrupted(
                    f"header.json: keyslot of {user!r} does not match the signed users table"
                )
            slot["vault_key"] = crypto.wrap_to(
                bytes.fromhex(pub), new_vault_key, vault_key_context(new_h, user)
            )
        new_h.save(vault_dir)  # the commit point
    except BaseException:
        remove_db_files(vault_dir / new_db_file)
        raise
    session.switch_database(new_h, new_vault_key, db.connect(vault_dir / new_db_file, new_vault_key, "vault"))
    remove_db_files(vault_dir / h.db_file)
    return new_db_file


def remove_orphans(session: Session) -> list[str]:
    """Delete database files no header or catalog references (left by an interrupted rotation)."""
    removed: list[str] = []
    try:
        with vault_lock(session.vault_dir, blocking=False):
            live = {session.header.db_file}
            # Also "vault-X.db.tmp" (+ its -journal): a re-key killed mid-copy leaves a copy under
            # the old key that must not outlive the rotation.
            for f in session.vault_dir.glob("vault-*.db*"):
                if f.name.split(".db")[0] + ".db" not in live:
                    with contextlib.suppress(FileNotFoundError):
                        f.unlink()
                    removed.append(f.name)
            files = {r[0] for r in session.db.execute("SELECT file FROM collections")}
            for f in (session.vault_dir / "collections").glob("*.db*"):
                base = f.name.split(".db")[0] + ".db"
                if base not in files:
                    with contextlib.suppress(FileNotFoundError):
                        f.unlink()
                    removed.append(f.name)
    except Exception:  # busy: someone else is rotating; try again next time
        return removed
    return removed
