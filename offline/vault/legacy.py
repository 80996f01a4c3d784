"""Adopting a vault made before authorization was signed: what its tables may hold.

Until then the protected tables were guarded only by the vault key every member holds, so the
first admin to open such a vault with this version must not sign them blindly. The old chain
already records, signed, who was enrolled with which role and key (``vault.init``, ``user.add``,
``user.remove``) and every grant and setting an admin made (``collection.create``, ``grant.add``,
``grant.revoke``, ``collection.drop``, ``settings.set``); the tables must agree with that replay.
"""

from __future__ import annotations

import json
from typing import Any

from ..audit import chain
from ..errors import UsageError, VaultCorrupted
from .settings import DEFAULTS, normalise

_SETTING_DEFAULTS = {"audit_questions": "hash", "idle_timeout_s": "900", "break_glass": "on"}


def _refuse(table: str, key: Any, why: str) -> VaultCorrupted:
    return VaultCorrupted(f"cannot adopt this older vault: table {table}, row {json.dumps(key)}: {why}")


def _replay(
    conn: Any, verifier: chain.Verifier
) -> tuple[dict[tuple[str, str], tuple[str, Any]], dict[str, str]]:
    """Grants ((collection id, user) -> (perm, labels)) and settings as the old chain's admins set them."""
    roles: dict[str, str] = {}
    ids: dict[str, str] = {}
    grants: dict[tuple[str, str], tuple[str, Any]] = {}
    settings = dict(_SETTING_DEFAULTS)
    for e in chain.iter_entries(conn):
        p = e.payload
        if e.action == "vault.init":
            roles[e.user] = "admin"
        admin = roles.get(e.user) == "admin"
        if e.action == "user.add" and admin:
            roles[str(p.get("name"))] = str(p.get("role"))
        elif e.action == "user.remove" and admin:
            name = str(p.get("name"))
            roles.pop(name, None)
            grants = {k: v for k, v in grants.items() if k[1] != name}
        elif e.action == "collection.create" and admin:
            ids[str(p.get("collection"))] = str(p.get("collection_id"))
            grants[(str(p.get("collection_id")), e.user)] = ("write", None)
        elif e.action == "collection.drop" and admin:
            cid = ids.pop(str(p.get("collection")), str(p.get("collection_id")))
            grants = {k: v for k, v in grants.items() if k[0] != cid}
        elif e.action == "grant.add" and admin and str(p.get("collection")) in ids:
            grants[(ids[str(p["collection"])], str(p.get("user")))] = (str(p.get("perm")), p.get("labels"))
        elif e.action == "grant.revoke" and admin and str(p.get("collection")) in ids:
            grants.pop((ids[str(p["collection"])], str(p.get("user"))), None)
        elif e.action == "settings.set" and admin:
            settings[str(p.get("key"))] = str(p.get("value"))
    return grants, settings


def check_legacy_tables(conn: Any, verifier: chain.Verifier, adopter: str) -> None:
    """Inside the adopt transaction: refuse tampered rows; drop old break-glass wraps."""
    enrolled = {u: k for u, k in verifier.keys.items()}
    active = {}
    for name, role, ed in conn.execute("SELECT name, role, ed25519_pub FROM users WHERE removed_at IS NULL"):
        if name not in enrolled or verifier.roles.get(name) != role or enrolled[name] != ed:
            raise _refuse("users", [name], "not the role and key the signed audit log enrolled")
        active[name] = role
    for name in enrolled:
        if name not in active:
            raise _refuse("users", [name], "enrolled in the audit log but missing or removed here")
    grants, settings = _replay(conn, verifier)
    for cid, user, perm, labels in conn.execute("SELECT collection_id, user, perm, labels FROM grants"):
        want = grants.get((cid, user))
        have_labels = json.loads(labels) if labels else None
        if want is None or want[0] != perm or (want[1] or None) != have_labels or user not in active:
            raise _refuse("grants", [cid, user], "no admin-signed grant.add says so")
    for cid, user in conn.execute("SELECT collection_id, user FROM collection_keys"):
        if active.get(user) != "admin" and (cid, user) not in grants:
            raise _refuse("collection_keys", [cid, user], "held by neither an admin nor a grantee")
    for purpose, user in conn.execute("SELECT purpose, user FROM vault_keys WHERE purpose = 'audit'"):
        if active.get(user) not in ("admin", "auditor"):
            raise _refuse(
                "vault_keys", [purpose, user], "the audit key held by someone who is not admin or auditor"
            )
    for key, value in conn.execute(
        "SELECT key, value FROM settings WHERE key IN ('audit_questions', 'idle_timeout_s', 'break_glass')"
    ):
        if settings.get(key) != value:
            raise _refuse("settings", [key], "not the value an admin set")
    for key, value in conn.execute(
        "SELECT key, value FROM settings WHERE key IN ('audit_questions', 'idle_timeout_s', 'break_glass')"
    ).fetchall():
        try:
            fixed = normalise(key, value)
        except UsageError:  # the old kit accepted "banana"; the signed state starts from a valid one
            fixed = DEFAULTS[key]
        if fixed != value:
            conn.execute("UPDATE settings SET value = ? WHERE key = ?", (fixed, key))
    # The old kit had no audit seal key: one here was planted, to have every question sealed to it.
    for table, where in (
        ("settings", "key = 'audit_seal_public_key'"),
        ("vault_keys", "purpose = 'audit-seal'"),
    ):
        if conn.execute(f"SELECT 1 FROM {table} WHERE {where}").fetchone():  # noqa: S608 (fixed names)
            raise _refuse(
                table,
                ["audit_seal_public_key" if table == "settings" else "audit-seal"],
                "an audit seal key in a vault made before there were any",
            )
    conn.execute("DELETE FROM vault_keys WHERE purpose LIKE 'break-glass:%'")
    # Nobody but the adopting admin has proved their X25519 key (the old chain never recorded it):
    # each confirms at their first open; until then no new key is wrapped to them.
    conn.execute("UPDATE users SET keys_confirmed = 0 WHERE name != ?", (adopter,))
    conn.execute("UPDATE collections SET break_glass = 0")
