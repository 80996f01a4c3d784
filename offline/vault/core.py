"""Creating, unlocking and using a vault: the session every command works through.

A :class:`Session` is one authenticated user with their private keys in memory, a connection to
the vault database, and the audit hook. Collection access goes through :mod:`offline.vault.collections`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .. import config
from ..audit import chain
from ..errors import (
    AccessDenied, AlreadyExists, AuthenticationFailed, DecryptionError, NotFound, OfflineError,
    UsageError, VaultCorrupted,
)
from . import crypto, db, header as hdr

ROLES = ("admin", "member", "auditor")
FAILED_UNLOCKS = "unlock-failures.jsonl"
LOCK_FILE = ".lock"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
DEFAULT_SETTINGS = {"audit_questions": "hash", "idle_timeout_s": "900", "break_glass": "on"}
KDF_TARGET_ENV = "OFFLINE_KDF_TARGET_S"  # seconds of Argon2id per unlock (default 0.5)


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def check_name(kind: str, name: str) -> str:
    """User and collection names: short, printable, no path or shell metacharacters."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise UsageError(f"invalid {kind} name {name!r}: use letters, digits, '.', '_', '-', '@' (max 64)")
    return name


@dataclass
class UserKeys:
    x25519: X25519PrivateKey
    ed25519: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> UserKeys:
        return cls(X25519PrivateKey.generate(), Ed25519PrivateKey.generate())

    @property
    def x25519_pub(self) -> bytes:
        return crypto.x25519_public_bytes(self.x25519)

    @property
    def ed25519_pub(self) -> bytes:
        return crypto.ed25519_public_bytes(self.ed25519)


def _slot_aad(vault_id: str, user: str) -> bytes:
    return f"offline/v1/slot|{vault_id}|{user}".encode()


def vault_key_context(h: hdr.Header, user: str) -> str:
    return f"vault-key|{h.vault_id}|{h.db_file}|{user}"


def make_slot(h: hdr.Header, user: str, passphrase: str, keys: UserKeys, vault_key: bytes,
              kdf: crypto.KdfParams) -> dict[str, Any]:
    """A keyslot: KDF params, sealed private keys, public keys, and the wrapped vault key."""
    secret = json.dumps({"x25519": crypto.private_bytes(keys.x25519).hex(),
                         "ed25519": crypto.private_bytes(keys.ed25519).hex()}).encode()
    kek = crypto.derive_kek(passphrase, kdf)
    return {
        "kdf": kdf.to_dict(),
        "sealed_keys": crypto.b64e(crypto.seal(kek, secret, _slot_aad(h.vault_id, user))),
        "x25519": keys.x25519_pub.hex(),
        "ed25519": keys.ed25519_pub.hex(),
        "vault_key": crypto.wrap_to(keys.x25519_pub, vault_key, vault_key_context(h, user)),
    }


def open_slot(h: hdr.Header, user: str, passphrase: str) -> UserKeys:
    """Derive and unseal a user's keys; unknown users cost the same Argon2id work as known ones."""
    slot = h.slots.get(user)
    if slot is None:
        # Same cost as a real slot, so timing does not tell whether the user exists.
        any_slot = next(iter(h.slots.values()), None)
        params = (crypto.KdfParams.from_dict(any_slot["kdf"]) if any_slot
                  else crypto.KdfParams.fresh(crypto.MIN_MEMORY_KIB, crypto.MIN_ITERATIONS))
        crypto.derive_kek(passphrase, params)
        raise AuthenticationFailed("authentication failed: unknown user or wrong passphrase")
    try:
        kek = crypto.derive_kek(passphrase, crypto.KdfParams.from_dict(slot["kdf"]))
        secret = json.loads(crypto.unseal(kek, crypto.b64d(slot["sealed_keys"]), _slot_aad(h.vault_id, user)))
        keys = UserKeys(X25519PrivateKey.from_private_bytes(bytes.fromhex(secret["x25519"])),
                        Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret["ed25519"])))
    except (DecryptionError, KeyError, ValueError, TypeError):
        raise AuthenticationFailed("authentication failed: unknown user or wrong passphrase") from None
    if keys.x25519_pub.hex() != slot.get("x25519") or keys.ed25519_pub.hex() != slot.get("ed25519"):
        raise VaultCorrupted("header.json: keyslot does not match its keys")
    return keys


def kdf_params_for_new_slot() -> crypto.KdfParams:
    target = float(os.environ.get(KDF_TARGET_ENV, "0.5"))
    return crypto.calibrate_kdf(target)


@contextlib.contextmanager
def vault_lock(vault_dir: Path, exclusive: bool = True, blocking: bool = True) -> Iterator[None]:
    """An advisory lock on the vault folder for header changes and key rotations."""
    fd = os.open(vault_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        flags = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        if not blocking:
            flags |= fcntl.LOCK_NB
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            raise OfflineError("the vault is busy in another process; try again") from None
        yield
    finally:
        os.close(fd)


class Session:
    """An unlocked vault for one user. Close it to drop keys and connections."""

    def __init__(self, vault_dir: Path, header: hdr.Header, user: str, role: str, keys: UserKeys,
                 vault_key: bytes, conn: db.Connection):
        self.vault_dir = vault_dir
        self.header = header
        self.user = user
        self.role = role
        self.keys = keys
        self._vault_key = bytearray(vault_key)
        self.db = conn
        self._collections: dict[str, Any] = {}
        self.closed = False

    # -- identity and policy -------------------------------------------------------------
    @property
    def vault_id(self) -> str:
        return self.header.vault_id

    @property
    def vault_key(self) -> bytes:
        return bytes(self._vault_key)

    def require_role(self, *roles: str, action: str) -> None:
        """Fail closed: raise :class:`AccessDenied` unless the caller has one of ``roles``."""
        if self.role not in roles:
            self.audit("access.denied", severity="warning", what=action, reason=f"role {self.role}")
            raise AccessDenied(f"access denied: {action} needs role {' or '.join(roles)}")

    # -- settings ------------------------------------------------------------------------
    def setting(self, key: str) -> str:
        row = self.db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return row[0] if row else DEFAULT_SETTINGS[key]

    def set_setting(self, key: str, value: str) -> None:
        self.require_role("admin", action="changing vault settings")
        if key not in DEFAULT_SETTINGS:
            raise UsageError(f"unknown setting {key!r} (known: {', '.join(sorted(DEFAULT_SETTINGS))})")
        with db.transaction(self.db):
            self.db.execute("INSERT OR REPLACE INTO settings(key, value) VALUES (?, ?)", (key, value))
        self.audit("settings.set", key=key, value=value)

    # -- audit ---------------------------------------------------------------------------
    def audit(self, action: str, *, severity: str = "info", **payload: Any) -> chain.Entry:
        """Append a signed entry for this user to the vault's audit chain."""
        return chain.append(self.db, self.user, self.keys.ed25519, action, payload, severity)

    # -- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        if self.closed:
            return
        for handle in self._collections.values():
            with contextlib.suppress(Exception):
                handle.close()
        self._collections.clear()
        with contextlib.suppress(Exception):
            self.db.close()
        for i in range(len(self._vault_key)):
            self._vault_key[i] = 0
        self.closed = True

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def create_vault(vault_dir: Path, admin: str, passphrase: str) -> Session:
    """Create a new vault whose first user, ``admin``, is an administrator."""
    check_name("user", admin)
    vault_dir = Path(vault_dir)
    if vault_dir.exists() and not vault_dir.is_dir():
        raise UsageError(f"{vault_dir} is a file, not a vault folder")
    if vault_dir.is_dir() and any(vault_dir.iterdir()):
        if (vault_dir / hdr.HEADER).exists():
            raise AlreadyExists(f"a vault already exists at {vault_dir}")
        raise UsageError(f"{vault_dir} is not empty; choose a new folder for the vault")
    config.ensure_private_dir(vault_dir)
    for sub in ("collections", "adapters"):
        config.ensure_private_dir(vault_dir / sub)
    h = hdr.Header.new()
    keys = UserKeys.generate()
    vault_key = crypto.random_key()
    audit_key = Ed25519PrivateKey.generate()
    conn = db.connect(vault_dir / h.db_file, vault_key, "vault", create=True)
    try:
        with db.transaction(conn):
            conn.execute("INSERT INTO users(name, role, x25519_pub, ed25519_pub, created_at, created_by)"
                         " VALUES (?, 'admin', ?, ?, ?, NULL)",
                         (admin, keys.x25519_pub.hex(), keys.ed25519_pub.hex(), utc_now()))
            for k, v in DEFAULT_SETTINGS.items():
                conn.execute("INSERT INTO settings(key, value) VALUES (?, ?)", (k, v))
            audit_pub = crypto.ed25519_public_bytes(audit_key).hex()
            conn.execute("INSERT INTO settings(key, value) VALUES ('audit_public_key', ?)", (audit_pub,))
            conn.execute("INSERT INTO vault_keys(purpose, user, wrapped) VALUES ('audit', ?, ?)",
                         (admin, crypto.wrap_to(keys.x25519_pub, crypto.private_bytes(audit_key),
                                                audit_key_context(h.vault_id, admin))))
        kdf = kdf_params_for_new_slot()
        h.slots[admin] = make_slot(h, admin, passphrase, keys, vault_key, kdf)
        h.save(vault_dir)
    except BaseException:
        conn.close()
        raise
    session = Session(vault_dir, h, admin, "admin", keys, vault_key, conn)
    session.audit("vault.init", vault_id=h.vault_id, ed25519=keys.ed25519_pub.hex(),
                  audit_public_key=audit_pub, kdf={k: v for k, v in kdf.to_dict().items() if k != "salt"})
    return session


def audit_key_context(vault_id: str, user: str) -> str:
    return f"audit-key|{vault_id}|{user}"


def open_session(vault_dir: Path, user: str, passphrase: str | Callable[[], str]) -> Session:
    """Unlock ``vault_dir`` as ``user``. ``passphrase`` may be a callable, asked only if needed."""
    vault_dir = Path(vault_dir)
    h = hdr.load(vault_dir)
    secret = passphrase() if callable(passphrase) else passphrase
    try:
        keys = open_slot(h, user, secret)
    except AuthenticationFailed:
        _record_failed_unlock(vault_dir, user)
        raise
    try:
        vault_key = crypto.unwrap_with(keys.x25519, h.slots[user]["vault_key"], vault_key_context(h, user))
    except DecryptionError:
        raise VaultCorrupted("header.json: the vault key in this keyslot does not open") from None
    conn = db.connect(vault_dir / h.db_file, vault_key, "vault")
    row = conn.execute("SELECT role, x25519_pub, ed25519_pub, removed_at FROM users WHERE name = ?",
                       (user,)).fetchone()
    if row is None or row[3] is not None:
        conn.close()
        _record_failed_unlock(vault_dir, user)
        raise AuthenticationFailed("authentication failed: unknown user or wrong passphrase")
    if row[1] != keys.x25519_pub.hex() or row[2] != keys.ed25519_pub.hex():
        conn.close()
        raise VaultCorrupted(f"{h.db_file}: user record does not match the keyslot for {user!r}")
    session = Session(vault_dir, h, user, row[0], keys, vault_key, conn)
    _flush_failed_unlocks(session)
    from .maintenance import remove_orphans

    remove_orphans(session)
    return session


def _record_failed_unlock(vault_dir: Path, user: str) -> None:
    """Unlock failures cannot go into the encrypted log yet: park them (no secrets) until next unlock."""
    line = json.dumps({"ts": utc_now(), "user": user[:64], "pid": os.getpid()}) + "\n"
    with contextlib.suppress(OSError):
        fd = os.open(vault_dir / FAILED_UNLOCKS, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def _flush_failed_unlocks(session: Session) -> None:
    path = session.vault_dir / FAILED_UNLOCKS
    if not path.exists():
        return
    with vault_lock(session.vault_dir):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            session.audit("unlock.failed", severity="warning", attempted_user=str(rec.get("user")),
                          at=str(rec.get("ts")))
        path.unlink(missing_ok=True)


# -- users ------------------------------------------------------------------------------------

def add_user(session: Session, name: str, role: str, passphrase: str) -> dict[str, Any]:
    """Enrol a user with their own keyslot (admin only). Admins also receive every collection key."""
    session.require_role("admin", action="adding users")
    check_name("user", name)
    if role not in ROLES:
        raise UsageError(f"unknown role {role!r} (roles: {', '.join(ROLES)})")
    keys = UserKeys.generate()
    with vault_lock(session.vault_dir):
        h = hdr.load(session.vault_dir)
        existing = session.db.execute("SELECT removed_at FROM users WHERE name = ?", (name,)).fetchone()
        if name in h.slots or (existing and existing[0] is None):
            raise AlreadyExists(f"user {name!r} already exists")
        slot = make_slot(h, name, passphrase, keys, session.vault_key, kdf_params_for_new_slot())
        from .collections import wrap_all_collection_keys_for

        with db.transaction(session.db):
            session.db.execute("DELETE FROM users WHERE name = ?", (name,))
            session.db.execute(
                "INSERT INTO users(name, role, x25519_pub, ed25519_pub, created_at, created_by)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (name, role, keys.x25519_pub.hex(), keys.ed25519_pub.hex(), utc_now(), session.user))
            if role in ("admin", "auditor"):
                _share_audit_key(session, name, keys.x25519_pub)
            if role == "admin":
                wrap_all_collection_keys_for(session, name, keys.x25519_pub)
            h.slots[name] = slot
            h.save(session.vault_dir)
        session.header = h
    session.audit("user.add", name=name, role=role, ed25519=keys.ed25519_pub.hex())
    return {"name": name, "role": role}


def _share_audit_key(session: Session, name: str, x25519_pub: bytes) -> None:
    audit_priv = load_audit_key(session)
    session.db.execute("INSERT OR REPLACE INTO vault_keys(purpose, user, wrapped) VALUES ('audit', ?, ?)",
                       (name, crypto.wrap_to(x25519_pub, crypto.private_bytes(audit_priv),
                                             audit_key_context(session.vault_id, name))))


def load_audit_key(session: Session) -> Ed25519PrivateKey:
    """The vault's audit signing key (admins and auditors hold a wrapped copy)."""
    row = session.db.execute("SELECT wrapped FROM vault_keys WHERE purpose = 'audit' AND user = ?",
                             (session.user,)).fetchone()
    if row is None:
        raise AccessDenied("access denied: only admins and auditors hold the audit signing key")
    raw = crypto.unwrap_with(session.keys.x25519, row[0], audit_key_context(session.vault_id, session.user))
    return Ed25519PrivateKey.from_private_bytes(raw)


def list_users(session: Session) -> list[dict[str, Any]]:
    """Enrolled users (admins and auditors see everyone; members only themselves)."""
    rows = session.db.execute(
        "SELECT name, role, created_at, created_by FROM users WHERE removed_at IS NULL ORDER BY name").fetchall()
    users = [{"name": r[0], "role": r[1], "created_at": r[2], "created_by": r[3]} for r in rows]
    if session.role == "member":
        users = [u for u in users if u["name"] == session.user]
    return users


def remove_user(session: Session, name: str) -> dict[str, Any]:
    """Remove a user's keyslot, grants and wrapped keys, then rotate the keys they held."""
    session.require_role("admin", action="removing users")
    row = session.db.execute("SELECT role FROM users WHERE name = ? AND removed_at IS NULL", (name,)).fetchone()
    if row is None:
        raise NotFound(f"no such user: {name!r}")
    if row[0] == "admin":
        admins = session.db.execute(
            "SELECT count(*) FROM users WHERE role = 'admin' AND removed_at IS NULL").fetchone()[0]
        if admins <= 1:
            raise UsageError("cannot remove the last admin")
    from .collections import rotate_collection_key

    held = [r[0] for r in session.db.execute(
        "SELECT c.name FROM collection_keys k JOIN collections c ON c.id = k.collection_id WHERE k.user = ?",
        (name,))]
    with vault_lock(session.vault_dir):
        h = hdr.load(session.vault_dir)
        with db.transaction(session.db):
            session.db.execute("DELETE FROM grants WHERE user = ?", (name,))
            session.db.execute("DELETE FROM collection_keys WHERE user = ?", (name,))
            session.db.execute("DELETE FROM vault_keys WHERE user = ?", (name,))
            session.db.execute("UPDATE users SET removed_at = ? WHERE name = ?", (utc_now(), name))
            h.slots.pop(name, None)
            h.save(session.vault_dir)
        session.header = h
    session.audit("user.remove", name=name)
    for coll in held:
        rotate_collection_key(session, coll, reason=f"user {name} removed")
    return {"name": name, "removed": True, "rotated_collections": held}


def change_passphrase(session: Session, new_passphrase: str) -> None:
    """Re-seal only this user's slot under a new passphrase (fresh salt, current KDF cost)."""
    with vault_lock(session.vault_dir):
        h = hdr.load(session.vault_dir)
        h.slots[session.user] = make_slot(h, session.user, new_passphrase, session.keys, session.vault_key,
                                          kdf_params_for_new_slot())
        h.save(session.vault_dir)
        session.header = h
    session.audit("user.passwd", name=session.user)


def new_id() -> str:
    return uuid.uuid4().hex[:16]
