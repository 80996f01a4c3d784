"""The audit chain: append and verify.

Entry hash (v1)::

    "v1:" + sha256(b"offline/audit/entry/v1\\0" + prev_hash + b"\\0" + canonical_json(body))

where ``body`` is ``{seq, ts, user, action, severity, payload}`` and canonical JSON has sorted keys,
``(",", ":")`` separators and UTF-8. Each entry is signed by the acting user's own Ed25519 key over
``b"offline/audit/sig/v1\\0" + hash``. Signing keys are not trusted from the users table: the chain
introduces them itself (``vault.init`` carries the first admin's key, ``user.add`` entries signed by
an admin carry each new user's key), so editing a table cannot make a forged entry verify.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import AuditChainBroken

HASH_VERSION = "v1"
ENTRY_DOMAIN = b"offline/audit/entry/v1\x00"
SIG_DOMAIN = b"offline/audit/sig/v1\x00"
GENESIS = HASH_VERSION + ":" + "0" * 64
SEVERITIES = ("info", "notice", "warning", "high")


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON: sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def entry_hash(prev_hash: str, body: dict[str, Any]) -> str:
    """Version-tagged, domain-separated hash of an entry chained to its predecessor."""
    digest = hashlib.sha256(ENTRY_DOMAIN + prev_hash.encode() + b"\x00" + canonical_json(body)).hexdigest()
    return f"{HASH_VERSION}:{digest}"


def sign_hash(key: Ed25519PrivateKey, digest: str) -> str:
    return key.sign(SIG_DOMAIN + digest.encode()).hex()


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


@dataclass
class Entry:
    seq: int
    ts: str
    user: str
    action: str
    severity: str
    payload: dict[str, Any]
    prev_hash: str
    hash: str
    sig: str

    def body(self) -> dict[str, Any]:
        return {"seq": self.seq, "ts": self.ts, "user": self.user, "action": self.action,
                "severity": self.severity, "payload": self.payload}

    def to_dict(self) -> dict[str, Any]:
        return {**self.body(), "prev_hash": self.prev_hash, "hash": self.hash, "sig": self.sig}


def append(conn: Any, user: str, key: Ed25519PrivateKey, action: str, payload: dict[str, Any],
           severity: str = "info") -> Entry:
    """Append one signed entry at the head of the chain, atomically (``BEGIN IMMEDIATE``)."""
    from ..vault.db import transaction

    if severity not in SEVERITIES:
        raise ValueError(f"unknown severity {severity!r}")
    payload = json.loads(canonical_json(payload))  # normalise types now, so verify sees the same
    with transaction(conn):
        row = conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
        entry = Entry(seq, _utc_now(), user, action, severity, payload, prev, "", "")
        entry.hash = entry_hash(prev, entry.body())
        entry.sig = sign_hash(key, entry.hash)
        conn.execute(
            "INSERT INTO audit_log(seq, ts, user, action, severity, payload, prev_hash, hash, sig)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (entry.seq, entry.ts, entry.user, entry.action, entry.severity,
             canonical_json(entry.payload).decode(), entry.prev_hash, entry.hash, entry.sig),
        )
    return entry


def _row_to_entry(row: tuple) -> Entry:
    seq, ts, user, action, severity, payload, prev_hash, digest, sig = row
    try:
        data = json.loads(payload)
    except (TypeError, ValueError):
        raise AuditChainBroken(f"audit entry {seq}: payload is not valid JSON", seq) from None
    return Entry(seq, ts, user, action, severity, data, prev_hash, digest, sig)


def iter_entries(conn: Any, where: str = "", params: Iterable[Any] = ()) -> Iterable[Entry]:
    """Entries in sequence order, optionally filtered by a SQL ``where`` clause."""
    sql = "SELECT seq, ts, user, action, severity, payload, prev_hash, hash, sig FROM audit_log"
    if where:
        sql += f" WHERE {where}"
    for row in conn.execute(sql + " ORDER BY seq", tuple(params)):
        yield _row_to_entry(row)


@dataclass
class VerifyReport:
    entries: int = 0
    head_hash: str = GENESIS
    users: dict[str, str] = field(default_factory=dict)  # user -> ed25519 public key (hex)
    audit_public_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": True, "entries": self.entries, "head_hash": self.head_hash,
                "signers": sorted(self.users), "audit_public_key": self.audit_public_key}


def verify_entries(entries: Iterable[Entry]) -> VerifyReport:
    """Recompute every hash, link and signature; raise :class:`AuditChainBroken` at the first bad one."""
    report = VerifyReport()
    prev = GENESIS
    expected_seq = 1
    keys: dict[str, Ed25519PublicKey] = {}
    roles: dict[str, str] = {}
    for e in entries:
        if e.seq != expected_seq:
            raise AuditChainBroken(
                f"audit entry {expected_seq}: missing or out of order (found {e.seq} next)", expected_seq)
        if e.prev_hash != prev:
            raise AuditChainBroken(f"audit entry {e.seq}: does not link to the entry before it", e.seq)
        if not e.hash.startswith(HASH_VERSION + ":"):
            raise AuditChainBroken(f"audit entry {e.seq}: unknown hash version", e.seq)
        if entry_hash(prev, e.body()) != e.hash:
            raise AuditChainBroken(f"audit entry {e.seq}: content does not match its hash", e.seq)
        if e.seq == 1:
            if e.action != "vault.init":
                raise AuditChainBroken("audit entry 1: chain does not start with vault.init", 1)
            _learn_key(keys, e.user, e.payload.get("ed25519"), e.seq)
            roles[e.user] = "admin"
            report.audit_public_key = e.payload.get("audit_public_key")
        key = keys.get(e.user)
        if key is None:
            raise AuditChainBroken(f"audit entry {e.seq}: signer {e.user!r} was never enrolled in the chain", e.seq)
        try:
            key.verify(bytes.fromhex(e.sig), SIG_DOMAIN + e.hash.encode())
        except (InvalidSignature, ValueError):
            raise AuditChainBroken(f"audit entry {e.seq}: bad signature for {e.user!r}", e.seq) from None
        # Only an admin (as the chain itself recorded) can introduce or retire a signing key.
        if e.action == "user.add" and roles.get(e.user) == "admin":
            _learn_key(keys, str(e.payload.get("name")), e.payload.get("ed25519"), e.seq)
            roles[str(e.payload.get("name"))] = str(e.payload.get("role"))
        elif e.action == "user.remove" and roles.get(e.user) == "admin":
            keys.pop(str(e.payload.get("name")), None)
            roles.pop(str(e.payload.get("name")), None)
        prev = e.hash
        expected_seq += 1
        report.entries += 1
    report.head_hash = prev
    report.users = {u: k.public_bytes_raw().hex() for u, k in keys.items()}
    return report


def _learn_key(keys: dict[str, Ed25519PublicKey], user: str, hex_key: Any, seq: int) -> None:
    try:
        keys[user] = Ed25519PublicKey.from_public_bytes(bytes.fromhex(str(hex_key)))
    except ValueError:
        raise AuditChainBroken(f"audit entry {seq}: carries an invalid public key", seq) from None


def verify(conn: Any) -> VerifyReport:
    """Verify the whole chain stored in ``conn``."""
    return verify_entries(iter_entries(conn))
