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
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


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
    # The payload text exactly as stored; verify insists it is the canonical form, so even a byte
    # change that parses back to the same value (``1e+20`` -> ``1E+20``) is caught.
    raw_payload: str | None = field(default=None, repr=False, compare=False)

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


_COLUMNS = ("seq", "ts", "user", "action", "severity", "payload", "prev_hash", "hash", "sig")
# Text columns are read as bytes and decoded here: a tampered cell holding invalid UTF-8 (or a BLOB)
# must become "entry N is bad", not a driver error about some unknown row.
_SELECT = ("SELECT seq, " + ", ".join(f"CAST({c} AS BLOB)" for c in _COLUMNS[1:]) + " FROM audit_log")


def _text(seq: Any, column: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8", errors="strict")
        except UnicodeDecodeError:
            raise AuditChainBroken(f"audit entry {seq}: {column} is not valid UTF-8", _seq_or_none(seq)) from None
    raise AuditChainBroken(f"audit entry {seq}: {column} is missing or not text", _seq_or_none(seq))


def _seq_or_none(seq: Any) -> int | None:
    return seq if isinstance(seq, int) else None


def entry_from_row(row: tuple) -> Entry:
    """An :class:`Entry` from a stored row (text or bytes cells); malformed cells raise :class:`AuditChainBroken`."""
    seq = row[0]
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise AuditChainBroken(f"audit entry {seq!r}: sequence number is not an integer", None)
    ts, user, action, severity, payload, prev_hash, digest, sig = (
        _text(seq, c, v) for c, v in zip(_COLUMNS[1:], row[1:]))
    try:
        data = json.loads(payload)
    except (TypeError, ValueError):
        raise AuditChainBroken(f"audit entry {seq}: payload is not valid JSON", seq) from None
    return Entry(seq, ts, user, action, severity, data, prev_hash, digest, sig, raw_payload=payload)


_row_to_entry = entry_from_row  # the name the first version used


def iter_entries(conn: Any, where: str = "", params: Iterable[Any] = (), *, descending: bool = False,
                 limit: int | None = None) -> Iterable[Entry]:
    """Entries in sequence order, optionally filtered by a SQL ``where`` clause (bound ``params``).

    ``descending``/``limit`` give the newest ``limit`` entries first (for ``audit tail``).
    """
    sql = _SELECT
    if where:
        sql += f" WHERE {where}"
    sql += " ORDER BY seq DESC" if descending else " ORDER BY seq"
    params = tuple(params)
    if limit is not None:
        sql += " LIMIT ?"
        params += (int(limit),)
    for row in conn.execute(sql, params):
        yield entry_from_row(row)


@dataclass
class VerifyReport:
    entries: int = 0
    head_hash: str = GENESIS
    users: dict[str, str] = field(default_factory=dict)  # user -> ed25519 public key (hex)
    audit_public_key: str | None = None
    roles: dict[str, str] = field(default_factory=dict)  # user -> role, as the chain recorded it
    introduced: dict[str, int] = field(default_factory=dict)  # user -> seq that introduced their key
    key_history: dict[str, list[str]] = field(default_factory=dict)  # user -> every key ever enrolled (hex)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": True, "entries": self.entries, "head_hash": self.head_hash,
                "signers": sorted(self.users), "audit_public_key": self.audit_public_key}


# Entries that change who may sign: only an admin (as the chain itself recorded) may write them.
KEY_ACTIONS = ("user.add", "user.remove")


def _broken(seq: int, why: str) -> AuditChainBroken:
    return AuditChainBroken(f"audit entry {seq}: {why}", seq)


def verify_entries(entries: Iterable[Entry]) -> VerifyReport:
    """Recompute every hash, link and signature; raise :class:`AuditChainBroken` at the first bad one.

    Beyond hash and signature: sequence numbers run 1, 2, 3... with no gap; the stored payload must be
    the canonical JSON of an object; ``vault.init`` is entry 1 and nowhere else; ``user.add`` and
    ``user.remove`` count only when an admin signed them, and one signed by anyone else is itself a
    forgery (no code path writes it for a non-admin).
    """
    report = VerifyReport()
    prev = GENESIS
    expected_seq = 1
    keys: dict[str, Ed25519PublicKey] = {}
    roles = report.roles
    for e in entries:
        if e.seq != expected_seq:
            raise AuditChainBroken(
                f"audit entry {expected_seq}: missing or out of order (found {e.seq} next)", expected_seq)
        if e.prev_hash != prev:
            raise _broken(e.seq, "does not link to the entry before it")
        if not e.hash.startswith(HASH_VERSION + ":"):
            raise _broken(e.seq, "unknown hash version")
        if not isinstance(e.payload, dict):
            raise _broken(e.seq, "payload is not a JSON object")
        try:
            canonical = canonical_json(e.payload).decode()
            digest = entry_hash(prev, e.body())
        except (TypeError, ValueError):  # NaN/Infinity smuggled into the stored JSON
            raise _broken(e.seq, "payload is not canonical JSON") from None
        if e.raw_payload is not None and e.raw_payload != canonical:
            raise _broken(e.seq, "payload is not in canonical form (stored bytes were changed)")
        if digest != e.hash:
            raise _broken(e.seq, "content does not match its hash")
        if e.severity not in SEVERITIES:
            raise _broken(e.seq, f"unknown severity {e.severity!r}")
        if e.action == "vault.init":
            if e.seq != 1:
                raise _broken(e.seq, "a second vault.init entry")
            _learn_key(keys, e.user, e.payload.get("ed25519"), e.seq, report.key_history)
            roles[e.user] = "admin"
            report.introduced[e.user] = 1
            report.audit_public_key = e.payload.get("audit_public_key")
        elif e.seq == 1:
            raise AuditChainBroken("audit entry 1: chain does not start with vault.init", 1)
        key = keys.get(e.user)
        if key is None:
            raise _broken(e.seq, f"signer {e.user!r} was never enrolled in the chain")
        try:
            key.verify(bytes.fromhex(e.sig), SIG_DOMAIN + e.hash.encode())
        except (InvalidSignature, ValueError):
            raise _broken(e.seq, f"bad signature for {e.user!r}") from None
        if e.action in KEY_ACTIONS:
            if roles.get(e.user) != "admin":
                raise _broken(e.seq, f"{e.action} signed by {e.user!r}, who is not an admin")
            name = str(e.payload.get("name"))
            if e.action == "user.add":
                _learn_key(keys, name, e.payload.get("ed25519"), e.seq, report.key_history)
                roles[name] = str(e.payload.get("role"))
                report.introduced[name] = e.seq
            else:
                keys.pop(name, None)
                roles.pop(name, None)
                report.introduced.pop(name, None)
        prev = e.hash
        expected_seq += 1
        report.entries += 1
    report.head_hash = prev
    report.users = {u: k.public_bytes_raw().hex() for u, k in keys.items()}
    return report


def _learn_key(keys: dict[str, Ed25519PublicKey], user: str, hex_key: Any, seq: int,
               history: dict[str, list[str]] | None = None) -> None:
    try:
        keys[user] = Ed25519PublicKey.from_public_bytes(bytes.fromhex(str(hex_key)))
    except ValueError:
        raise AuditChainBroken(f"audit entry {seq}: carries an invalid public key", seq) from None
    if history is not None:
        history.setdefault(user, []).append(keys[user].public_bytes_raw().hex())


def verify(conn: Any) -> VerifyReport:
    """Verify the whole chain stored in ``conn``."""
    return verify_entries(iter_entries(conn))


def head(conn: Any) -> tuple[int, str]:
    """``(entry count, head hash)`` as stored, without verifying anything."""
    row = conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    return (int(row[0]), str(row[1])) if row else (0, GENESIS)
