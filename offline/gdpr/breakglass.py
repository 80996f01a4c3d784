"""HIPAA break-glass: pre-staged emergency read access to a collection, off by default.

Turning it on (admin) sets the collection's ``break_glass`` flag and wraps the collection key to
every enrolled admin and member as ``vault_keys`` purpose ``break-glass:<collection id>``, so an
emergency read needs no admin at hand, exactly like HIPAA's pre-provisioned break-glass accounts.
``open_collection(..., break_glass_reason=...)`` then lets such a user read once per session with a
non-empty reason and a high-severity ``break_glass.read`` audit entry. Turning it off deletes those
wraps and rotates the collection key, so a wrap copied earlier no longer opens the file. Users
enrolled later get a wrap when an admin runs ``on`` again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ..errors import UsageError
from ..vault import crypto, db
from ..vault.collections import collection_key_context, collection_key_for_admin, open_collection, \
    rotate_collection_key
from ..vault.core import Session


def _purpose(collection_id: str) -> str:
    return f"break-glass:{collection_id}"


def set_break_glass(session: Session, collection: str, enabled: bool) -> dict[str, Any]:
    """Turn break-glass on (provision wraps) or off (delete them, rotate the key) for a collection."""
    session.require_role("admin", action="configuring break-glass")
    cid, file, key = collection_key_for_admin(session, collection)
    purpose = _purpose(cid)
    if enabled:
        users = session.db.execute("SELECT name, x25519_pub FROM users WHERE removed_at IS NULL"
                                   " AND role IN ('admin', 'member') ORDER BY name").fetchall()
        with db.transaction(session.db):
            session.db.execute("UPDATE collections SET break_glass = 1 WHERE id = ?", (cid,))
            for user, pub in users:
                wrapped = crypto.wrap_to(bytes.fromhex(pub), key,
                                         collection_key_context(session.vault_id, cid, file, user))
                session.db.execute("INSERT OR REPLACE INTO vault_keys(purpose, user, wrapped) VALUES (?, ?, ?)",
                                   (purpose, user, wrapped))
        provisioned = [u for u, _ in users]
        vault_wide = session.setting("break_glass")
        session.audit("break_glass.enable", severity="warning", collection=collection, provisioned=provisioned,
                      vault_setting=vault_wide)
        return {"collection": collection, "break_glass": True, "provisioned": provisioned,
                "vault_setting": vault_wide, "key_rotated": False}
    with db.transaction(session.db):
        session.db.execute("UPDATE collections SET break_glass = 0 WHERE id = ?", (cid,))
        removed = session.db.execute("DELETE FROM vault_keys WHERE purpose = ?", (purpose,)).rowcount
    rotate_collection_key(session, collection, reason="break-glass disabled")
    session.audit("break_glass.disable", severity="notice", collection=collection, wraps_removed=removed)
    return {"collection": collection, "break_glass": False, "wraps_removed": removed, "key_rotated": True}


def open_break_glass(session: Session, collections: list[str] | None, reason: str | None) -> list[str]:
    """Open ``collections`` for reading, using break-glass where the caller holds no grant.

    Called before ``search``/``answer`` so they find the handles already open. Refuses (usage
    error, exit 2) without a reason or without naming the collections: an emergency read is a
    deliberate act on a named collection, never a side effect of searching everything.
    """
    if reason is None or not reason.strip():
        raise UsageError("break-glass needs a reason: --reason TEXT")
    if not collections:
        raise UsageError("break-glass needs the collection to open: -c COLLECTION")
    names = list(dict.fromkeys(collections))
    for name in names:
        open_collection(session, name, "read", break_glass_reason=reason.strip())
    return names


def _granted(session: Session, name: str) -> bool:
    return session.db.execute("SELECT 1 FROM grants g JOIN collections c ON c.id = g.collection_id"
                              " WHERE c.name = ? AND g.user = ?", (name, session.user)).fetchone() is not None


@contextlib.contextmanager
def break_glass_scope(session: Session, enabled: bool, collections: list[str] | None,
                      reason: str | None) -> Iterator[list[str]]:
    """What ``--break-glass --reason TEXT`` does for ``ask`` and ``search``: open, run, close.

    Collections opened by break-glass are dropped from the session when the block ends, so a
    long-lived session (the agent) never keeps serving them without a new reason and audit entry.
    """
    if not enabled:
        if reason is not None:
            raise UsageError("--reason goes with --break-glass")
        yield []
        return
    names = list(dict.fromkeys(collections or []))
    emergency = [n for n in names if not _granted(session, n)]
    try:
        yield open_break_glass(session, names, reason)
    finally:
        for name in emergency:
            handle = session._collections.pop(name, None)
            if handle is not None:
                handle.close()
