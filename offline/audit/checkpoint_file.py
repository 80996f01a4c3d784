"""Signed checkpoints: a small statement (vault id, entry count, head hash, time) kept off the laptop.

File format (self-describing JSON)::

    {"format": "offline-audit-checkpoint/v1",
     "statement": {"type": "offline-audit-checkpoint", "version": 1, "vault_id": ..., "entries": N,
                   "head_hash": "v1:...", "created": ..., "created_by": ..., "audit_public_key": hex,
                   "audit_key_fingerprint": "sha256:..."},
     "signed_bytes": "canonical JSON of statement (sorted keys, no spaces, UTF-8)",
     "signature": {"alg": "Ed25519", "encoding": "base64", "value": ...}}

``verify --checkpoint`` checks the signature with the key in the statement, that this key is the one
this vault's chain was created with, then that entry N still has that hash (the log extends it).
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AuditChainBroken, IntegrityError, InvalidInput, UsageError
from . import chain, signing

if TYPE_CHECKING:
    from ..vault.session import Session

FORMAT = "offline-audit-checkpoint/v1"
TYPE = "offline-audit-checkpoint"
MAX_BYTES = 64 * 1024


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint file and check its signature against the key it names (not yet the vault's)."""
    path = Path(path)
    try:
        raw = path.read_bytes()[: MAX_BYTES + 1]
    except OSError as exc:
        raise UsageError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    try:
        if len(raw) > MAX_BYTES:
            raise ValueError
        doc = json.loads(raw)
        st = doc["statement"]
        ok_shape = (
            doc.get("format") == FORMAT
            and st.get("type") == TYPE
            and st.get("version") == 1
            and isinstance(st.get("entries"), int)
            and st["entries"] >= 0
            and isinstance(st.get("head_hash"), str)
            and isinstance(st.get("vault_id"), str)
            and isinstance(st.get("audit_public_key"), str)
        )
        if not ok_shape:
            raise ValueError
        sig = base64.b64decode(doc["signature"]["value"], validate=True)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise InvalidInput(f"{path.name} is not an offline audit checkpoint") from None
    # Verify over the canonical bytes we recompute, so the statement shown is the statement signed.
    if not signing.verify_statement(st["audit_public_key"], chain.canonical_json(st), sig):
        raise IntegrityError(f"checkpoint {path.name}: signature does not verify (the file was altered)")
    return doc


def check_checkpoint(session: Session, report: chain.VerifyReport, doc: dict[str, Any]) -> None:
    """Prove the verified log still extends the checkpoint, or name where it stops doing so."""
    st = doc["statement"]
    if st["vault_id"] != session.vault_id:
        raise UsageError(
            f"this checkpoint is for vault {st['vault_id']}, not this vault ({session.vault_id})"
        )
    if st["audit_public_key"] != report.audit_public_key:
        raise AuditChainBroken(
            "audit entry 1: the log was re-created with another audit key than the checkpoint's", 1
        )
    n = st["entries"]
    if n == 0:
        return
    if report.entries < n:
        first = report.entries + 1
        raise AuditChainBroken(
            f"audit entry {first}: missing; the log was truncated (checkpoint has {n} entries, "
            f"the log only {report.entries})",
            first,
        )
    row = session.db.execute("SELECT hash FROM audit_log WHERE seq = ?", (n,)).fetchone()
    if row is None or row[0] != st["head_hash"]:
        raise AuditChainBroken(
            f"audit entry {n}: does not match the checkpoint (the log was rewritten up to here)", n
        )
