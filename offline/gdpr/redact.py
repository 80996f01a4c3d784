"""Redaction with stable pseudonyms, per collection (``collections create C --redact phi``).

In a redacting collection every identifier the detector finds (:mod:`offline.ingest.detect`) is
replaced by a pseudonym such as ``[PERSON-7f3a91c2]`` or ``[PATIENT-0b61d4e9]`` *before* the
text is chunked, embedded and indexed, so search, answers and fine-tuning never see the value.
The same value gives the same pseudonym in the whole collection (so "what did [PATIENT-0b61d4e9]
take?" still works): it is an HMAC of the kind and normalised value under the vault's identifier
key and the collection id.

The mapping back (pseudonym -> value) is sealed to the vault's audit seal key
(:func:`~offline.vault.core.seal_for_auditors`), whose private half only admins and auditors hold;
a subject export made by an admin resolves pseudonyms for the data subject. Who turns it on is
signed state (``gdpr_settings`` row ``redact:<collection id>``, an admin's change).

Limits, stated: a document ingested before redaction was turned on keeps its text (re-ingest it);
and like every keyed hash in this vault, an enrolled insider with raw tools can test a guessed
value against a pseudonym, because every enrolled user holds the identifier key.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from ..errors import NotFound, UsageError
from ..vault.core import Session
from .terms import SubjectTerms

MODES = ("phi", "off")
KEY_PREFIX = "redact:"
LABELS = {
    "PERSON": "PERSON",
    "SUBJECT_ID": "PATIENT",
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "DATE_OF_BIRTH": "DOB",
    "UK_NHS": "NHS",
    "US_SSN": "SSN",
}


def redaction_mode(session: Session, collection_id: str) -> str:
    row = session.policy.row("gdpr_settings", KEY_PREFIX + collection_id)
    return row["value"] if row else "off"


def set_redaction(session: Session, collection: str, mode: str) -> dict[str, Any]:
    """Turn redaction on (``phi``) or off for a collection (admin; a signed change)."""
    session.require_role("admin", action="setting redaction")
    if mode not in MODES:
        raise UsageError(f"redaction must be one of {', '.join(MODES)} (got {mode!r})")
    found = session.policy.collection(collection)
    if found is None:
        raise NotFound(f"no such collection: {collection!r}")
    cid = found[0]
    with session.change("gdpr.redaction.set", severity="notice", collection=collection, mode=mode):
        if mode == "off":
            session.db.execute("DELETE FROM gdpr_settings WHERE key = ?", (KEY_PREFIX + cid,))
        else:
            session.db.execute(
                "INSERT OR REPLACE INTO gdpr_settings(key, value) VALUES (?, ?)", (KEY_PREFIX + cid, mode)
            )
    return {"collection": collection, "redact": mode}


def pseudonym(key: bytes, collection_id: str, kind: str, value_key: str) -> str:
    """``[PERSON-7f3a91c2]``: 32 bits of an HMAC, stable per collection, kind and normalised value."""
    mac = hmac.new(key, f"offline/pseudonym/v1|{collection_id}|{kind}|{value_key}".encode(), hashlib.sha256)
    return f"[{LABELS.get(kind, 'ID')}-{mac.hexdigest()[:8]}]"


class Redactor:
    """Replaces identifiers by pseudonyms in the texts of one collection's ingest."""

    def __init__(self, session: Session, handle: Any, detector: Any):
        self.session = session
        self.collection_id = handle.id
        self.detector = detector
        self.enabled = redaction_mode(session, handle.id) != "off"
        if self.enabled and not detector.enabled:
            raise UsageError(
                f"collection {handle.name!r} redacts identifiers, which needs identifier_detection on"
            )

    def segments(self, segments: list[Any]) -> tuple[list[Any], list[tuple[str, str, str, str]]]:
        """Each segment redacted (page, section and flags kept), and the pseudonyms used."""
        from dataclasses import replace

        out, mapping = [], {}
        for seg in segments:
            text, used = self.redact(seg.text)
            out.append(replace(seg, text=text))
            mapping.update({m[0]: m for m in used})
        return out, list(mapping.values())

    @staticmethod
    def identifiers(texts: list[str], pseudonyms: list[tuple[str, str, str, str]]) -> list[tuple[Any, ...]]:
        """Where each pseudonym sits in each chunk, as identifier rows (the value's hash, not the token's)."""
        out = []
        for i, text in enumerate(texts):
            for token, kind, digest, _ in pseudonyms:
                start = text.find(token)
                while start >= 0:
                    out.append((i, kind, digest, start, start + len(token), 1.0))
                    start = text.find(token, start + 1)
        return sorted(out)

    def redact(self, text: str) -> tuple[str, list[tuple[str, str, str, str]]]:
        """(redacted text, [(pseudonym, kind, keyed hash of the value, sealed value)])."""
        from ..ingest.detect import detect, value_key
        from ..vault.core import seal_for_auditors
        from .terms import term_hash

        out, mapping, last = [], {}, 0
        for f in detect(text, self.detector.pattern):
            value = text[f.start : f.end]
            vk = value_key(f.kind, value)
            if not vk:
                continue
            token = pseudonym(self.detector.key, self.collection_id, f.kind, vk)
            out += [text[last : f.start], token]
            last = f.end
            if token not in mapping:
                mapping[token] = (
                    token,
                    f.kind,
                    term_hash(self.detector.key, vk),
                    seal_for_auditors(self.session, value),
                )
        out.append(text[last:])
        return "".join(out), list(mapping.values())


def pseudonym_terms(handle: Any, terms: SubjectTerms, key: bytes) -> SubjectTerms:
    """``terms`` plus the pseudonyms the subject's id and names have in ``handle``'s collection."""
    from ..ingest.detect import value_key
    from .terms import tokens

    if (
        handle.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'pseudonyms'").fetchone() is None
        or handle.conn.execute("SELECT 1 FROM pseudonyms LIMIT 1").fetchone() is None
    ):
        return terms
    extra = []
    for t in terms.all:
        for kind in LABELS:
            vk = value_key(kind, " ".join(t))
            if vk:
                extra.append(tuple(tokens(pseudonym(key, handle.id, kind, vk))))
    return SubjectTerms(terms.subject, terms.ids + tuple(dict.fromkeys(extra)), terms.names)


def resolve(session: Session, conn: Any, text: str) -> str:
    """``text`` with each pseudonym of this collection replaced by its value (admins and auditors)."""
    import re

    from ..vault.core import unseal_for_auditors

    if session.role not in ("admin", "auditor") or "[" not in text:
        return text
    tokens = set(re.findall(r"\[[A-Z]+-[0-9a-f]{8}\]", text))
    for token in tokens:
        row = conn.execute("SELECT sealed FROM pseudonyms WHERE token = ? LIMIT 1", (token,)).fetchone()
        if row:
            text = text.replace(token, unseal_for_auditors(session, row[0]))
    return text
