"""API tokens for the team server: each token is a keyslot.

``offline users token create`` makes a 256-bit random token and a *token slot* in ``header.json``
(``tokens``): the user's X25519/Ed25519 private keys and pinned root, sealed under a key derived
from the token, exactly what a passphrase slot seals. The server therefore holds no key a user has
not presented: a stolen server disk holds wrapped keys only, and a token opens only its own user's
keys (the vault key is still the one wrapped to that user in their passphrase slot, so rotations
and removals reach tokens with no extra step).

Key derivation is HKDF-SHA256 with a random salt, not Argon2id: a password needs a slow hash because
people choose guessable ones, but a token is 256 bits from the OS CSPRNG, so no amount of hashing
changes the 2^256 an attacker must try, while 0.5 s of Argon2id per request would only hand a
denial of service to anyone who can send requests.

Expiry and revocation live in the signed audit chain, not in the slot. ``token.create`` (signed by
the token's user, the only holder of the keys it seals) records the expiry; ``token.revoke`` (by
the owner or an admin) ends the token for good; the chain's verifier folds both
(:func:`offline.audit.chain.fold_token`). The slot's expiry is also bound into the AEAD's
associated data. So a member with write access to every file can neither extend a token (the
first signed expiry counts, and editing the slot breaks its seal) nor bring back a revoked one
(putting back its deleted slot meets the signed revocation), and the server resumes the chain only
from the state in its own home, not from a copy in the vault folder the member could forge. The
lifetime limit (:data:`MAX_DAYS`) is enforced where the chain is folded, not only by the CLI. What
no signature can show (a tail cut before anyone saw it, a slot put back after its revocation was
cut, a restored old header) the server catches as a witness (:mod:`offline.vault.witness`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import AccessDenied, AuthenticationFailed, DecryptionError, NotFound, UsageError
from ..limits import MAX_TOKEN_DAYS, TOKEN_CLOCK_SLACK_S
from . import crypto, witness
from . import header as hdr
from .keys import UserKeys, vault_lock
from .session import Session
from .users import open_with_keys, record_failed_unlock

PREFIX = "ofk_"
TOKEN_RE = re.compile(r"^ofk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
MAX_DAYS = MAX_TOKEN_DAYS
DURATION_RE = re.compile(r"^([1-9][0-9]{0,5})([mhdw])$")
UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> _dt.timedelta:
    """``90d``, ``12h``, ``30m``, ``2w`` -> a timedelta (at most a year and a day)."""
    m = DURATION_RE.match(str(text).strip())
    if not m:
        raise UsageError(f"invalid duration {text!r}: use a number and m, h, d or w (for example 90d)")
    delta = _dt.timedelta(seconds=int(m.group(1)) * UNITS[m.group(2)])
    if delta > _dt.timedelta(days=MAX_DAYS):
        raise UsageError(f"a token lives at most {MAX_DAYS} days")
    return delta


def _kek(secret: bytes, salt: bytes, vault_id: str, token_id: str) -> bytes:
    info = f"offline/v1/token-kek|{vault_id}|{token_id}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=crypto.KEY_BYTES, salt=salt, info=info).derive(secret)


def _aad(vault_id: str, token_id: str, user: str, expires_at: str) -> bytes:
    # The expiry is authenticated with the keys: a slot whose expiry was edited does not open.
    return f"offline/v1/token-slot|{vault_id}|{token_id}|{user}|{expires_at}".encode()


def _expired(expires_at: str, now: _dt.datetime | None = None) -> bool:
    try:
        when = _dt.datetime.fromisoformat(expires_at)
    except (TypeError, ValueError):
        return True  # unreadable: fail closed
    if when.tzinfo is None:
        return True
    return (now or _dt.datetime.now(_dt.UTC)) >= when


def create_token(session: Session, name: str, lifetime: _dt.timedelta) -> dict[str, Any]:
    """A new API token for the session's own user; the token is returned once and stored nowhere.

    Only ``name`` itself can make one: the slot seals their private keys, which an admin never holds.
    """
    if name != session.user:
        raise UsageError(
            f"a token unlocks {name}'s own keys: {name} creates it, unlocking the vault as "
            f"{name} with their own passphrase"
        )
    if session.policy.user(name) is None:
        raise AccessDenied(f"access denied: {name!r} is not enrolled")
    token_id = secrets.token_hex(8)
    secret = os.urandom(32)
    now = _dt.datetime.now(_dt.UTC).replace(microsecond=0)
    expires_at = (now + lifetime).isoformat()
    salt = os.urandom(16)
    sealed = {
        "x25519": crypto.private_bytes(session.keys.x25519).hex(),
        "ed25519": crypto.private_bytes(session.keys.ed25519).hex(),
        "root": session.root,
    }
    with vault_lock(session.vault_dir):
        h = hdr.load(session.vault_dir)
        kek = _kek(secret, salt, h.vault_id, token_id)
        slot = {
            "user": name,
            "created_at": now.isoformat(),
            "expires_at": expires_at,
            "kdf": {"alg": "hkdf-sha256", "salt": crypto.b64e(salt)},
            "sealed_keys": crypto.b64e(
                crypto.seal(kek, json.dumps(sealed).encode(), _aad(h.vault_id, token_id, name, expires_at))
            ),
            "x25519": session.keys.x25519_pub.hex(),
            "ed25519": session.keys.ed25519_pub.hex(),
        }
        # The signed entry first: a slot without one opens nothing, an entry without a slot neither.
        session.audit("token.create", severity="notice", token_id=token_id, user=name, expires_at=expires_at)
        h.tokens[token_id] = slot
        h.save(session.vault_dir)
        session.header = h
    token = PREFIX + token_id + "_" + crypto.b64e(secret).rstrip("=").replace("+", "-").replace("/", "_")
    return {"token": token, "token_id": token_id, "user": name, "expires_at": expires_at}


def list_tokens(session: Session) -> list[dict[str, Any]]:
    """Tokens as the signed chain records them (members see their own; admins and auditors all)."""
    session.sync()
    h = hdr.load(session.vault_dir)
    now = _dt.datetime.now(_dt.UTC)
    rows = []
    for tid, rec in sorted(session.verifier.tokens.items(), key=lambda kv: kv[1]["created_seq"]):
        if session.role == "member" and rec["user"] != session.user:
            continue
        slot = h.tokens.get(tid)
        status = (
            "revoked"
            if rec.get("revoked_seq") is not None
            else "refused"
            if rec.get("refused")
            else "expired"
            if _expired(rec["expires_at"], now)
            else "active"
            if slot is not None
            else "missing"
        )
        rows.append(
            {
                "token_id": tid,
                "user": rec["user"],
                "created_at": (slot or {}).get("created_at", "-"),
                "expires_at": rec["expires_at"],
                "status": status,
            }
        )
    return rows


def revoke_token(session: Session, token_id: str) -> dict[str, Any]:
    """Revoke a token (its owner or an admin): a signed ``token.revoke``, then its slot is deleted."""
    session.sync()
    rec = session.verifier.tokens.get(str(token_id))
    if rec is None or (rec["user"] != session.user and session.role != "admin"):
        raise NotFound(f"no such token: {str(token_id)[:40]!r}")
    with vault_lock(session.vault_dir):
        if rec.get("revoked_seq") is None:
            session.audit("token.revoke", severity="notice", token_id=token_id, user=rec["user"])
        h = hdr.load(session.vault_dir)
        h.tokens.pop(token_id, None)
        h.save(session.vault_dir)
        session.header = h
    return {"token_id": token_id, "user": rec["user"], "revoked": True}


def parse_token(token: str) -> tuple[str, bytes]:
    """(token id, 32-byte secret) or :class:`AuthenticationFailed` for anything else."""
    m = TOKEN_RE.match(token or "")
    if not m:
        raise AuthenticationFailed("invalid API token")
    raw = m.group(2).replace("-", "+").replace("_", "/") + "="
    try:
        secret = crypto.b64d(raw)
    except ValueError:
        raise AuthenticationFailed("invalid API token") from None
    if len(secret) != 32:
        raise AuthenticationFailed("invalid API token")
    return m.group(1), secret


def token_digest(token: str) -> str:
    """What a cache may key on (never the token itself)."""
    return hashlib.sha256(token.encode()).hexdigest()


def open_token_session(
    vault_dir: Path,
    token: str,
    *,
    via: str | None = None,
    report: Callable[[str], None] | None = None,
    witness_header: bool = False,
) -> tuple[Session, str]:
    """Unlock the vault with an API token: ``(session of its user, token id)``.

    Every failure is :class:`AuthenticationFailed` ("invalid API token", or, once the token proved
    itself, why it no longer works) and is reported: to ``report(attempted)`` (the team server keeps
    them in its own memory, out of members' reach), else parked for the audit log like a failed
    unlock. ``witness_header`` (the team server): read ``header.json`` through the server's own
    memory of it (:func:`offline.vault.witness.observe_header`): a rolled-back header, or a token
    slot the server saw deleted and a member put back, is refused.
    """
    vault_dir = Path(vault_dir)

    def failed(who: str) -> None:
        if report is not None:
            report(who)
        else:
            record_failed_unlock(vault_dir, who, via=via)

    h = witness.observe_header(vault_dir) if witness_header else hdr.load(vault_dir)
    tid = "?"
    try:
        tid, secret = parse_token(token)
        slot = h.tokens.get(tid)
        if slot is None:
            _kek(secret, b"\0" * 16, h.vault_id, tid)  # the same work as a real slot
            raise AuthenticationFailed("invalid API token")
        user, keys, root = _unseal(h, tid, slot, secret)
        if witness_header:
            witness.check_token_alive(vault_dir, h.vault_id, tid)
    except AuthenticationFailed:
        failed(f"token:{tid}")
        raise
    if user not in h.slots:  # the user's passphrase slot went with their removal
        failed(f"token:{tid}")
        raise AuthenticationFailed("API token of a removed user")
    session = open_with_keys(vault_dir, h, user, keys, root, own_state_only=True)
    try:
        check_token(session, tid)
    except AuthenticationFailed:
        session.close()
        failed(f"token:{tid}")
        raise
    except BaseException:
        session.close()
        raise
    return session, tid


def _unseal(
    h: hdr.Header, tid: str, slot: dict[str, Any], secret: bytes
) -> tuple[str, UserKeys, dict[str, str]]:
    try:
        user, expires_at = str(slot["user"]), str(slot["expires_at"])
        if slot["kdf"]["alg"] != "hkdf-sha256":
            raise DecryptionError()
        kek = _kek(secret, crypto.b64d(slot["kdf"]["salt"]), h.vault_id, tid)
        inner = json.loads(
            crypto.unseal(kek, crypto.b64d(slot["sealed_keys"]), _aad(h.vault_id, tid, user, expires_at))
        )
        keys = UserKeys(
            X25519PrivateKey.from_private_bytes(bytes.fromhex(inner["x25519"])),
            Ed25519PrivateKey.from_private_bytes(bytes.fromhex(inner["ed25519"])),
        )
        root = dict(inner["root"])
    except (DecryptionError, KeyError, ValueError, TypeError):
        raise AuthenticationFailed("invalid API token") from None
    if keys.x25519_pub.hex() != slot.get("x25519") or keys.ed25519_pub.hex() != slot.get("ed25519"):
        raise AuthenticationFailed("invalid API token")
    return user, keys, root


def note_head(session: Session) -> None:
    """Remember, in this process's home, the furthest chain head any user's session reached
    (:func:`offline.vault.witness.note_head`)."""
    witness.note_head(session)


def check_token(session: Session, token_id: str) -> None:
    """The token still works: signed as created by this user, not revoked, not expired, slot present,
    and the chain still holds the furthest head this server saw (a cut-back chain is refused).

    Called at every request of a cached session, after :meth:`Session.refresh`.
    """
    witness.check_head(session)
    note_head(session)
    rec = session.verifier.tokens.get(token_id)
    slot = session.header.tokens.get(token_id)
    if rec is None or rec["user"] != session.user or slot is None:
        raise AuthenticationFailed("invalid API token")
    if rec.get("revoked_seq") is not None:
        raise AuthenticationFailed("API token revoked")
    witness.check_token_alive(session.vault_dir, session.vault_id, token_id)
    if rec.get("refused"):
        raise AuthenticationFailed(f"invalid API token ({rec['refused']})")
    if slot.get("expires_at") != rec["expires_at"]:
        raise AuthenticationFailed("invalid API token")  # a slot re-sealed with another expiry
    if _expired(rec["expires_at"]):
        raise AuthenticationFailed("API token expired")
    if _too_far(rec["expires_at"]):  # an entry's own time is the signer's word: hold it to our clock too
        raise AuthenticationFailed(f"invalid API token (lifetime over {MAX_TOKEN_DAYS} days)")


def _too_far(expires_at: str) -> bool:
    limit = _dt.datetime.now(_dt.UTC) + _dt.timedelta(days=MAX_TOKEN_DAYS, seconds=TOKEN_CLOCK_SLACK_S)
    try:
        return _dt.datetime.fromisoformat(expires_at) > limit
    except (TypeError, ValueError):
        return True
