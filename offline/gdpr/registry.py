"""The subject registry: who a data subject is (id, name, aliases, date of birth), sealed in the vault.

``offline gdpr subject add PT-00417 --name "Maria Gonzalez" --alias "M. Gonzalez" --dob 1961-03-14``
lets an erasure or export find the person in text nobody tagged. The registry is personal data
about exactly the people who asked for their rights, so it is sealed: each row is AES-256-GCM
under a random *registry key* that is wrapped (X25519, like the audit seal key) to each admin in
``vault_keys`` (purpose ``subject-registry``), a protected table, so every wrap is a signed change.
Members and auditors hold the vault database key but not this one: they see opaque rows.
Rows are found by ``ref``, an HMAC of the id under the registry key (no guessable hash).

An admin enrolled after the key was made gets a wrap the next time an admin who holds it uses the
registry (no hook into ``users add`` needed); until then they are told to ask one.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import AccessDenied, AlreadyExists, NotFound, UsageError
from ..vault import crypto
from ..vault.core import Session, signed_wrap, utc_now
from .common import check_subject, subject_ref
from .terms import SubjectTerms, subject_terms

PURPOSE = "subject-registry"
NAME_MAX = 200
ALIASES_MAX = 20


@dataclass
class Subject:
    """One registered data subject."""

    id: str
    name: str | None = None
    aliases: list[str] = field(default_factory=list)
    dob: str | None = None
    created_at: str | None = None
    created_by: str | None = None

    def terms(self) -> SubjectTerms:
        return subject_terms(self.id, name=self.name, aliases=self.aliases)


def _context(vault_id: str, user: str) -> str:
    return f"subject-registry-key|{vault_id}|{user}"


def _aad(vault_id: str, ref: str) -> bytes:
    return f"offline/subject-registry/v1|{vault_id}|{ref}".encode()


def _admin_pubs(session: Session) -> dict[str, bytes]:
    # Only keys the signed state vouches for (an upgraded vault's users confirm theirs first).
    pol = session.policy
    return {u: pub for u in pol.users("admin") if (pub := pol.wrap_pub(u)) is not None}


def _holders(session: Session) -> set[str]:
    return {json.loads(k)[1] for k in session.policy.image["vault_keys"] if json.loads(k)[0] == PURPOSE}


def registry_key(session: Session, *, create: bool = False) -> bytes:
    """The registry key (admins only), made on first use; wraps it to admins who lack one."""
    session.require_role("admin", action="using the subject registry")
    holders = _holders(session)
    if not holders:
        if not create:
            raise NotFound("the subject registry is empty (add a subject with `offline gdpr subject add`)")
        key = crypto.random_key()
        _wrap(session, key, _admin_pubs(session), "created")
        return key
    wrapped = signed_wrap(session, "vault_keys", PURPOSE, session.user)
    if wrapped is None:
        raise AccessDenied(
            "access denied: you hold no subject registry key yet; ask an admin who does to run "
            "`offline gdpr subject list` once"
        )
    key = crypto.unwrap_with(session.keys.x25519, wrapped, _context(session.vault_id, session.user))
    missing = {u: p for u, p in _admin_pubs(session).items() if u not in holders}
    if missing:
        _wrap(session, key, missing, "shared")
    return key


def _wrap(session: Session, key: bytes, pubs: dict[str, bytes], what: str) -> None:
    with session.change("gdpr.registry.key", severity="notice", event=what, holders=sorted(pubs)):
        for user, pub in pubs.items():
            session.db.execute(
                "INSERT OR REPLACE INTO vault_keys(purpose, user, wrapped) VALUES (?, ?, ?)",
                (PURPOSE, user, crypto.wrap_to(pub, key, _context(session.vault_id, user))),
            )


def _ref(key: bytes, subject: str) -> str:
    return hmac.new(key, b"offline/subject-id/v1|" + subject.encode("utf-8"), hashlib.sha256).hexdigest()


def _check_dob(dob: str | None) -> str | None:
    if dob is None or not str(dob).strip():
        return None
    try:
        day = _dt.date.fromisoformat(str(dob).strip())
    except ValueError:
        raise UsageError(f"invalid date of birth {dob!r}: use YYYY-MM-DD") from None
    if not _dt.date(1880, 1, 1) <= day <= _dt.date.today():
        raise UsageError(f"invalid date of birth {dob!r}: not a plausible date")
    return day.isoformat()


def _check_text(what: str, value: str | None) -> str | None:
    if value is None:
        return None
    v = " ".join(str(value).split())
    if not v or len(v) > NAME_MAX or any(ord(ch) < 32 for ch in v):
        raise UsageError(f"invalid {what} {value!r}: 1-{NAME_MAX} printable characters")
    return v


def add_subject(
    session: Session,
    subject: str,
    *,
    name: str | None = None,
    aliases: list[str] | tuple[str, ...] = (),
    dob: str | None = None,
    replace: bool = False,
) -> dict[str, Any]:
    """Register a subject (admin); ``replace`` updates an existing entry instead of refusing it."""
    subject = check_subject(subject)
    name = _check_text("name", name)
    clean = [a for a in (_check_text("alias", x) for x in aliases) if a]
    if len(clean) > ALIASES_MAX:
        raise UsageError(f"at most {ALIASES_MAX} aliases per subject")
    entry = Subject(subject, name, list(dict.fromkeys(clean)), _check_dob(dob), utc_now(), session.user)
    key = registry_key(session, create=True)
    ref = _ref(key, subject)
    exists = session.db.execute("SELECT 1 FROM subject_registry WHERE ref = ?", (ref,)).fetchone() is not None
    if exists and not replace:
        raise AlreadyExists.naming(
            "subject {subject} is already registered (use {replace} to update it)",
            "replace",
            subject=repr(subject),
        )
    sealed = crypto.b64e(
        crypto.seal(key, json.dumps(asdict(entry), sort_keys=True).encode(), _aad(session.vault_id, ref))
    )
    from ..vault import db

    # Logged first: the registry row is personal data, its creation must never go unrecorded.
    session.audit(
        "gdpr.subject.add",
        severity="notice",
        subject_ref=subject_ref(session, subject),
        name_given=name is not None,
        aliases=len(entry.aliases),
        dob_given=entry.dob is not None,
        replaced=exists,
    )
    with db.transaction(session.db):
        session.db.execute(
            "INSERT OR REPLACE INTO subject_registry(ref, sealed, created_at, created_by)"
            " VALUES (?, ?, ?, ?)",
            (ref, sealed, entry.created_at, session.user),
        )
    return {"subject": subject, "name": name, "aliases": entry.aliases, "dob": entry.dob, "replaced": exists}


def _open_row(session: Session, key: bytes, ref: str, sealed: str) -> Subject:
    from ..errors import VaultCorrupted

    try:
        raw = json.loads(crypto.unseal(key, crypto.b64d(sealed), _aad(session.vault_id, ref)))
        entry = Subject(**raw)
    except Exception:
        raise VaultCorrupted(
            f"{session.header.db_file}: subject registry row {ref[:12]}… does not decrypt"
        ) from None
    if not hmac.compare_digest(_ref(key, entry.id), ref):
        raise VaultCorrupted(f"{session.header.db_file}: subject registry row {ref[:12]}… was moved")
    return entry


def get_subject(session: Session, subject: str) -> Subject | None:
    """The registered entry for ``subject``, or None (not registered, or the caller is no admin)."""
    subject = check_subject(subject)
    if session.role != "admin" or not _holders(session):
        return None
    key = registry_key(session)
    ref = _ref(key, subject)
    row = session.db.execute("SELECT sealed FROM subject_registry WHERE ref = ?", (ref,)).fetchone()
    return _open_row(session, key, ref, row[0]) if row else None


def list_subjects(session: Session) -> list[dict[str, Any]]:
    """Every registered subject, decrypted (admin; the listing itself is audited)."""
    session.require_role("admin", action="listing the subject registry")
    if not _holders(session):
        return []
    key = registry_key(session)
    rows = session.db.execute("SELECT ref, sealed FROM subject_registry").fetchall()
    out = [asdict(_open_row(session, key, ref, sealed)) for ref, sealed in rows]
    session.audit("gdpr.subject.list", subjects=len(out))
    return sorted(out, key=lambda s: s["id"])


def remove_subject(session: Session, subject: str) -> dict[str, Any]:
    """Forget a registered subject (admin). Their documents stay; erase them first if that is the aim."""
    subject = check_subject(subject)
    key = registry_key(session)
    ref = _ref(key, subject)
    from ..vault import db

    if session.db.execute("SELECT 1 FROM subject_registry WHERE ref = ?", (ref,)).fetchone() is None:
        raise NotFound(f"subject {subject!r} is not registered")
    session.audit("gdpr.subject.remove", severity="notice", subject_ref=subject_ref(session, subject))
    with db.transaction(session.db):
        session.db.execute("DELETE FROM subject_registry WHERE ref = ?", (ref,))
    return {"subject": subject, "removed": True}


def resolve_terms(
    session: Session, subject: str, *, names: tuple[str, ...] = (), aliases: tuple[str, ...] = ()
) -> tuple[SubjectTerms, Subject | None]:
    """The terms to look for: the registry entry (admins) plus names/aliases given for this request."""
    subject = check_subject(subject)
    entry = get_subject(session, subject)
    name = entry.name if entry else None
    extra = list(entry.aliases if entry else []) + [
        a for a in (_check_text("alias", x) for x in aliases) if a
    ]
    given = [n for n in (_check_text("name", x) for x in names) if n]
    if name is None and given:
        name, given = given[0], given[1:]
    return subject_terms(subject, name=name, aliases=[*extra, *given]), entry
