"""The session every command works through: one authenticated user, their keys, the vault database.

A :class:`Session` holds the user's private keys in memory, a connection to the vault database and
the verified audit chain (whose policy says what the user may do). Collection access goes through
:mod:`offline.vault.collections`; unlocking and enrolment through :mod:`offline.vault.users`.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ..audit import chain
from ..errors import (
    AccessDenied,
    AuditChainBroken,
    DecryptionError,
    OfflineError,
    UsageError,
    VaultCorrupted,
    VaultLocked,
)
from ..memwipe import wipe
from . import authz, crypto, db, trust
from . import header as hdr
from . import settings as vsettings
from .keys import SEAL_PURPOSE, UserKeys, audit_key_context, install_seal_key, seal_context, vault_key_context

DEFAULT_SETTINGS = vsettings.DEFAULTS


class Session:
    """An unlocked vault for one user. Close it to drop keys and connections.

    ``policy`` is the authorization state rebuilt from the verified audit chain (see
    :mod:`offline.vault.authz`); roles, grants and settings are read from it, never from the tables.
    """

    def __init__(
        self,
        vault_dir: Path,
        header: hdr.Header,
        user: str,
        keys: UserKeys,
        vault_key: bytes,
        conn: db.Connection,
        verifier: chain.Verifier,
        root: dict[str, str],
    ):
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
            raise AuditChainBroken(
                f"audit entry {seq + 1}: missing; the audit log was truncated while this session was open",
                seq + 1,
            )
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
            entry = chain.append_in_transaction(
                self.db,
                self.user,
                self.keys.ed25519,
                action,
                {**payload, **extra, "authz": changes},
                severity,
            )
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
            return chain.append_in_transaction(
                self.db, self.user, self.keys.ed25519, action, payload, severity
            )

    def remember(self) -> None:
        """Save the verified head in this user's sealed client state (see :mod:`offline.vault.trust`)."""
        with contextlib.suppress(OSError):
            trust.save_state(
                self.vault_dir, self.user, self.keys.x25519, self.vault_id, self.verifier.to_json()
            )

    # -- lifecycle -----------------------------------------------------------------------
    def refresh(self) -> None:
        """Before each command of a long-lived session (the agent): follow the vault as it is now.

        Raises :class:`VaultLocked` when this user's keyslot is gone or changed keys (removed),
        follows a vault database re-keyed by another process with our own keyslot, then syncs the
        chain and checks the protected tables as an open would.
        """
        h = hdr.load(self.vault_dir)
        slot = h.slots.get(self.user)
        if slot is None or slot.get("x25519") != self.keys.x25519_pub.hex():
            raise VaultLocked("user removed")
        try:
            key = crypto.unwrap_with(self.keys.x25519, slot["vault_key"], vault_key_context(h, self.user))
        except DecryptionError:
            raise VaultLocked("keyslot changed") from None
        try:
            if not hmac.compare_digest(key, self._vault_key) or h.db_file != self.header.db_file:
                self.switch_database(h, key, db.connect(self.vault_dir / h.db_file, key, "vault"))
        finally:
            wipe(key)  # a copy per request: never left in freed memory
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

    def switch_database(self, header: hdr.Header, vault_key: bytes, conn: db.Connection) -> None:
        """Move to a re-keyed vault database: ``conn`` opened with ``vault_key``, named in ``header``.

        Open collections are closed (their keys may have rotated with it), the old connection
        closed and the old vault key zeroed.
        """
        self.forget_handles()
        with contextlib.suppress(Exception):
            self.db.close()
        for i in range(len(self._vault_key)):
            self._vault_key[i] = 0
        self._vault_key = bytearray(vault_key)
        self.db = conn
        self.header = header

    # -- open collections (grants are checked when one is opened; see vault.collections) ---------
    def cached_handle(self, name: str) -> Any:
        """The collection ``name`` already opened in this session, or None."""
        return self._collections.get(name)

    def keep_handle(self, name: str, handle: Any) -> None:
        """Remember an opened collection until :meth:`drop_handle` or :meth:`forget_handles`."""
        self._collections[name] = handle

    def drop_handle(self, name: str) -> None:
        """Close and forget the open collection ``name`` (re-keyed, dropped, or an emergency read done)."""
        handle = self._collections.pop(name, None)
        if handle is not None:
            handle.close()

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


def check_slots(h: hdr.Header, policy: authz.Policy) -> None:
    """Every keyslot's public keys are the ones the signed users table holds for that user.

    ``header.json`` is not authenticated; a slot naming someone else's keys would get the vault key
    wrapped to its author at the next rotation. (Slots of users the policy no longer enrols are
    finished off by an admin's open, see ``maintenance.finish_removals``.)
    """
    for user, slot in h.slots.items():
        row = policy.user(user)
        if row is not None and (
            slot.get("x25519") != row["x25519_pub"] or slot.get("ed25519") != row["ed25519_pub"]
        ):
            raise VaultCorrupted(f"header.json: keyslot of {user!r} does not match the signed users table")


def check_seen(conn: Any, user: str, seq: int, digest: str) -> None:
    """The chain still holds entry ``seq`` with hash ``digest`` (the last one ``user``'s client saw)."""
    if not seq:
        return
    row = conn.execute("SELECT hash FROM audit_log WHERE seq = ?", (seq,)).fetchone()
    if row is None:
        first = chain.head(conn)[0] + 1
        raise AuditChainBroken(
            f"audit entry {first}: missing; the audit log was truncated (it ends before "
            f"entry {seq}, which {user} already saw; a backup restored on purpose: "
            "`offline vault accept-restore`)",
            first,
        )
    if row[0] != digest:
        raise AuditChainBroken(
            f"audit entry {seq}: not the entry {user} saw there (the audit log was rewritten)", seq
        )


def share_seal_key(session: Session, name: str, x25519_pub: bytes) -> None:
    """Give an admin or auditor the audit seal key (inside a change)."""
    install_seal_key(session.db, session.vault_id, load_seal_key(session), {name: x25519_pub})


def load_seal_key(session: Session) -> X25519PrivateKey:
    wrapped = (
        signed_wrap(session, "vault_keys", SEAL_PURPOSE, session.user)
        if session.role in ("admin", "auditor")
        else None
    )
    if wrapped is None:
        raise AccessDenied("access denied: only admins and auditors hold the audit seal key")
    return X25519PrivateKey.from_private_bytes(
        crypto.unwrap_with(session.keys.x25519, wrapped, seal_context(session.vault_id, session.user))
    )


def seal_for_auditors(session: Session, text: str) -> str:
    """``sealed:`` + ``text`` encrypted to the vault's audit seal key (admins and auditors open it)."""
    pub = session.policy.setting("audit_seal_public_key")
    if pub is None:
        raise OfflineError("this vault has no audit seal key; an admin must open it once with this version")
    return "sealed:" + crypto.wrap_to(
        bytes.fromhex(pub), text.encode("utf-8"), f"audit-seal|{session.vault_id}"
    )


def unseal_for_auditors(session: Session, sealed: str) -> str:
    """The text inside a ``sealed:`` value (admins and auditors only)."""
    if not isinstance(sealed, str) or not sealed.startswith("sealed:"):
        raise UsageError("not a sealed value")
    key = load_seal_key(session)
    return crypto.unwrap_with(key, sealed.removeprefix("sealed:"), f"audit-seal|{session.vault_id}").decode(
        "utf-8"
    )


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
        raise VaultCorrupted(
            f"{session.header.db_file}: table {table}, row {authz.row_key(key)}: "
            "key wrap not in the signed audit log"
        )
    return row[0]


def load_audit_key(session: Session) -> Ed25519PrivateKey:
    """The vault's audit signing key (admins and auditors hold a wrapped copy)."""
    wrapped = (
        signed_wrap(session, "vault_keys", "audit", session.user)
        if session.role in ("admin", "auditor")
        else None
    )
    if wrapped is None:
        raise AccessDenied("access denied: only admins and auditors hold the audit signing key")
    raw = crypto.unwrap_with(session.keys.x25519, wrapped, audit_key_context(session.vault_id, session.user))
    return Ed25519PrivateKey.from_private_bytes(raw)
