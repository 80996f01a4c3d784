"""Break-glass keys: an emergency read needs the user's own wrap *and* a code kept off the laptop.

Pre-provisioned break-glass (HIPAA's emergency access) lets a clinician read a collection they hold
no grant on when no admin is at hand. If that were a plain key wrap per member, every member could
decrypt the collection with raw tools at any time, with no audit entry. So it takes two secrets:

- ``K_bg``, random per collection, wrapped to each provisioned user (``vault_keys`` purpose
  ``break-glass:<collection id>``);
- ``K_e``, random per collection, sealed under the **emergency code**: 20 random base32 characters
  (100 bits) printed once when an admin turns break-glass on, for a sealed envelope or the ward's
  safe. Admins also hold ``K_e`` wrapped (purpose ``break-glass-code:<id>``) so they can re-seal it
  when the collection key rotates or provision users enrolled later, without knowing the code.

The collection key is sealed under ``HKDF(K_bg || K_e)`` in ``collections.emergency``. A member
without the envelope can do nothing; with it, the kit writes the high-severity ``break_glass.read``
entry before it uses the key, but raw tools could skip that entry: opening the envelope is then the
evidence, and turning break-glass off (or on again) rotates the collection key and issues a new code.
All rows involved are authorization state: they count only as the signed chain recorded them.
"""

from __future__ import annotations

import base64
import json
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import AccessDenied, DecryptionError, UsageError
from . import crypto
from .session import Session, signed_wrap

CODE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
CODE_LEN = 20


def user_purpose(collection_id: str) -> str:
    return f"break-glass:{collection_id}"


def code_purpose(collection_id: str) -> str:
    return f"break-glass-code:{collection_id}"


def _ctx(vault_id: str, collection_id: str, user: str, what: str) -> str:
    return f"break-glass-{what}|{vault_id}|{collection_id}|{user}"


def new_code() -> str:
    raw = "".join(CODE_ALPHABET[b % 32] for b in os.urandom(CODE_LEN))
    return "-".join(raw[i : i + 4] for i in range(0, CODE_LEN, 4))


def normalise_code(code: str) -> str:
    clean = "".join(ch for ch in str(code).upper() if ch not in "- \t\r\n")
    if len(clean) != CODE_LEN or any(ch not in CODE_ALPHABET for ch in clean):
        raise UsageError(
            "that is not a break-glass code (20 letters and digits, as printed when it was enabled)"
        )
    return clean


def _hkdf(material: bytes, salt: bytes, info: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=crypto.KEY_BYTES, salt=salt, info=info.encode()).derive(
        material
    )


def _box_aad(vault_id: str, collection_id: str, file: str, what: str) -> bytes:
    return f"offline/v1/break-glass-{what}|{vault_id}|{collection_id}|{file}".encode()


def _seal_blob(
    session: Session,
    cid: str,
    file: str,
    key: bytes,
    k_bg: bytes,
    k_e: bytes,
    salt: bytes,
    code_box: str,
    to: list[str] | None,
) -> str:
    kek = _hkdf(k_bg + k_e, salt, f"break-glass-key|{session.vault_id}|{cid}")
    key_box = crypto.b64e(crypto.seal(kek, key, _box_aad(session.vault_id, cid, file, "key")))
    # ``to``: the users an admin chose (None: every admin and member, later enrolments included).
    return json.dumps(
        {"v": 1, "salt": base64.b64encode(salt).decode(), "code_box": code_box, "key_box": key_box, "to": to},
        sort_keys=True,
    )


def provisioned_users(session: Session, cid: str) -> list[str]:
    return sorted(
        u
        for (purpose, u) in (json.loads(k) for k in session.policy.image["vault_keys"])
        if purpose == user_purpose(cid) and session.policy.user(u) is not None
    )


def enable(
    session: Session, cid: str, file: str, key: bytes, users: list[str] | None
) -> tuple[str, list[str]]:
    """Inside the caller's ``Session.change``: new K_bg, K_e and code; wraps; the sealed blob.

    ``users``: who may break the glass (default: every enrolled admin and member). Returns the code
    (shown once) and the provisioned users.
    """
    pol = session.policy
    eligible = pol.users("admin", "member")
    chosen = sorted(eligible) if users is None else sorted(set(users))
    for u in chosen:
        if u not in eligible:
            raise UsageError(f"{u!r} is not an enrolled admin or member")
    code = new_code()
    k_bg, k_e, salt = crypto.random_key(), crypto.random_key(), os.urandom(16)
    code_key = _hkdf(normalise_code(code).encode(), salt, f"break-glass-code|{session.vault_id}|{cid}")
    code_box = crypto.b64e(crypto.seal(code_key, k_e, _box_aad(session.vault_id, cid, "", "code")))
    db = session.db
    db.execute("DELETE FROM vault_keys WHERE purpose IN (?, ?)", (user_purpose(cid), code_purpose(cid)))
    for u in sorted(set(chosen) | set(pol.users("admin"))):  # admins keep K_bg to provision later users
        pub = pol.wrap_pub(u)
        if pub is None:
            continue
        db.execute(
            "INSERT INTO vault_keys(purpose, user, wrapped) VALUES (?, ?, ?)",
            (user_purpose(cid), u, crypto.wrap_to(pub, k_bg, _ctx(session.vault_id, cid, u, "user"))),
        )
    for u in pol.users("admin"):
        pub = pol.wrap_pub(u)
        if pub is None:
            continue
        db.execute(
            "INSERT INTO vault_keys(purpose, user, wrapped) VALUES (?, ?, ?)",
            (code_purpose(cid), u, crypto.wrap_to(pub, k_e, _ctx(session.vault_id, cid, u, "code"))),
        )
    db.execute(
        "UPDATE collections SET break_glass = 1, emergency = ? WHERE id = ?",
        (
            _seal_blob(session, cid, file, key, k_bg, k_e, salt, code_box, None if users is None else chosen),
            cid,
        ),
    )
    return code, sorted(set(chosen) | set(pol.users("admin")))


def disable(session: Session, cid: str) -> int:
    """Inside the caller's ``Session.change``: remove every wrap and the blob. The caller then rotates."""
    n = session.db.execute(
        "DELETE FROM vault_keys WHERE purpose IN (?, ?)", (user_purpose(cid), code_purpose(cid))
    ).rowcount
    session.db.execute("UPDATE collections SET break_glass = 0, emergency = NULL WHERE id = ?", (cid,))
    return n


def _custodian_keys(session: Session, cid: str) -> tuple[bytes, bytes]:
    """(K_bg, K_e) through the calling admin's own wraps."""
    bg = signed_wrap(session, "vault_keys", user_purpose(cid), session.user)
    ke = signed_wrap(session, "vault_keys", code_purpose(cid), session.user)
    if bg is None or ke is None:
        raise AccessDenied("access denied: you hold no break-glass custodian key for this collection")
    return (
        crypto.unwrap_with(session.keys.x25519, bg, _ctx(session.vault_id, cid, session.user, "user")),
        crypto.unwrap_with(session.keys.x25519, ke, _ctx(session.vault_id, cid, session.user, "code")),
    )


def reseal(session: Session, cid: str, new_file: str, new_key: bytes) -> None:
    """Inside a rotation's ``Session.change``: seal the new collection key for break-glass (admin)."""
    row = session.db.execute("SELECT emergency FROM collections WHERE id = ?", (cid,)).fetchone()
    if row is None or row[0] is None:
        return
    blob = json.loads(row[0])
    k_bg, k_e = _custodian_keys(session, cid)
    session.db.execute(
        "UPDATE collections SET emergency = ? WHERE id = ?",
        (
            _seal_blob(
                session,
                cid,
                new_file,
                new_key,
                k_bg,
                k_e,
                base64.b64decode(blob["salt"]),
                blob["code_box"],
                blob.get("to"),
            ),
            cid,
        ),
    )


def provision_user(session: Session, name: str, x25519_pub: bytes) -> list[str]:
    """Inside ``add_user``'s change: wrap K_bg (and, for an admin, K_e) to a newly enrolled user."""
    done = []
    role = session.db.execute("SELECT role FROM users WHERE name = ?", (name,)).fetchone()[0]
    for k, row in sorted(session.policy.image["collections"].items()):
        if not row.get("emergency"):
            continue
        cid = json.loads(k)[0]
        stored = session.db.execute("SELECT emergency FROM collections WHERE id = ?", (cid,)).fetchone()
        if role != "admin" and json.loads(stored[0]).get("to") is not None:
            continue  # break-glass was given to named users only: a new member is not one of them
        k_bg, k_e = _custodian_keys(session, cid)
        session.db.execute(
            "INSERT OR REPLACE INTO vault_keys(purpose, user, wrapped) VALUES (?, ?, ?)",
            (
                user_purpose(cid),
                name,
                crypto.wrap_to(x25519_pub, k_bg, _ctx(session.vault_id, cid, name, "user")),
            ),
        )
        if role == "admin":
            session.db.execute(
                "INSERT OR REPLACE INTO vault_keys(purpose, user, wrapped) VALUES (?, ?, ?)",
                (
                    code_purpose(cid),
                    name,
                    crypto.wrap_to(x25519_pub, k_e, _ctx(session.vault_id, cid, name, "code")),
                ),
            )
        done.append(row["name"])
    return done


def emergency_key(session: Session, cid: str, file: str, code: str | None) -> bytes:
    """The collection key through the caller's break-glass wrap and the emergency code.

    Raises :class:`AccessDenied` (the same message) for no wrap, no code or a wrong code.
    """
    if code is None:
        raise UsageError(
            "break-glass needs the emergency code (OFFLINE_BREAK_GLASS_CODE_FILE or OFFLINE_BREAK_GLASS_CODE)"
        )
    clean = normalise_code(code)
    row = session.policy.row("collections", cid)
    wrapped = signed_wrap(session, "vault_keys", user_purpose(cid), session.user)
    if row is None or not row.get("emergency") or wrapped is None:
        raise AccessDenied("access denied: no break-glass key provisioned for you")
    stored = session.db.execute("SELECT emergency FROM collections WHERE id = ?", (cid,)).fetchone()
    try:
        blob = json.loads(stored[0])
        salt = base64.b64decode(blob["salt"])
        k_bg = crypto.unwrap_with(
            session.keys.x25519, wrapped, _ctx(session.vault_id, cid, session.user, "user")
        )
        code_key = _hkdf(clean.encode(), salt, f"break-glass-code|{session.vault_id}|{cid}")
        k_e = crypto.unseal(
            code_key, crypto.b64d(blob["code_box"]), _box_aad(session.vault_id, cid, "", "code")
        )
        kek = _hkdf(k_bg + k_e, salt, f"break-glass-key|{session.vault_id}|{cid}")
        return crypto.unseal(kek, crypto.b64d(blob["key_box"]), _box_aad(session.vault_id, cid, file, "key"))
    except (DecryptionError, KeyError, TypeError, ValueError):
        raise AccessDenied("access denied: the break-glass code is wrong") from None
