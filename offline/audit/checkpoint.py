"""Writing a signed checkpoint of the audit log's head, to keep off the laptop.

The file format, reading it back and checking a log against it are in
:mod:`offline.audit.checkpoint_file` (re-exported here); ``verify`` uses that, this module uses
``verify``: a checkpoint vouches only for a log that verified.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import chain, signing
from .checkpoint_file import FORMAT, MAX_BYTES, TYPE, check_checkpoint, load_checkpoint
from .files import check_targets, staged
from .verify import verify_chain

if TYPE_CHECKING:
    from ..vault.session import Session

__all__ = ["FORMAT", "MAX_BYTES", "TYPE", "check_checkpoint", "create_checkpoint", "load_checkpoint"]


def create_checkpoint(session: Session, out: Path, *, force: bool = False) -> dict[str, Any]:
    """Verify the log, then write a signed checkpoint of its head to ``out`` (admins and auditors)."""
    session.require_role("admin", "auditor", action="writing an audit checkpoint")
    out = Path(out)
    check_targets([out], force)
    report = verify_chain(session)  # never vouch for a broken log
    key, pub = signing.audit_signer(session, report)
    statement = {
        "type": TYPE,
        "version": 1,
        "vault_id": session.vault_id,
        "entries": report.entries,
        "head_hash": report.head_hash,
        "hash_version": chain.HASH_VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "created_by": session.user,
        "audit_public_key": pub,
        "audit_key_fingerprint": signing.fingerprint(pub),
    }
    signed = chain.canonical_json(statement)
    doc = {
        "format": FORMAT,
        "statement": statement,
        "signed_bytes": signed.decode(),
        "signature": {
            "alg": "Ed25519",
            "encoding": "base64",
            "value": base64.b64encode(key.sign(signed)).decode(),
        },
    }
    with staged([out]) as (tmp,):
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    session.audit(
        "audit.checkpoint", entries=report.entries, head_hash=report.head_hash, out=str(out.resolve())
    )
    return {
        "out": str(out),
        "entries": report.entries,
        "head_hash": report.head_hash,
        "audit_key_fingerprint": statement["audit_key_fingerprint"],
        "created": statement["created"],
    }
