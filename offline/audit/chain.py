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
from ..limits import MAX_TOKEN_DAYS, TOKEN_CLOCK_SLACK_S

HASH_VERSION = "v1"
ENTRY_DOMAIN = b"offline/audit/entry/v1\x00"
SIG_DOMAIN = b"offline/audit/sig/v1\x00"
GENESIS = HASH_VERSION + ":" + "0" * 64
SEVERITIES = ("info", "notice", "warning", "high")


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON: sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


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
        return {
            "seq": self.seq,
            "ts": self.ts,
            "user": self.user,
            "action": self.action,
            "severity": self.severity,
            "payload": self.payload,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.body(), "prev_hash": self.prev_hash, "hash": self.hash, "sig": self.sig}


def append(
    conn: Any, user: str, key: Ed25519PrivateKey, action: str, payload: dict[str, Any], severity: str = "info"
) -> Entry:
    """Append one signed entry at the head of the chain, atomically (``BEGIN IMMEDIATE``)."""
    from ..vault.db import transaction

    with transaction(conn):
        return append_in_transaction(conn, user, key, action, payload, severity)


def append_in_transaction(
    conn: Any, user: str, key: Ed25519PrivateKey, action: str, payload: dict[str, Any], severity: str = "info"
) -> Entry:
    """Append one signed entry inside the caller's open write transaction (commits with it)."""
    if severity not in SEVERITIES:
        raise ValueError(f"unknown severity {severity!r}")
    payload = json.loads(canonical_json(payload))  # normalise types now, so verify sees the same
    row = conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
    entry = Entry(seq, _utc_now(), user, action, severity, payload, prev, "", "")
    entry.hash = entry_hash(prev, entry.body())
    entry.sig = sign_hash(key, entry.hash)
    conn.execute(
        "INSERT INTO audit_log(seq, ts, user, action, severity, payload, prev_hash, hash, sig)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            entry.seq,
            entry.ts,
            entry.user,
            entry.action,
            entry.severity,
            canonical_json(entry.payload).decode(),
            entry.prev_hash,
            entry.hash,
            entry.sig,
        ),
    )
    return entry


_COLUMNS = ("seq", "ts", "user", "action", "severity", "payload", "prev_hash", "hash", "sig")
# Text columns are read as bytes and decoded here: a tampered cell holding invalid UTF-8 (or a BLOB)
# must become "entry N is bad", not a driver error about some unknown row.
_SELECT = "SELECT seq, " + ", ".join(f"CAST({c} AS BLOB)" for c in _COLUMNS[1:]) + " FROM audit_log"


def _text(seq: Any, column: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8", errors="strict")
        except UnicodeDecodeError:
            raise AuditChainBroken(
                f"audit entry {seq}: {column} is not valid UTF-8", _seq_or_none(seq)
            ) from None
    raise AuditChainBroken(f"audit entry {seq}: {column} is missing or not text", _seq_or_none(seq))


def _seq_or_none(seq: Any) -> int | None:
    return seq if isinstance(seq, int) else None


def entry_from_row(row: tuple) -> Entry:
    """An :class:`Entry` from a stored row (text or bytes cells); malformed cells raise
    :class:`AuditChainBroken`."""
    seq = row[0]
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise AuditChainBroken(f"audit entry {seq!r}: sequence number is not an integer", None)
    ts, user, action, severity, payload, prev_hash, digest, sig = (
        _text(seq, c, v) for c, v in zip(_COLUMNS[1:], row[1:])
    )
    try:
        data = json.loads(payload)
    except (TypeError, ValueError):
        raise AuditChainBroken(f"audit entry {seq}: payload is not valid JSON", seq) from None
    return Entry(seq, ts, user, action, severity, data, prev_hash, digest, sig, raw_payload=payload)


_row_to_entry = entry_from_row  # the name the first version used


def iter_entries(
    conn: Any,
    where: str = "",
    params: Iterable[Any] = (),
    *,
    descending: bool = False,
    limit: int | None = None,
) -> Iterable[Entry]:
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
    root: dict[str, str] | None = None  # vault id, founding admin and their key, audit key (vault.init)
    policy: Any = None  # the authorization state the chain defines (offline.vault.authz.Policy)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": True,
            "entries": self.entries,
            "head_hash": self.head_hash,
            "signers": sorted(self.users),
            "audit_public_key": self.audit_public_key,
        }


# Entries that change who may sign: only an admin (as the chain itself recorded) may write them.
KEY_ACTIONS = ("user.add", "user.remove")
TOKEN_ACTIONS = ("token.create", "token.revoke")


def fold_token(
    tokens: dict[str, dict[str, Any]], e: Entry, roles: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """The API-token registry after entry ``e`` (a new dict; ``tokens`` is left alone).

    A token's expiry is the one its *first* ``token.create`` entry records, signed by the token's
    own user (only they hold the keys it unwraps); an id is never created twice. A ``token.revoke``
    by the owner or an admin ends it for good. ``header.json`` holds only the wrapped keys: what a
    member edits there (an expiry, a deleted slot put back) cannot change this signed record.
    """
    tid = e.payload.get("token_id")
    if not isinstance(tid, str) or not tid:
        raise _broken(e.seq, f"{e.action} without a token id")
    out = dict(tokens)
    if e.action == "token.create":
        expires = e.payload.get("expires_at")
        if tid in tokens:
            raise _broken(e.seq, f"token {tid} created a second time")
        if e.payload.get("user") != e.user or not isinstance(expires, str):
            raise _broken(e.seq, f"token {tid} created by {e.user!r} for someone else or without an expiry")
        out[tid] = {"user": e.user, "expires_at": expires, "created_seq": e.seq, "revoked_seq": None}
        if not _lifetime_ok(e.ts, expires):
            # Not a broken chain (one member's bad entry must not lock everyone out of the vault):
            # the token is recorded as refused, so it opens nothing, ever.
            out[tid]["refused"] = f"lifetime over {MAX_TOKEN_DAYS} days"
    else:
        row = tokens.get(tid)
        if row is None:
            raise _broken(e.seq, f"token {tid} revoked but never created")
        if e.user != row["user"] and roles.get(e.user) != "admin":
            raise _broken(e.seq, f"token {tid} revoked by {e.user!r}, neither its owner nor an admin")
        if row.get("revoked_seq") is None:
            out[tid] = {**row, "revoked_seq": e.seq}
    return out


def _lifetime_ok(created: str, expires: str) -> bool:
    """A signed expiry at most :data:`MAX_TOKEN_DAYS` after the entry's own time (the CLI's limit,
    enforced where the chain is folded: a member signing ``token.create`` by hand meets it too)."""
    try:
        t0, t1 = _dt.datetime.fromisoformat(created), _dt.datetime.fromisoformat(expires)
    except (TypeError, ValueError):
        return False
    if t0.tzinfo is None or t1.tzinfo is None:
        return False
    return t1 - t0 <= _dt.timedelta(days=MAX_TOKEN_DAYS, seconds=TOKEN_CLOCK_SLACK_S)


def _broken(seq: int, why: str) -> AuditChainBroken:
    return AuditChainBroken(f"audit entry {seq}: {why}", seq)


class Verifier:
    """Verifies entries one at a time and can be saved and resumed (a client's last-seen head).

    Per entry: sequence numbers run 1, 2, 3... with no gap; it links to its predecessor; the stored
    payload is the canonical JSON of an object; the hash matches; the signature is the signer's key
    as the chain enrolled it (``vault.init`` for the founding admin, ``user.add`` by an admin for
    everyone else). ``user.add``/``user.remove`` and every ``authz`` change count only when their
    signer may make them; one signed by anyone else is itself a forgery (no code path writes it).
    A failed :meth:`feed` leaves the verifier as it was.
    """

    def __init__(self, policy: Any = None):
        self.prev = GENESIS
        self.seq = 0
        self.keys: dict[str, str] = {}  # user -> ed25519 hex, for users enrolled now
        self.roles: dict[str, str] = {}
        self.introduced: dict[str, int] = {}
        self.key_history: dict[str, list[str]] = {}
        self.audit_public_key: str | None = None
        self.root: dict[str, str] | None = None
        self.tokens: dict[str, dict[str, Any]] = {}  # API token id -> owner, expiry, revoked (see fold_token)
        self.policy = policy

    # -- persistence ----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "prev": self.prev,
            "seq": self.seq,
            "keys": self.keys,
            "roles": self.roles,
            "introduced": self.introduced,
            "key_history": self.key_history,
            "audit_public_key": self.audit_public_key,
            "root": self.root,
            "tokens": self.tokens,
            "policy": self.policy.to_json() if self.policy is not None else None,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any], policy_cls: Any = None) -> Verifier:
        v = cls()
        v.prev, v.seq = str(doc["prev"]), int(doc["seq"])
        v.keys, v.roles = dict(doc["keys"]), dict(doc["roles"])
        v.introduced, v.key_history = (
            dict(doc["introduced"]),
            {u: list(k) for u, k in doc["key_history"].items()},
        )
        v.audit_public_key, v.root = doc["audit_public_key"], doc["root"]
        v.tokens = {t: dict(r) for t, r in (doc.get("tokens") or {}).items()}
        if policy_cls is not None and doc.get("policy") is not None:
            v.policy = policy_cls.from_json(doc["policy"])
        return v

    def clone(self) -> Verifier:
        # The policy is copied once, not also serialised and thrown away with the rest.
        policy, self.policy = self.policy, None
        try:
            v = Verifier.from_json(json.loads(json.dumps(self.to_json())))
        finally:
            self.policy = policy
        v.policy = policy.copy() if policy is not None else None
        return v

    # -- verification ---------------------------------------------------------------------
    def feed(self, e: Entry) -> None:
        """Verify ``e`` as the next entry and fold it in; raise :class:`AuditChainBroken` if it is bad."""
        expected = self.seq + 1
        if e.seq != expected:
            raise AuditChainBroken(
                f"audit entry {expected}: missing or out of order (found {e.seq} next)", expected
            )
        if e.prev_hash != self.prev:
            raise _broken(e.seq, "does not link to the entry before it")
        if not e.hash.startswith(HASH_VERSION + ":"):
            raise _broken(e.seq, "unknown hash version")
        if not isinstance(e.payload, dict):
            raise _broken(e.seq, "payload is not a JSON object")
        try:
            canonical = canonical_json(e.payload).decode()
            digest = entry_hash(self.prev, e.body())
        except (TypeError, ValueError):  # NaN/Infinity smuggled into the stored JSON
            raise _broken(e.seq, "payload is not canonical JSON") from None
        if e.raw_payload is not None and e.raw_payload != canonical:
            raise _broken(e.seq, "payload is not in canonical form (stored bytes were changed)")
        if digest != e.hash:
            raise _broken(e.seq, "content does not match its hash")
        if e.severity not in SEVERITIES:
            raise _broken(e.seq, f"unknown severity {e.severity!r}")
        keys, roles, introduced = dict(self.keys), dict(self.roles), dict(self.introduced)
        history = {u: list(k) for u, k in self.key_history.items()}
        audit_public_key, root = self.audit_public_key, self.root
        tokens = self.tokens
        if e.action == "vault.init":
            if e.seq != 1:
                raise _broken(e.seq, "a second vault.init entry")
            keys[e.user] = _key_hex(e.payload.get("ed25519"), e.seq)
            history.setdefault(e.user, []).append(keys[e.user])
            roles[e.user] = "admin"
            introduced[e.user] = 1
            audit_public_key = e.payload.get("audit_public_key")
            root = {
                "vault_id": str(e.payload.get("vault_id")),
                "founder": e.user,
                "founder_ed25519": keys[e.user],
                "audit_public_key": str(audit_public_key),
            }
        elif e.seq == 1:
            raise AuditChainBroken("audit entry 1: chain does not start with vault.init", 1)
        key_hex = keys.get(e.user)
        if key_hex is None:
            raise _broken(e.seq, f"signer {e.user!r} was never enrolled in the chain")
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(key_hex)).verify(
                bytes.fromhex(e.sig), SIG_DOMAIN + e.hash.encode()
            )
        except (InvalidSignature, ValueError):
            raise _broken(e.seq, f"bad signature for {e.user!r}") from None
        if e.action in KEY_ACTIONS:
            if roles.get(e.user) != "admin":
                raise _broken(e.seq, f"{e.action} signed by {e.user!r}, who is not an admin")
            name = str(e.payload.get("name"))
            if e.action == "user.add":
                keys[name] = _key_hex(e.payload.get("ed25519"), e.seq)
                history.setdefault(name, []).append(keys[name])
                roles[name] = str(e.payload.get("role"))
                introduced[name] = e.seq
            else:
                keys.pop(name, None)
                roles.pop(name, None)
                introduced.pop(name, None)
        if e.action in TOKEN_ACTIONS:
            tokens = fold_token(tokens, e, roles)
        policy = self.policy
        if policy is not None:
            if "authz" in e.payload:
                policy = policy.copy()
                policy.apply(e.seq, e.user, e.action, e.payload["authz"], self.roles.get(e.user))
            if policy.started:
                self._check_policy(e, policy, keys)
        # Everything checked: commit the new state.
        self.keys, self.roles, self.introduced, self.key_history = keys, roles, introduced, history
        self.audit_public_key, self.root, self.policy = audit_public_key, root, policy
        self.tokens = tokens
        self.prev, self.seq = e.hash, e.seq

    @staticmethod
    def _check_policy(e: Entry, policy: Any, keys: dict[str, str]) -> None:
        # Once the chain carries the authorization state, its signers and its users table agree:
        # every signer is an enrolled user whose row holds the very key the chain enrolled.
        row = policy.row("users", e.user)
        if row is None or row.get("removed_at") is not None:
            raise _broken(e.seq, f"signed by {e.user!r}, who is not an enrolled user")
        if e.action in ("vault.init", "user.add"):
            name = e.user if e.action == "vault.init" else str(e.payload.get("name"))
            enrolled = policy.user(name)
            if enrolled is None or enrolled.get("ed25519_pub") != keys.get(name):
                raise _broken(e.seq, f"the key it enrols for {name!r} is not the one in the users table")

    def report(self) -> VerifyReport:
        return VerifyReport(
            entries=self.seq,
            head_hash=self.prev,
            users=dict(self.keys),
            audit_public_key=self.audit_public_key,
            roles=dict(self.roles),
            introduced=dict(self.introduced),
            key_history=self.key_history,
            root=self.root,
            policy=self.policy,
        )


def check_entry(e: Entry, signer_keys: list[str]) -> None:
    """One entry on its own: canonical payload, hash over its content and link, a signature by one of
    ``signer_keys`` (hex). For entries shown without re-verifying the whole chain (``audit tail``):
    an old entry rewritten below every client's head is caught where it is read."""
    try:
        canonical = canonical_json(e.payload).decode()
        digest = entry_hash(e.prev_hash, e.body())
    except (TypeError, ValueError):
        raise _broken(e.seq, "payload is not canonical JSON") from None
    if (e.raw_payload is not None and e.raw_payload != canonical) or digest != e.hash:
        raise _broken(e.seq, "content does not match its hash")
    for hex_key in signer_keys:
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(hex_key)).verify(
                bytes.fromhex(e.sig), SIG_DOMAIN + e.hash.encode()
            )
            return
        except (InvalidSignature, ValueError):
            continue
    raise _broken(e.seq, f"bad signature for {e.user!r}")


def verify_entries(entries: Iterable[Entry], policy: Any = None) -> VerifyReport:
    """Verify a whole chain from its first entry; raise :class:`AuditChainBroken` at the first bad one."""
    v = Verifier(policy)
    for e in entries:
        v.feed(e)
    return v.report()


def _key_hex(hex_key: Any, seq: int) -> str:
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(str(hex_key))).public_bytes_raw().hex()
    except ValueError:
        raise AuditChainBroken(f"audit entry {seq}: carries an invalid public key", seq) from None


def verify(conn: Any) -> VerifyReport:
    """Verify the whole chain stored in ``conn``."""
    return verify_entries(iter_entries(conn))


def head(conn: Any) -> tuple[int, str]:
    """``(entry count, head hash)`` as stored, without verifying anything."""
    row = conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    return (int(row[0]), str(row[1])) if row else (0, GENESIS)
