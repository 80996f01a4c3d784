"""``header.json``: format version, vault id, one keyslot per user, one per API token.

Nothing secret in clear.

A keyslot holds the user's Argon2id parameters, their X25519/Ed25519 private keys sealed under the
passphrase-derived key, their public keys, and the vault database key wrapped to their X25519 key
(so a rekey can re-wrap every slot without anyone's passphrase). A token slot (``tokens``, see
:mod:`offline.vault.tokens`) seals the same private keys under a key derived from an API token.
"""

from __future__ import annotations

import datetime as _dt
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import config
from ..errors import InvalidInput, NotFound, OfflineError, UsageError, VaultCorrupted

FORMAT = "offline-vault"
FORMAT_VERSION = 1
HEADER = "header.json"


@dataclass
class Header:
    vault_id: str
    db_file: str
    created_at: str
    slots: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    version: int = FORMAT_VERSION

    @classmethod
    def new(cls) -> Header:
        now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        return cls(vault_id=uuid.uuid4().hex, db_file=f"vault-{uuid.uuid4().hex[:8]}.db", created_at=now)

    def to_json(self) -> bytes:
        doc = {
            "format": FORMAT,
            "version": self.version,
            "vault_id": self.vault_id,
            "created_at": self.created_at,
            "db_file": self.db_file,
            "slots": self.slots,
        }
        if self.tokens:  # absent until the first token: older kits read the header unchanged
            doc["tokens"] = self.tokens
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    def save(self, vault_dir: Path) -> None:
        """Atomically replace the header (0600): a crash leaves the old or the new one, whole."""
        config.write_private_file(vault_dir / HEADER, self.to_json())


def check_vault_dir(vault_dir: Path) -> None:
    """Clear errors for the usual wrong paths, before anything is read."""
    if not vault_dir.exists():
        raise NotFound(f"no vault at {vault_dir} (create one with `offline init`)")
    if not vault_dir.is_dir():
        raise UsageError(f"{vault_dir} is a file, not a vault folder")
    if not (vault_dir / HEADER).is_file():
        raise InvalidInput(f"{vault_dir} is not an offline vault (no {HEADER})")


def load(vault_dir: Path) -> Header:
    """Read and validate ``header.json``."""
    check_vault_dir(vault_dir)
    try:
        doc = json.loads((vault_dir / HEADER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise VaultCorrupted(f"{vault_dir / HEADER}: unreadable or damaged") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InvalidInput(
            f"{vault_dir} is not an offline vault (header format {doc.get('format')!r})"
            if isinstance(doc, dict)
            else f"{vault_dir} is not an offline vault"
        )
    version = doc.get("version")
    if not isinstance(version, int):
        raise VaultCorrupted(f"{vault_dir / HEADER}: missing format version")
    if version > FORMAT_VERSION:
        raise OfflineError(
            f"vault format version {version} is newer than this kit supports ({FORMAT_VERSION}); "
            "upgrade offline"
        )
    try:
        return Header(
            vault_id=str(doc["vault_id"]),
            db_file=str(doc["db_file"]),
            created_at=str(doc["created_at"]),
            slots=dict(doc["slots"]),
            tokens=dict(doc.get("tokens") or {}),
            version=version,
        )
    except (KeyError, TypeError, ValueError):
        raise VaultCorrupted(f"{vault_dir / HEADER}: damaged header") from None
