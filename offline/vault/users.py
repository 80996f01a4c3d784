"""Creating and unlocking a vault, enrolling and removing users, changing vault settings.

The top of the vault package: these operations reach into every layer below (a removal rotates
collection keys and the vault key; turning break-glass off rotates every emergency collection).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .. import config
from ..audit import chain
from ..errors import (
    AlreadyExists,
    AuditChainBroken,
    AuthenticationFailed,
    DecryptionError,
    NotFound,
    OfflineError,
    UsageError,
    VaultCorrupted,
)
from ..memwipe import wipe
from . import authz, crypto, db, maintenance, trust
from . import header as hdr
from . import settings as vsettings
from .collections import disable_everywhere, rotate_collection_key, wrap_all_collection_keys_for
from .emergency import provision_user
from .keys import (
    ROLES,
    UserKeys,
    audit_key_context,
    auth_failed,
    check_name,
    install_seal_key,
    kdf_params_for_new_slot,
    make_slot,
    open_slot,
    utc_now,
    vault_key_context,
    vault_lock,
)
from .legacy import check_legacy_tables
from .session import DEFAULT_SETTINGS, Session, check_seen, check_slots, load_audit_key, load_seal_key

FAILED_UNLOCKS = "unlock-failures.jsonl"


def create_vault(vault_dir: Path, admin: str, passphrase: str) -> Session:
    """Create a new vault whose first user, ``admin``, is an administrator.

    The founding rows and the ``vault.init`` entry that carries them commit together; the admin's
    keyslot pins the chain's root (vault id, their signing key, the audit key).
    """
    check_name("user", admin)
    vault_dir = Path(vault_dir)
    if vault_dir.exists() and not vault_dir.is_dir():
        raise UsageError(f"{vault_dir} is a file, not a vault folder")
    if vault_dir.is_dir() and any(vault_dir.iterdir()):
        if (vault_dir / hdr.HEADER).exists():
            raise AlreadyExists(f"a vault already exists at {vault_dir}")
        raise UsageError(f"{vault_dir} is not empty; choose a new folder for the vault")
    config.ensure_private_dir(vault_dir)
    for sub in ("collections", "adapters", trust.CLIENTS_DIR):
        config.ensure_private_dir(vault_dir / sub)
    h = hdr.Header.new()
    keys = UserKeys.generate()
    vault_key = crypto.random_key()
    audit_key = Ed25519PrivateKey.generate()
    audit_pub = crypto.ed25519_public_bytes(audit_key).hex()
    seal_key = X25519PrivateKey.generate()
    root = {
        "vault_id": h.vault_id,
        "founder": admin,
        "founder_ed25519": keys.ed25519_pub.hex(),
        "audit_public_key": audit_pub,
    }
    kdf = kdf_params_for_new_slot()
    conn = db.connect(vault_dir / h.db_file, vault_key, "vault", create=True)
    try:
        verifier = chain.Verifier(authz.Policy())
        with db.transaction(conn):
            before = authz.read_image(conn)
            conn.execute(
                "INSERT INTO users(name, role, x25519_pub, ed25519_pub, created_at, created_by)"
                " VALUES (?, 'admin', ?, ?, ?, NULL)",
                (admin, keys.x25519_pub.hex(), keys.ed25519_pub.hex(), utc_now()),
            )
            for k, v in DEFAULT_SETTINGS.items():
                conn.execute("INSERT INTO settings(key, value) VALUES (?, ?)", (k, v))
            conn.execute("INSERT INTO settings(key, value) VALUES ('audit_public_key', ?)", (audit_pub,))
            conn.execute(
                "INSERT INTO vault_keys(purpose, user, wrapped) VALUES ('audit', ?, ?)",
                (
                    admin,
                    crypto.wrap_to(
                        keys.x25519_pub, crypto.private_bytes(audit_key), audit_key_context(h.vault_id, admin)
                    ),
                ),
            )
            install_seal_key(conn, h.vault_id, seal_key, {admin: keys.x25519_pub})
            payload = {
                "vault_id": h.vault_id,
                "ed25519": keys.ed25519_pub.hex(),
                "audit_public_key": audit_pub,
                "fingerprint": trust.fingerprint(root),
                "kdf": {k: v for k, v in kdf.to_dict().items() if k != "salt"},
                "authz": authz.diff(before, authz.read_image(conn)),
            }
            entry = chain.append_in_transaction(conn, admin, keys.ed25519, "vault.init", payload)
            verifier.feed(entry)
            h.slots[admin] = make_slot(h, admin, passphrase, keys, vault_key, kdf, root)
            h.save(vault_dir)
    except BaseException:
        conn.close()
        raise
    session = Session(vault_dir, h, admin, keys, vault_key, conn, verifier, root)
    session.remember()
    return session


def open_session(
    vault_dir: Path, user: str, passphrase: str | Callable[[], str], *, accept_restore: bool = False
) -> Session:
    """Unlock ``vault_dir`` as ``user``. ``passphrase`` may be a callable, asked only if needed.

    ``accept_restore``: this vault was restored from a backup on purpose, so the newer head the
    user's client remembers outside the vault folder is set aside (recorded, severity high).

    Steps, each failing closed: (1) unseal the keyslot: keys and pinned root; (2) open the vault
    database; (3) the chain still holds the head this user's client saw last; (4) verify the entries
    since then, folding them into the policy; (5) the chain starts at the pinned root; (6) the user
    is enrolled in the policy with these keys; (7) the protected tables equal the policy.
    """
    vault_dir = Path(vault_dir)
    h = hdr.load(vault_dir)
    secret = passphrase() if callable(passphrase) else passphrase
    try:
        keys, root = open_slot(h, user, secret)
    except AuthenticationFailed:
        record_failed_unlock(vault_dir, user)
        raise
    return open_with_keys(
        vault_dir,
        h,
        user,
        keys,
        root,
        accept_restore=accept_restore,
        pin_root=lambda v: _pin_root(vault_dir, user, secret, keys, v),
    )


def open_with_keys(
    vault_dir: Path,
    h: hdr.Header,
    user: str,
    keys: UserKeys,
    root: dict[str, str] | None,
    *,
    accept_restore: bool = False,
    pin_root: Callable[[chain.Verifier], dict[str, str]] | None = None,
    own_state_only: bool = False,
) -> Session:
    """Steps (2)-(7) of :func:`open_session` for keys already unsealed (a passphrase or token slot).

    ``own_state_only`` (the team server): resume only from the client state in this process's home,
    never from the copy in the vault folder, which the user whose keys these are could forge.
    """
    try:
        vault_key = crypto.unwrap_with(keys.x25519, h.slots[user]["vault_key"], vault_key_context(h, user))
    except DecryptionError:
        raise VaultCorrupted("header.json: the vault key in this keyslot does not open") from None
    conn = db.connect(vault_dir / h.db_file, vault_key, "vault")
    try:
        verifier = _verified_chain(
            vault_dir, h, user, keys, conn, use_anchor=not accept_restore, use_folder=not own_state_only
        )
        if root is None:  # a keyslot made before roots were pinned: pin this chain's root now
            if pin_root is None:
                raise VaultCorrupted("header.json: this slot pins no root")
            root = pin_root(verifier)
        if not trust.same_root(root, verifier.root):
            raise AuditChainBroken(
                "audit entry 1: the audit log does not start at this vault's pinned root (vault "
                f"fingerprint {trust.show_fingerprint(root)}); the whole history was replaced",
                1,
            )
        if not verifier.policy.started:
            raise OfflineError(
                "this vault was made by an older version of offline: an admin must open it "
                "once with this version to sign its authorization state"
            )
        row = verifier.policy.user(user)
        if row is None:
            record_failed_unlock(vault_dir, user)
            raise auth_failed(user)
        if row["x25519_pub"] != keys.x25519_pub.hex() or row["ed25519_pub"] != keys.ed25519_pub.hex():
            raise VaultCorrupted(f"{h.db_file}: user record does not match the keyslot for {user!r}")
        bad = authz.first_difference(verifier.policy.image, authz.read_image(conn))
        if bad:
            raise VaultCorrupted(f"{h.db_file}: {bad}")
        check_slots(h, verifier.policy)
    except BaseException:
        conn.close()
        raise
    session = Session(vault_dir, h, user, keys, vault_key, conn, verifier, root)
    wipe(vault_key)  # the session holds its own (bytearray) copy, zeroed at close
    if row.get("keys_confirmed", 1) == 0:  # an upgraded vault: this open proves our own keys
        with session.change("user.confirm_keys", name=user):
            session.db.execute("UPDATE users SET keys_confirmed = 1 WHERE name = ?", (user,))
    if accept_restore:
        anchor = trust.load_state(vault_dir, user, keys.x25519, h.vault_id)
        seen = int(anchor["verifier"]["seq"]) if anchor else 0
        session.audit(
            "vault.restore_accepted", severity="high", head_seq=verifier.seq, previously_seen_seq=seen
        )
        trust.forget_anchor(vault_dir, user, h.vault_id)
    session.remember()
    flush_failed_unlocks(session)
    maintenance.remove_orphans(session)
    maintenance.finish_pending(session)
    return session


def _verified_chain(
    vault_dir: Path,
    h: hdr.Header,
    user: str,
    keys: UserKeys,
    conn: db.Connection,
    *,
    use_anchor: bool = True,
    use_folder: bool = True,
) -> chain.Verifier:
    """Resume from this user's last-seen head (checked still to be in the chain), verify the rest."""
    state = trust.load_state(
        vault_dir, user, keys.x25519, h.vault_id, use_anchor=use_anchor, use_folder=use_folder
    )
    if state is None:
        verifier = chain.Verifier(authz.Policy())
    else:
        verifier = chain.Verifier.from_json(state["verifier"], authz.Policy)
        if verifier.policy is None:
            verifier.policy = authz.Policy()
        check_seen(conn, user, verifier.seq, verifier.prev)
    for e in chain.iter_entries(conn, "seq > ?", (verifier.seq,)):
        verifier.feed(e)
    if verifier.root is not None and verifier.root.get("vault_id") != h.vault_id:
        raise AuditChainBroken("audit entry 1: the audit log belongs to another vault", 1)
    if not verifier.policy.started:
        _adopt_legacy(conn, user, keys, verifier)
    return verifier


def _adopt_legacy(conn: db.Connection, user: str, keys: UserKeys, verifier: chain.Verifier) -> None:
    """A vault from before signed authorization: its first admin to open it signs its tables.

    Not as they are: a member may have edited them while they were unprotected. Users, roles and
    keys must be the ones the old chain enrolled, grants and settings what its (admin-signed)
    entries set, and key wraps held only by admins, grantees and (audit key) auditors; anything else
    is refused, naming the row. Old break-glass wraps, which any holder could use unlogged, are
    dropped: break-glass must be turned on again, with an emergency code.
    """
    if verifier.roles.get(user) != "admin":
        return
    with db.transaction(conn):
        check_legacy_tables(conn, verifier, user)
        # Sealed to the adopter only: the others' keys are unproven until they open the vault; an
        # admin shares it with them afterwards (maintenance.finish_pending).
        vault_id = str(verifier.root["vault_id"]) if verifier.root else ""
        install_seal_key(conn, vault_id, X25519PrivateKey.generate(), {user: keys.x25519_pub})
        changes = authz.diff(authz.Policy().image, authz.read_image(conn))
        entry = chain.append_in_transaction(
            conn, user, keys.ed25519, "authz.adopt", {"authz": changes}, "notice"
        )
        verifier.feed(entry)


def _pin_root(
    vault_dir: Path, user: str, passphrase: str, keys: UserKeys, verifier: chain.Verifier
) -> dict[str, str]:
    """Trust on first use for an old keyslot: seal the verified chain's root into it (same KDF cost)."""
    if verifier.root is None:
        raise AuditChainBroken("audit entry 1: missing", 1)
    root = dict(verifier.root)
    with vault_lock(vault_dir):
        h = hdr.load(vault_dir)
        slot = h.slots[user]
        kdf = crypto.KdfParams.from_dict(slot["kdf"])
        vault_key = crypto.unwrap_with(keys.x25519, slot["vault_key"], vault_key_context(h, user))
        h.slots[user] = make_slot(h, user, passphrase, keys, vault_key, kdf, root)
        h.save(vault_dir)
    return root


def record_failed_unlock(vault_dir: Path, user: str, *, via: str | None = None) -> None:
    """Unlock failures cannot go into the encrypted log yet: park them (no secrets) until next unlock.

    ``via``: where the attempt came from (the team server's client address).
    """
    rec = {"ts": utc_now(), "user": user[:64], "pid": os.getpid(), **({"via": via[:80]} if via else {})}
    line = json.dumps(rec) + "\n"
    with contextlib.suppress(OSError):
        fd = os.open(vault_dir / FAILED_UNLOCKS, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


PARK_MAX_BYTES = 1 << 20  # what one flush reads of the park file
PARK_MAX_RECORDS = 256  # entries one flush signs; the rest are counted in one entry
_PARK_USER = re.compile(r"^(?:token:(?:[0-9a-f]{16}|\?|none)|[A-Za-z0-9][A-Za-z0-9._-]{0,63})$")
_PARK_TS = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{8,15}(?:[+-][0-9]{2}:[0-9]{2}|Z)?$")
_PARK_VIA = re.compile(r"^[0-9A-Fa-f.:\[\]]{1,47}$")


def _park_claim(rec: Any) -> dict[str, Any] | None:
    """A parked record's claims, validated and capped, or None for a record that is not one.

    The park file is in the vault folder, so any member can write it: what it says is signed as
    a *report* (``reported_by: park-file``, fields ``claimed_*``), never as a fact the signer saw.
    """
    if not isinstance(rec, dict):
        return None
    user, ts, via = rec.get("user"), rec.get("ts"), rec.get("via")
    if not isinstance(user, str) or not _PARK_USER.match(user):
        return None
    out: dict[str, Any] = {"attempted_user": user, "reported_by": "park-file"}
    if isinstance(ts, str) and _PARK_TS.match(ts):
        out["claimed_at"] = ts
    if isinstance(via, str) and _PARK_VIA.match(via):
        out["claimed_via"] = via
    return out


def flush_failed_unlocks(session: Session) -> None:
    """Move the parked unlock failures into the signed audit log (at every open; the server also after
    requests).

    Each becomes an ``unlock.failed`` entry marked ``reported_by: park-file`` with its claims
    validated (user name, time, address shapes) and capped: at most :data:`PARK_MAX_RECORDS` per
    flush, read from at most :data:`PARK_MAX_BYTES`; anything beyond or malformed is counted in one
    ``unlock.failed.unreadable`` entry, never copied.
    """
    path = session.vault_dir / FAILED_UNLOCKS
    if not path.exists():
        return
    with vault_lock(session.vault_dir):
        try:
            with open(path, "rb") as f:
                data = f.read(PARK_MAX_BYTES + 1)
        except OSError:
            return
        truncated = len(data) > PARK_MAX_BYTES
        lines = data[:PARK_MAX_BYTES].decode("utf-8", "replace").splitlines()
        signed = skipped = 0
        for line in lines:
            try:
                claim = _park_claim(json.loads(line))
            except (ValueError, RecursionError):
                claim = None
            if claim is None or signed >= PARK_MAX_RECORDS:
                skipped += 1
                continue
            session.audit("unlock.failed", severity="warning", **claim)
            signed += 1
        if skipped or truncated:
            session.audit(
                "unlock.failed.unreadable",
                severity="warning",
                reported_by="park-file",
                records=skipped,
                truncated=truncated,
                why="malformed, over the per-flush cap, or past the size cap",
            )
        path.unlink(missing_ok=True)


def add_user(session: Session, name: str, role: str, passphrase: str) -> dict[str, Any]:
    """Enrol a user with their own keyslot (admin only). Admins also receive every collection key.

    The new keyslot pins the caller's root, so the new user's client trusts exactly this chain.
    """
    session.require_role("admin", action="adding users")
    check_name("user", name)
    if role not in ROLES:
        raise UsageError(f"unknown role {role!r} (roles: {', '.join(ROLES)})")
    keys = UserKeys.generate()
    kdf = kdf_params_for_new_slot()
    provisioned: list[str] = []
    with vault_lock(session.vault_dir):
        h = hdr.load(session.vault_dir)
        slot = make_slot(h, name, passphrase, keys, session.vault_key, kdf, session.root)
        with session.change("user.add", name=name, role=role, ed25519=keys.ed25519_pub.hex()) as extra:
            if name in h.slots or session.policy.user(name) is not None:
                raise AlreadyExists(f"user {name!r} already exists")
            session.db.execute("DELETE FROM users WHERE name = ?", (name,))
            session.db.execute(
                "INSERT INTO users(name, role, x25519_pub, ed25519_pub, created_at, created_by)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (name, role, keys.x25519_pub.hex(), keys.ed25519_pub.hex(), utc_now(), session.user),
            )
            if role in ("admin", "auditor"):
                _share_audit_key(session, name, keys.x25519_pub)
            if role == "admin":
                wrap_all_collection_keys_for(session, name, keys.x25519_pub)
            if role in ("admin", "member"):
                provisioned = provision_user(session, name, keys.x25519_pub)
                extra["break_glass_provisioned"] = provisioned
            h.slots[name] = slot
            h.save(session.vault_dir)
        session.header = h
    return {"name": name, "role": role, "break_glass_provisioned": provisioned}


def _share_audit_key(session: Session, name: str, x25519_pub: bytes) -> None:
    audit_priv = load_audit_key(session)
    session.db.execute(
        "INSERT OR REPLACE INTO vault_keys(purpose, user, wrapped) VALUES ('audit', ?, ?)",
        (
            name,
            crypto.wrap_to(
                x25519_pub, crypto.private_bytes(audit_priv), audit_key_context(session.vault_id, name)
            ),
        ),
    )
    install_seal_key(session.db, session.vault_id, load_seal_key(session), {name: x25519_pub})


def list_users(session: Session) -> list[dict[str, Any]]:
    """Enrolled users, from the signed policy (admins and auditors see everyone; members themselves)."""
    users = [
        {"name": n, "role": r["role"], "created_at": r["created_at"], "created_by": r["created_by"] or "-"}
        for n, r in session.policy.users().items()
    ]
    if session.role == "member":
        users = [u for u in users if u["name"] == session.user]
    return users


def remove_user(session: Session, name: str) -> dict[str, Any]:
    """Remove a user and make it final: keyslot, grants and wraps go, then every key they held rotates.

    The vault database key is rotated too, so a removed user who copied it (or their old keyslot)
    opens nothing written after the removal; so is every collection key they held.
    """
    session.require_role("admin", action="removing users")
    with vault_lock(session.vault_dir):
        with session.change("user.remove", name=name) as extra:
            target = session.policy.user(name)
            if target is None:
                raise NotFound(f"no such user: {name!r}")
            if target["role"] == "admin" and len(session.policy.users("admin")) <= 1:
                raise UsageError("cannot remove the last admin")
            held = [
                r[0]
                for r in session.db.execute(
                    "SELECT DISTINCT c.name FROM collections c WHERE c.id IN "
                    "(SELECT collection_id FROM collection_keys WHERE user = ?) OR c.id IN "
                    "(SELECT substr(purpose, 13) FROM vault_keys WHERE user = ?"
                    " AND purpose LIKE 'break-glass:%') ORDER BY c.name",
                    (name, name),
                )
            ]
            for table in ("grants", "collection_keys", "vault_keys", "adapter_keys"):
                session.db.execute(f"DELETE FROM {table} WHERE user = ?", (name,))  # noqa: S608
            session.db.execute("UPDATE users SET removed_at = ? WHERE name = ?", (utc_now(), name))
            extra["rotated_collections"] = held
    # The keyslot goes with the vault key rotation below (one atomic header swap). Should this
    # process die first, the next admin to open the vault finishes it (see finish_removals).
    for coll in held:
        rotate_collection_key(session, coll, reason=f"user {name} removed")
    maintenance.rotate_vault_db_key(session, reason=f"user {name} removed")
    return {"name": name, "removed": True, "rotated_collections": held, "vault_key_rotated": True}


def change_passphrase(session: Session, new_passphrase: str) -> None:
    """Re-seal only this user's slot under a new passphrase (fresh salt, current KDF cost)."""
    kdf = kdf_params_for_new_slot()
    with vault_lock(session.vault_dir):
        h = hdr.load(session.vault_dir)
        h.slots[session.user] = make_slot(
            h, session.user, new_passphrase, session.keys, session.vault_key, kdf, session.root
        )
        h.save(session.vault_dir)
        session.header = h
    session.audit("user.passwd", name=session.user)


def set_setting(session: Session, key: str, value: str) -> str:
    """Change a vault setting (admin): validated, stored canonically, carried by a signed entry.

    ``break_glass off`` also disables break-glass on every collection and rotates their keys: no
    emergency wrap outlives the vault-wide switch.
    """
    session.require_role("admin", action="changing vault settings")
    value = vsettings.normalise(key, value)
    with session.change("settings.set", severity="notice", key=key, value=value):
        session.db.execute("INSERT OR REPLACE INTO settings(key, value) VALUES (?, ?)", (key, value))
    if key == "break_glass" and value == "off":
        disable_everywhere(session)
    return value
