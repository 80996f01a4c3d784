"""HIPAA break-glass: pre-staged emergency read access to a collection, off by default.

Turning it on (admin) provisions emergency wraps and prints an **emergency code** once, for a
sealed envelope: a read needs both the user's wrap and that code (see :mod:`offline.vault.emergency`
for the keys and what a member holding a wrap can and cannot do with raw tools). The read itself
goes through ``open_collection(..., break_glass_reason=..., break_glass_code=...)``, which commits a
high-severity ``break_glass.read`` entry before the key opens anything. Turning it off, for one
collection or vault-wide, deletes every emergency wrap and rotates the collection key. Users
enrolled while it is on get their wrap at enrolment.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import ParameterError
from ..vault import emergency
from ..vault.collections import collection_key_for_admin, open_collection, rotate_collection_key
from ..vault.core import Session


def set_break_glass(
    session: Session, collection: str, enabled: bool, users: list[str] | None = None
) -> dict[str, Any]:
    """Turn break-glass on (new wraps and code) or off (delete them, rotate the key) for a collection."""
    session.require_role("admin", action="configuring break-glass")
    cid, file, key = collection_key_for_admin(session, collection)
    if enabled:
        vault_wide = session.setting("break_glass")
        again = bool(session.policy.row("collections", cid).get("emergency"))
        with session.change(
            "break_glass.enable", severity="warning", collection=collection, vault_setting=vault_wide
        ) as extra:
            code, provisioned = emergency.enable(session, cid, file, key, users)
            extra["provisioned"] = provisioned
        if again:  # an old code and blob copied earlier would still open the current key
            rotate_collection_key(session, collection, reason="break-glass re-issued")
        return {
            "collection": collection,
            "break_glass": True,
            "provisioned": provisioned,
            "vault_setting": vault_wide,
            "key_rotated": again,
            "emergency_code": code,
        }
    with session.change("break_glass.disable", severity="notice", collection=collection) as extra:
        removed = emergency.disable(session, cid)
        extra["wraps_removed"] = removed
    rotate_collection_key(session, collection, reason="break-glass disabled")
    return {"collection": collection, "break_glass": False, "wraps_removed": removed, "key_rotated": True}


def open_break_glass(
    session: Session,
    collections: list[str] | None,
    reason: str | None,
    code: Callable[[], str | None] | None = None,
) -> list[str]:
    """Open ``collections`` for reading, using break-glass where the caller holds no grant.

    Called before ``search``/``answer`` so they find the handles already open. Refuses (usage
    error, exit 2) without a reason or without naming the collections: an emergency read is a
    deliberate act on a named collection, never a side effect of searching everything.
    """
    if reason is None or not reason.strip():
        raise ParameterError("break-glass needs a reason: {reason} TEXT", "reason")
    if not collections:
        raise ParameterError(
            "break-glass needs the collection to open: {collections} COLLECTION", "collections"
        )
    names = list(dict.fromkeys(collections))
    for name in names:
        if _granted(session, name):
            open_collection(session, name, "read")
        else:
            open_collection(session, name, "read", break_glass_reason=reason.strip(), break_glass_code=code)
    return names


def _granted(session: Session, name: str) -> bool:
    found = session.policy.collection(name)
    return found is not None and session.policy.grant(found[0], session.user) is not None


@contextlib.contextmanager
def break_glass_scope(
    session: Session,
    enabled: bool,
    collections: list[str] | None,
    reason: str | None,
    code: Callable[[], str | None] | None = None,
) -> Iterator[list[str]]:
    """What ``--break-glass --reason TEXT`` does for ``ask`` and ``search``: open, run, close.

    Collections opened by break-glass are dropped from the session when the block ends, so a
    long-lived session (the agent) never keeps serving them without a new reason and audit entry.
    """
    if not enabled:
        if reason is not None:
            raise ParameterError("{reason} goes with {break_glass}", "reason", "break_glass")
        yield []
        return
    names = list(dict.fromkeys(collections or []))
    emergency = [n for n in names if not _granted(session, n)]
    try:
        yield open_break_glass(session, names, reason, code)
    finally:
        for name in emergency:
            session.drop_handle(name)
