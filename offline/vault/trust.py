"""What a user's own client trusts: the vault's pinned root and the last audit head it saw.

A member can rewrite every table and the whole audit chain, but not two things:

- **the root**, pinned inside each user's keyslot. It is sealed under the key derived from that
  user's passphrase when the slot is made, so nobody without the passphrase can change it. It names
  the vault id, the founding admin's signing key and the vault audit key: a chain rebuilt from
  ``vault.init`` needs the founder's private key to start the same way. Its fingerprint is shown at
  ``init``, printed by ``audit verify`` and ``doctor`` and carried in every export manifest, for a
  reviewer to compare with the one recorded at set-up.
- **the client state** (``VAULT/clients/<user>.state``), sealed under a key derived from the
  user's own X25519 private key: the last chain position the user's client verified, and the
  verifier's state there. The next command checks the chain still holds that entry with that
  hash, so a truncated or rewritten chain is caught by anyone who saw the old head, and it only
  verifies entries written since. A second copy lives outside the vault folder, in the user's own
  kit home (``OFFLINE_HOME/seen/``), and the newer of the two counts: putting back an older state
  file together with a truncated log is caught as long as that home is out of the attacker's
  reach. A backup restored in place looks exactly like such a rollback; ``offline vault
  accept-restore`` says so on purpose (audited, high).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .. import config
from ..errors import DecryptionError, VaultCorrupted
from . import crypto

CLIENTS_DIR = "clients"
FINGERPRINT_DOMAIN = "offline-vault-fingerprint/v1"
STATE_VERSION = 1


def fingerprint(root: dict[str, str]) -> str:
    """sha256 hex of ``offline-vault-fingerprint/v1|VAULT_ID|FOUNDER_ED25519|AUDIT_KEY``.

    A reviewer recomputes it with ``printf '%s' '...|...|...|...' | sha256sum`` from an export
    manifest's fields (docs/audit-review.md).
    """
    text = f"{FINGERPRINT_DOMAIN}|{root['vault_id']}|{root['founder_ed25519']}|{root['audit_public_key']}"
    return hashlib.sha256(text.encode()).hexdigest()


def show_fingerprint(root: dict[str, str]) -> str:
    """The first 128 bits in groups of four, for people to read aloud and compare."""
    fp = fingerprint(root)[:32]
    return " ".join(fp[i : i + 4] for i in range(0, 32, 4))


def same_root(pinned: dict[str, str], found: dict[str, str] | None) -> bool:
    keys = ("vault_id", "founder_ed25519", "audit_public_key")
    return found is not None and all(str(pinned.get(k)) == str(found.get(k)) for k in keys)


def _state_key(x25519: X25519PrivateKey, vault_id: str, user: str) -> bytes:
    info = f"offline/v1/client-state|{vault_id}|{user}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=crypto.KEY_BYTES, salt=None, info=info).derive(
        crypto.private_bytes(x25519)
    )


def _aad(vault_id: str, user: str) -> bytes:
    return f"offline/v1/client-state|{vault_id}|{user}".encode()


def state_path(vault_dir: Path, user: str) -> Path:
    return Path(vault_dir) / CLIENTS_DIR / f"{user}.state"


def anchor_path(vault_dir: Path, user: str, vault_id: str) -> Path:
    """The copy outside the vault folder, per vault location (a backup opened where it lies is another).

    The path as given, not resolved: a symlink planted at the vault's path, pointing at an older
    copy elsewhere, must still meet the memory of the path the user always opens.
    """
    where = hashlib.sha256(os.path.abspath(vault_dir).encode()).hexdigest()[:16]
    return config.home() / "seen" / f"{vault_id}-{where}" / f"{user}.state"


def load_state(
    vault_dir: Path,
    user: str,
    x25519: X25519PrivateKey,
    vault_id: str,
    *,
    use_anchor: bool = True,
    use_folder: bool = True,
) -> dict[str, Any] | None:
    """The newer of the user's two sealed client states, or None; exit 5 if either was altered.

    ``use_folder=False`` (the team server): only the copy in this process's own home counts. The
    copy in the vault folder is sealed under the user's own key, so that user can forge it, which
    fools only their own client, unless a server that acts for them trusted it too.
    """
    found = [
        d
        for d in (
            _load(state_path(vault_dir, user), user, x25519, vault_id) if use_folder else None,
            _load(anchor_path(vault_dir, user, vault_id), user, x25519, vault_id) if use_anchor else None,
        )
        if d is not None
    ]
    return max(found, key=lambda d: int(d["verifier"]["seq"])) if found else None


def _load(path: Path, user: str, x25519: X25519PrivateKey, vault_id: str) -> dict[str, Any] | None:
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError:
        raise VaultCorrupted(f"{CLIENTS_DIR}/{path.name}: unreadable") from None
    try:
        doc = json.loads(crypto.unseal(_state_key(x25519, vault_id, user), blob, _aad(vault_id, user)))
        if doc.get("version") != STATE_VERSION:
            raise ValueError
    except (DecryptionError, ValueError, TypeError, AttributeError):
        raise VaultCorrupted(f"{CLIENTS_DIR}/{path.name}: {user}'s client state was altered") from None
    return doc


@contextlib.contextmanager
def _state_lock(vault_dir: Path, user: str):
    folder = config.ensure_private_dir(Path(vault_dir) / CLIENTS_DIR)
    fd = os.open(folder / f".{user}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def save_state(
    vault_dir: Path, user: str, x25519: X25519PrivateKey, vault_id: str, verifier: dict[str, Any]
) -> None:
    """Remember ``verifier`` (a :class:`~offline.audit.chain.Verifier` as JSON); never move backwards.

    Two processes of one user may close in any order: the later save of an earlier head is skipped.
    """
    doc = {"version": STATE_VERSION, "vault_id": vault_id, "user": user, "verifier": verifier}
    blob = crypto.seal(_state_key(x25519, vault_id, user), json.dumps(doc).encode(), _aad(vault_id, user))
    with _state_lock(vault_dir, user):
        for path in (state_path(vault_dir, user), anchor_path(vault_dir, user, vault_id)):
            with contextlib.suppress(VaultCorrupted):
                old = _load(path, user, x25519, vault_id)
                if old is not None and int(old["verifier"]["seq"]) >= int(verifier["seq"]):
                    continue
            with contextlib.suppress(OSError):  # a read-only home must not stop the vault
                config.ensure_private_dir(path.parent)
                config.write_private_file(path, blob)


def forget_anchor(vault_dir: Path, user: str, vault_id: str) -> None:
    """Drop the out-of-folder copy (``vault accept-restore``): the vault's own state counts again."""
    anchor_path(vault_dir, user, vault_id).unlink(missing_ok=True)
