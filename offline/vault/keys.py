"""Vault primitives below the session: names, keyslots, key-wrap contexts, the vault lock.

Nothing here needs an open :class:`~offline.vault.session.Session`; the session and everything
above it build on these. (Layering, one way: ``keys`` -> ``session`` -> ``emergency`` ->
``collections`` -> ``maintenance`` -> ``users``; ``core`` re-exports the old names.)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ..errors import AuthenticationFailed, DecryptionError, OfflineError, UsageError, VaultCorrupted
from . import crypto
from . import header as hdr

ROLES = ("admin", "member", "auditor")
LOCK_FILE = ".lock"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
KDF_TARGET_ENV = "OFFLINE_KDF_TARGET_S"  # seconds of Argon2id per unlock (default 0.5)


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


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


def make_slot(
    h: hdr.Header,
    user: str,
    passphrase: str,
    keys: UserKeys,
    vault_key: bytes,
    kdf: crypto.KdfParams,
    root: dict[str, str] | None,
) -> dict[str, Any]:
    """A keyslot: KDF params, sealed private keys and pinned root, public keys, wrapped vault key.

    ``root`` (vault id, founding admin key, audit key) is sealed with the private keys, under the
    passphrase: nobody without this user's passphrase can make their client trust another chain.
    """
    sealed: dict[str, Any] = {
        "x25519": crypto.private_bytes(keys.x25519).hex(),
        "ed25519": crypto.private_bytes(keys.ed25519).hex(),
    }
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
        params = (
            crypto.KdfParams.from_dict(any_slot["kdf"])
            if any_slot
            else crypto.KdfParams.fresh(crypto.MIN_MEMORY_KIB, crypto.MIN_ITERATIONS)
        )
        crypto.derive_kek(passphrase, params)
        raise auth_failed(user)
    try:
        kek = crypto.derive_kek(passphrase, crypto.KdfParams.from_dict(slot["kdf"]))
        secret = json.loads(crypto.unseal(kek, crypto.b64d(slot["sealed_keys"]), _slot_aad(h.vault_id, user)))
        keys = UserKeys(
            X25519PrivateKey.from_private_bytes(bytes.fromhex(secret["x25519"])),
            Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret["ed25519"])),
        )
    except (DecryptionError, KeyError, ValueError, TypeError):
        raise auth_failed(user) from None
    if keys.x25519_pub.hex() != slot.get("x25519") or keys.ed25519_pub.hex() != slot.get("ed25519"):
        raise VaultCorrupted("header.json: keyslot does not match its keys")
    root = secret.get("root")
    return keys, (dict(root) if isinstance(root, dict) else None)


def auth_failed(user: str) -> AuthenticationFailed:
    """The one message for an unknown user and a wrong passphrase; it names only the user *tried*."""
    return AuthenticationFailed(
        f"authentication failed for user {user[:64]!r}: unknown user or wrong passphrase"
    )


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


def audit_key_context(vault_id: str, user: str) -> str:
    return f"audit-key|{vault_id}|{user}"


def new_id() -> str:
    return uuid.uuid4().hex[:16]


# Every member's client must record what was asked, but no member may read it back (an unsalted
# hash of "does John Doe have HIV" is confirmed by one guess). So the client seals it to the vault's
# X25519 "audit seal" key, whose private half only admins and auditors hold.

SEAL_PURPOSE = "audit-seal"


def seal_context(vault_id: str, user: str) -> str:
    return f"audit-seal-key|{vault_id}|{user}"


def install_seal_key(conn: Any, vault_id: str, key: X25519PrivateKey, holders: dict[str, bytes]) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO settings(key, value) VALUES ('audit_seal_public_key', ?)",
        (crypto.x25519_public_bytes(key).hex(),),
    )
    for user, pub in holders.items():
        conn.execute(
            "INSERT OR REPLACE INTO vault_keys(purpose, user, wrapped) VALUES (?, ?, ?)",
            (
                SEAL_PURPOSE,
                user,
                crypto.wrap_to(pub, crypto.private_bytes(key), seal_context(vault_id, user)),
            ),
        )
