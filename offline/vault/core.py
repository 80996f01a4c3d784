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
    AccessDenied, AlreadyExists, AuditChainBroken, AuthenticationFailed, DecryptionError, NotFound,
    OfflineError, UsageError, VaultCorrupted, VaultLocked,
)
from . import authz, crypto, db, header as hdr, settings as vsettings, trust

ROLES = ("admin", "member", "auditor")
FAILED_UNLOCKS = "unlock-failures.jsonl"
LOCK_FILE = ".lock"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
DEFAULT_SETTINGS = vsettings.DEFAULTS
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
              kdf: crypto.KdfParams, root: dict[str, str] | None) -> dict[str, Any]:
    """A keyslot: KDF params, sealed private keys and pinned root, public keys, wrapped vault key.

    ``root`` (vault id, founding admin key, audit key) is sealed with the private keys, under the
    passphrase: nobody without this user's passphrase can make their client trust another chain.
    """
    sealed: dict[str, Any] = {"x25519": crypto.private_bytes(keys.x25519).hex(),
                              "ed25519": crypto.private_bytes(keys.ed25519).hex()}
    if root is not None:
        sealed["root"] = root
    secret = json.dumps(sealed).encode()
    kek = crypto.derive_kek(passphrase, kdf)
    return {
        "kdf": kdf.to_dict(),
        "sealed_keys": crypto.b64e(crypto.seal(kek, secret, _slot_aad(h.vault_id, user))),
        "x25519": keys.x25519_pub.hex(),
        "ed25519": keys.ed25519_pub.hex(),
        "vault_key": crypto.wrap_to(keys.x25519_pub, vault_key, vault_key_context(h, user)),
    }


def open_slot(h: hdr.Header, user: str, passphrase: str) -> tuple[UserKeys, dict[str, str] | None]:
    """Derive and unseal a user's keys and pinned root; unknown users cost the same Argon2id work."""
    slot = h.slots.get(user)
    if slot is None:
        # Same cost as a real slot, so timing does not tell whether the user exists.
        any_slot = next(iter(h.slots.values()), None)
        params = (crypto.KdfParams.from_dict(any_slot["kdf"]) if any_slot
                  else crypto.KdfParams.fresh(crypto.MIN_MEMORY_KIB, crypto.MIN_ITERATIONS))
        crypto.derive_kek(passphrase, params)
        raise auth_failed(user)
    try:
        kek = crypto.derive_kek(passphrase, crypto.KdfParams.from_dict(slot["kdf"]))
        secret = json.loads(crypto.unseal(kek, crypto.b64d(slot["sealed_keys"]), _slot_aad(h.vault_id, user)))
        keys = UserKeys(X25519PrivateKey.from_private_bytes(bytes.fromhex(secret["x25519"])),
                        Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret["ed25519"])))
    except (DecryptionError, KeyError, ValueError, TypeError):
        raise auth_failed(user) from None
    if keys.x25519_pub.hex() != slot.get("x25519") or keys.ed25519_pub.hex() != slot.get("ed25519"):
        raise VaultCorrupted("header.json: keyslot does not match its keys")
    root = secret.get("root")
    return keys, (dict(root) if isinstance(root, dict) else None)


def auth_failed(user: str) -> AuthenticationFailed:
    """The one message for an unknown user and a wrong passphrase; it names only the user *tried*."""
    return AuthenticationFailed(f"authentication failed for user {user[:64]!r}: unknown user or wrong passphrase")


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
    """An unlocked vault for one user. Close it to drop keys and connections.

    ``policy`` is the authorization state rebuilt from the verified audit chain (see
    :mod:`offline.vault.authz`); roles, grants and settings are read from it, never from the tables.
    """

    def __init__(self, vault_dir: Path, header: hdr.Header, user: str, keys: UserKeys,
                 vault_key: bytes, conn: db.Connection, verifier: chain.Verifier, root: dict[str, str]):
        self.vault_dir = vault_dir
        self.header = header
        self.user = user
        self.keys = keys
        self._vault_key = bytearray(vault_key)
        self.db = conn
        self.verifier = verifier
        self.root = root
        self._collections: dict[str, Any] = {}
        self.closed = False

    # -- identity and policy -------------------------------------------------------------
    @property
    def vault_id(self) -> str:
        return self.header.vault_id

    @property
    def vault_key(self) -> bytes:
        return bytes(self._vault_key)

    @property
    def policy(self) -> authz.Policy:
        return self.verifier.policy

    @property
    def role(self) -> str:
        """The caller's role as the signed chain records it ("removed" once they are not enrolled)."""
        return self.policy.role(self.user) or "removed"

    @property
    def fingerprint(self) -> str:
        return trust.show_fingerprint(self.root)

    def require_role(self, *roles: str, action: str) -> None:
        """Fail closed: raise :class:`AccessDenied` unless the caller has one of ``roles``."""
        if self.role not in roles:
            self.audit("access.denied", severity="warning", what=action, reason=f"role {self.role}")
            raise AccessDenied(f"access denied: {action} needs role {' or '.join(roles)}")

    def sync(self) -> None:
        """Verify and fold in the entries other processes appended since this session last looked."""
        seq, head = chain.head(self.db)
        if seq == self.verifier.seq:
            if head != self.verifier.prev:
                raise AuditChainBroken(f"audit entry {seq}: rewritten while this session was open", seq)
            return
        if seq < self.verifier.seq:
            raise AuditChainBroken(f"audit entry {seq + 1}: missing; the audit log was truncated while this "
                                   "session was open", seq + 1)
        new = self.verifier.clone()
        for e in chain.iter_entries(self.db, "seq > ?", (self.verifier.seq,)):
            new.feed(e)
        self.verifier = new

    def check_tables(self) -> None:
        """Raise :class:`VaultCorrupted` naming a planted schema object or the first protected row the
        signed policy does not hold."""
        db.check_schema(self.db, "vault", self.header.db_file)
        bad = authz.first_difference(self.policy.image, authz.read_image(self.db))
        if bad:
            raise VaultCorrupted(f"{self.header.db_file}: {bad}")

    @contextlib.contextmanager
    def change(self, action: str, *, severity: str = "info", **payload: Any) -> Iterator[dict[str, Any]]:
        """One authorization change: the table writes and the entry that carries them, in one commit.

        Inside the write lock the chain is synced and the tables checked against the signed policy,
        so the block reads only rows that verify. Whatever the block writes to the protected tables
        becomes the entry's ``authz`` changes; the entry goes through the same checks as in
        ``audit verify`` before the commit (a change this user may not make is rolled back). The
        block may add payload fields to the dict it is given.
        """
        extra: dict[str, Any] = {}
        saved = self.verifier
        with db.transaction(self.db):
            self.sync()
            db.check_schema(self.db, "vault", self.header.db_file)  # a planted trigger would fire in here
            before = authz.read_image(self.db)
            bad = authz.first_difference(self.policy.image, before)
            if bad:
                raise VaultCorrupted(f"{self.header.db_file}: {bad}")
            yield extra
            changes = authz.diff(before, authz.read_image(self.db))
            entry = chain.append_in_transaction(self.db, self.user, self.keys.ed25519, action,
                                                {**payload, **extra, "authz": changes}, severity)
            try:
                new = self.verifier.clone()
                new.feed(entry)
            except AuditChainBroken as exc:
                self.verifier = saved
                raise AccessDenied(f"access denied: {action} ({exc})") from None
            self.verifier = new
        self.remember()

    # -- settings ------------------------------------------------------------------------
    def setting(self, key: str) -> str:
        """A vault setting as the signed chain last set it (defaults otherwise)."""
        value = self.policy.setting(key)
        if value is None:
            return DEFAULT_SETTINGS[key]
        return vsettings.LEGACY.get((key, value), value)

    def set_setting(self, key: str, value: str) -> str:
        """Change a setting (admin): validated, stored canonically, carried by a signed entry."""
        self.require_role("admin", action="changing vault settings")
        value = vsettings.normalise(key, value)
        with self.change("settings.set", severity="notice", key=key, value=value):
            self.db.execute("INSERT OR REPLACE INTO settings(key, value) VALUES (?, ?)", (key, value))
        if key == "break_glass" and value == "off":
            from .emergency import disable_everywhere

            disable_everywhere(self)  # no emergency wrap outlives the vault-wide switch
        return value

    # -- audit ---------------------------------------------------------------------------
    def audit(self, action: str, *, severity: str = "info", **payload: Any) -> chain.Entry:
        """Append a signed entry for this user to the vault's audit chain.

        Synced inside the write lock first: a user removed by another process writes nothing more.
        """
        if "authz" in payload:
            raise ValueError("authorization changes go through Session.change")
        with db.transaction(self.db):
            self.sync()
            if self.policy.user(self.user) is None:
                raise VaultLocked(f"user {self.user!r} is no longer enrolled in this vault")
            return chain.append_in_transaction(self.db, self.user, self.keys.ed25519, action, payload, severity)

    def remember(self) -> None:
        """Save the verified head in this user's sealed client state (see :mod:`offline.vault.trust`)."""
        with contextlib.suppress(OSError):
            trust.save_state(self.vault_dir, self.user, self.keys.x25519, self.vault_id, self.verifier.to_json())

    # -- lifecycle -----------------------------------------------------------------------
    def refresh(self) -> None:
        """Before each command of a long-lived session (the agent): follow the vault as it is now.

        Raises :class:`VaultLocked` when this user's keyslot is gone or changed keys (removed),
        follows a vault database re-keyed by another process with our own keyslot, then syncs the
        chain and checks the protected tables as an open would.
        """
        import hmac

        h = hdr.load(self.vault_dir)
        slot = h.slots.get(self.user)
        if slot is None or slot.get("x25519") != self.keys.x25519_pub.hex():
            raise VaultLocked("user removed")
        try:
            key = crypto.unwrap_with(self.keys.x25519, slot["vault_key"], vault_key_context(h, self.user))
        except DecryptionError:
            raise VaultLocked("keyslot changed") from None
        if not hmac.compare_digest(key, self.vault_key) or h.db_file != self.header.db_file:
            conn = db.connect(self.vault_dir / h.db_file, key, "vault")
            self.forget_handles()
            with contextlib.suppress(Exception):
                self.db.close()
            for i in range(len(self._vault_key)):
                self._vault_key[i] = 0
            self._vault_key = bytearray(key)
            self.db = conn
        self.header = h
        self.sync()
        if self.policy.user(self.user) is None:
            raise VaultLocked("user removed")
        self.check_tables()
        check_slots(h, self.policy)

    def forget_handles(self) -> None:
        """Close every open collection (the agent does so between commands)."""
        for handle in self._collections.values():
            with contextlib.suppress(Exception):
                handle.close()
        self._collections.clear()

    def close(self) -> None:
        if self.closed:
            return
        self.forget_handles()
        with contextlib.suppress(Exception):
            self.sync()
        with contextlib.suppress(Exception):
            self.remember()
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
    root = {"vault_id": h.vault_id, "founder": admin, "founder_ed25519": keys.ed25519_pub.hex(),
            "audit_public_key": audit_pub}
    kdf = kdf_params_for_new_slot()
    conn = db.connect(vault_dir / h.db_file, vault_key, "vault", create=True)
    try:
        verifier = chain.Verifier(authz.Policy())
        with db.transaction(conn):
            before = authz.read_image(conn)
            conn.execute("INSERT INTO users(name, role, x25519_pub, ed25519_pub, created_at, created_by)"
                         " VALUES (?, 'admin', ?, ?, ?, NULL)",
                         (admin, keys.x25519_pub.hex(), keys.ed25519_pub.hex(), utc_now()))
            for k, v in DEFAULT_SETTINGS.items():
                conn.execute("INSERT INTO settings(key, value) VALUES (?, ?)", (k, v))
            conn.execute("INSERT INTO settings(key, value) VALUES ('audit_public_key', ?)", (audit_pub,))
            conn.execute("INSERT INTO vault_keys(purpose, user, wrapped) VALUES ('audit', ?, ?)",
                         (admin, crypto.wrap_to(keys.x25519_pub, crypto.private_bytes(audit_key),
                                                audit_key_context(h.vault_id, admin))))
            _install_seal_key(conn, h.vault_id, seal_key, {admin: keys.x25519_pub})
            payload = {"vault_id": h.vault_id, "ed25519": keys.ed25519_pub.hex(), "audit_public_key": audit_pub,
                       "fingerprint": trust.fingerprint(root),
                       "kdf": {k: v for k, v in kdf.to_dict().items() if k != "salt"},
                       "authz": authz.diff(before, authz.read_image(conn))}
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


def audit_key_context(vault_id: str, user: str) -> str:
    return f"audit-key|{vault_id}|{user}"


def open_session(vault_dir: Path, user: str, passphrase: str | Callable[[], str], *,
                 accept_restore: bool = False) -> Session:
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
    return open_with_keys(vault_dir, h, user, keys, root, accept_restore=accept_restore,
                          pin_root=lambda v: _pin_root(vault_dir, user, secret, keys, v))


def open_with_keys(vault_dir: Path, h: hdr.Header, user: str, keys: UserKeys, root: dict[str, str] | None, *,
                   accept_restore: bool = False, pin_root: Callable[[chain.Verifier], dict[str, str]] | None = None,
                   own_state_only: bool = False) -> Session:
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
        verifier = _verified_chain(vault_dir, h, user, keys, conn, use_anchor=not accept_restore,
                                   use_folder=not own_state_only)
        if root is None:  # a keyslot made before roots were pinned: pin this chain's root now
            if pin_root is None:
                raise VaultCorrupted("header.json: this slot pins no root")
            root = pin_root(verifier)
        if not trust.same_root(root, verifier.root):
            raise AuditChainBroken(
                "audit entry 1: the audit log does not start at this vault's pinned root (vault "
                f"fingerprint {trust.show_fingerprint(root)}); the whole history was replaced", 1)
        if not verifier.policy.started:
            raise OfflineError("this vault was made by an older version of offline: an admin must open it "
                               "once with this version to sign its authorization state")
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
    if row.get("keys_confirmed", 1) == 0:  # an upgraded vault: this open proves our own keys
        with session.change("user.confirm_keys", name=user):
            session.db.execute("UPDATE users SET keys_confirmed = 1 WHERE name = ?", (user,))
    if accept_restore:
        anchor = trust.load_state(vault_dir, user, keys.x25519, h.vault_id)
        seen = int(anchor["verifier"]["seq"]) if anchor else 0
        session.audit("vault.restore_accepted", severity="high", head_seq=verifier.seq, previously_seen_seq=seen)
        trust.forget_anchor(vault_dir, user, h.vault_id)
    session.remember()
    flush_failed_unlocks(session)
    from .maintenance import finish_pending, remove_orphans

    remove_orphans(session)
    finish_pending(session)
    return session


def _verified_chain(vault_dir: Path, h: hdr.Header, user: str, keys: UserKeys, conn: db.Connection, *,
                    use_anchor: bool = True, use_folder: bool = True) -> chain.Verifier:
    """Resume from this user's last-seen head (checked still to be in the chain), verify the rest."""
    state = trust.load_state(vault_dir, user, keys.x25519, h.vault_id, use_anchor=use_anchor,
                             use_folder=use_folder)
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


def check_slots(h: hdr.Header, policy: authz.Policy) -> None:
    """Every keyslot's public keys are the ones the signed users table holds for that user.

    ``header.json`` is not authenticated; a slot naming someone else's keys would get the vault key
    wrapped to its author at the next rotation. (Slots of users the policy no longer enrols are
    finished off by an admin's open, see ``maintenance.finish_removals``.)
    """
    for user, slot in h.slots.items():
        row = policy.user(user)
        if row is not None and (slot.get("x25519") != row["x25519_pub"] or slot.get("ed25519") != row["ed25519_pub"]):
            raise VaultCorrupted(f"header.json: keyslot of {user!r} does not match the signed users table")


def check_seen(conn: Any, user: str, seq: int, digest: str) -> None:
    """The chain still holds entry ``seq`` with hash ``digest`` (the last one ``user``'s client saw)."""
    if not seq:
        return
    row = conn.execute("SELECT hash FROM audit_log WHERE seq = ?", (seq,)).fetchone()
    if row is None:
        first = chain.head(conn)[0] + 1
        raise AuditChainBroken(f"audit entry {first}: missing; the audit log was truncated (it ends before "
                               f"entry {seq}, which {user} already saw; a backup restored on purpose: "
                               "`offline vault accept-restore`)", first)
    if row[0] != digest:
        raise AuditChainBroken(f"audit entry {seq}: not the entry {user} saw there (the audit log was "
                               "rewritten)", seq)


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
    from .legacy import check_legacy_tables

    with db.transaction(conn):
        check_legacy_tables(conn, verifier, user)
        # Sealed to the adopter only: the others' keys are unproven until they open the vault; an
        # admin shares it with them afterwards (maintenance.finish_pending).
        vault_id = str(verifier.root["vault_id"]) if verifier.root else ""
        _install_seal_key(conn, vault_id, X25519PrivateKey.generate(), {user: keys.x25519_pub})
        changes = authz.diff(authz.Policy().image, authz.read_image(conn))
        entry = chain.append_in_transaction(conn, user, keys.ed25519, "authz.adopt", {"authz": changes}, "notice")
        verifier.feed(entry)


def _pin_root(vault_dir: Path, user: str, passphrase: str, keys: UserKeys, verifier: chain.Verifier) -> dict[str, str]:
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


def flush_failed_unlocks(session: Session) -> None:
    """Move the parked unlock failures into the signed audit log (at every open; the server also after requests)."""
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
            extra = {"via": str(rec["via"])} if rec.get("via") else {}
            session.audit("unlock.failed", severity="warning", attempted_user=str(rec.get("user")),
                          at=str(rec.get("ts")), **extra)
        path.unlink(missing_ok=True)


# -- users ------------------------------------------------------------------------------------

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
        from .collections import wrap_all_collection_keys_for
        from .emergency import provision_user

        with session.change("user.add", name=name, role=role, ed25519=keys.ed25519_pub.hex()) as extra:
            if name in h.slots or session.policy.user(name) is not None:
                raise AlreadyExists(f"user {name!r} already exists")
            session.db.execute("DELETE FROM users WHERE name = ?", (name,))
            session.db.execute(
                "INSERT INTO users(name, role, x25519_pub, ed25519_pub, created_at, created_by)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (name, role, keys.x25519_pub.hex(), keys.ed25519_pub.hex(), utc_now(), session.user))
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


def share_seal_key(session: Session, name: str, x25519_pub: bytes) -> None:
    """Give an admin or auditor the audit seal key (inside a change)."""
    _install_seal_key(session.db, session.vault_id, _load_seal_key(session), {name: x25519_pub})


def _share_audit_key(session: Session, name: str, x25519_pub: bytes) -> None:
    audit_priv = load_audit_key(session)
    session.db.execute("INSERT OR REPLACE INTO vault_keys(purpose, user, wrapped) VALUES ('audit', ?, ?)",
                       (name, crypto.wrap_to(x25519_pub, crypto.private_bytes(audit_priv),
                                             audit_key_context(session.vault_id, name))))
    _install_seal_key(session.db, session.vault_id, _load_seal_key(session), {name: x25519_pub})


# -- sealing for auditors: question text and subject ids in the audit log ----------------------
# Every member's client must record what was asked, but no member may read it back (an unsalted
# hash of "does John Doe have HIV" is confirmed by one guess). So the client seals it to the vault's
# X25519 "audit seal" key, whose private half only admins and auditors hold.

SEAL_PURPOSE = "audit-seal"


def _seal_context(vault_id: str, user: str) -> str:
    return f"audit-seal-key|{vault_id}|{user}"


def _install_seal_key(conn: Any, vault_id: str, key: X25519PrivateKey, holders: dict[str, bytes]) -> None:
    conn.execute("INSERT OR REPLACE INTO settings(key, value) VALUES ('audit_seal_public_key', ?)",
                 (crypto.x25519_public_bytes(key).hex(),))
    for user, pub in holders.items():
        conn.execute("INSERT OR REPLACE INTO vault_keys(purpose, user, wrapped) VALUES (?, ?, ?)",
                     (SEAL_PURPOSE, user, crypto.wrap_to(pub, crypto.private_bytes(key),
                                                         _seal_context(vault_id, user))))


def _load_seal_key(session: Session) -> X25519PrivateKey:
    wrapped = signed_wrap(session, "vault_keys", SEAL_PURPOSE, session.user) \
        if session.role in ("admin", "auditor") else None
    if wrapped is None:
        raise AccessDenied("access denied: only admins and auditors hold the audit seal key")
    return X25519PrivateKey.from_private_bytes(
        crypto.unwrap_with(session.keys.x25519, wrapped, _seal_context(session.vault_id, session.user)))


def seal_for_auditors(session: Session, text: str) -> str:
    """``sealed:`` + ``text`` encrypted to the vault's audit seal key (admins and auditors open it)."""
    pub = session.policy.setting("audit_seal_public_key")
    if pub is None:
        raise OfflineError("this vault has no audit seal key; an admin must open it once with this version")
    return "sealed:" + crypto.wrap_to(bytes.fromhex(pub), text.encode("utf-8"),
                                      f"audit-seal|{session.vault_id}")


def unseal_for_auditors(session: Session, sealed: str) -> str:
    """The text inside a ``sealed:`` value (admins and auditors only)."""
    if not isinstance(sealed, str) or not sealed.startswith("sealed:"):
        raise UsageError("not a sealed value")
    key = _load_seal_key(session)
    return crypto.unwrap_with(key, sealed.removeprefix("sealed:"), f"audit-seal|{session.vault_id}").decode("utf-8")


def signed_wrap(session: Session, table: str, *key: Any) -> str | None:
    """A key wrap from ``table`` if the signed policy holds exactly this wrap; exit 5 if it was swapped.

    Never unwrap a row for what it is: a member can write any ciphertext into these tables.
    """
    keys, _ = authz.TABLES[table]
    where = " AND ".join(f"{k} = ?" for k in keys)
    row = session.db.execute(f"SELECT wrapped FROM {table} WHERE {where}", key).fetchone()  # noqa: S608
    expected = session.policy.wrap_digest(table, *key)
    if row is None and expected is None:
        return None
    if row is None or expected is None or authz.cell("wrapped", row[0]) != expected:
        raise VaultCorrupted(f"{session.header.db_file}: table {table}, row {authz.row_key(key)}: "
                             "key wrap not in the signed audit log")
    return row[0]


def load_audit_key(session: Session) -> Ed25519PrivateKey:
    """The vault's audit signing key (admins and auditors hold a wrapped copy)."""
    wrapped = signed_wrap(session, "vault_keys", "audit", session.user) \
        if session.role in ("admin", "auditor") else None
    if wrapped is None:
        raise AccessDenied("access denied: only admins and auditors hold the audit signing key")
    raw = crypto.unwrap_with(session.keys.x25519, wrapped, audit_key_context(session.vault_id, session.user))
    return Ed25519PrivateKey.from_private_bytes(raw)


def list_users(session: Session) -> list[dict[str, Any]]:
    """Enrolled users, from the signed policy (admins and auditors see everyone; members themselves)."""
    users = [{"name": n, "role": r["role"], "created_at": r["created_at"], "created_by": r["created_by"] or "-"}
             for n, r in session.policy.users().items()]
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
            held = [r[0] for r in session.db.execute(
                "SELECT DISTINCT c.name FROM collections c WHERE c.id IN (SELECT collection_id FROM collection_keys"
                " WHERE user = ?) OR c.id IN (SELECT substr(purpose, 13) FROM vault_keys WHERE user = ?"
                " AND purpose LIKE 'break-glass:%') ORDER BY c.name", (name, name))]
            for table in ("grants", "collection_keys", "vault_keys", "adapter_keys"):
                session.db.execute(f"DELETE FROM {table} WHERE user = ?", (name,))  # noqa: S608
            session.db.execute("UPDATE users SET removed_at = ? WHERE name = ?", (utc_now(), name))
            extra["rotated_collections"] = held
    # The keyslot goes with the vault key rotation below (one atomic header swap). Should this
    # process die first, the next admin to open the vault finishes it (see finish_removals).
    from .collections import rotate_collection_key
    from .maintenance import rotate_vault_db_key

    for coll in held:
        rotate_collection_key(session, coll, reason=f"user {name} removed")
    rotate_vault_db_key(session, reason=f"user {name} removed")
    return {"name": name, "removed": True, "rotated_collections": held, "vault_key_rotated": True}


def change_passphrase(session: Session, new_passphrase: str) -> None:
    """Re-seal only this user's slot under a new passphrase (fresh salt, current KDF cost)."""
    kdf = kdf_params_for_new_slot()
    with vault_lock(session.vault_dir):
        h = hdr.load(session.vault_dir)
        h.slots[session.user] = make_slot(h, session.user, new_passphrase, session.keys, session.vault_key,
                                          kdf, session.root)
        h.save(session.vault_dir)
        session.header = h
    session.audit("user.passwd", name=session.user)


def new_id() -> str:
    return uuid.uuid4().hex[:16]
