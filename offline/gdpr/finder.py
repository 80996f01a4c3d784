"""Find a data subject in an open collection: tags, what the text says, and detected identifiers.

Three sources, united: documents tagged with the subject at ingest; chunks whose text mentions one
of the subject's terms (FTS5 gives candidates cheaply, :func:`~offline.gdpr.terms.mentions` then
checks each one, so a stemmed or partial FTS hit never counts by itself); and chunks whose
identifiers detected at ingest hash to one of the terms (an index hit). A document's file name
counts as text too.

What goes for each document: the whole of it when it is about the subject (tagged, named in its
file name, or mentioning no *other* subject), else only the chunks that mention the subject.
"Other subject" means another subject tag or another identifier of the vault's subject-id pattern
(a ward list, an appointments file ingested whole): those documents keep their other patients'
passages, so an erasure removes no document of someone else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..vault import db
from .common import label_clause
from .terms import SubjectTerms, fts_query, mentions, term_hash

SUBJECT_ID_KIND = "SUBJECT_ID"


@dataclass
class Found:
    """One document where the subject appears."""

    doc_id: int
    whole: bool
    chunk_ids: list[int]
    reasons: list[str] = field(default_factory=list)  # tagged, text, identifier, file name
    other_subjects: bool = False


def subject_hashes(terms: SubjectTerms, key: bytes) -> set[str]:
    """Keyed hashes of every term, as detected identifiers are stored (joined and compacted)."""
    out = set()
    for t in terms.all:
        out.add(term_hash(key, t))
        out.add(term_hash(key, "".join(t)))
    return out


def find_in_collection(handle: Any, terms: SubjectTerms, key: bytes) -> list[Found]:
    """Every document of ``handle`` (within its grant's labels) where the subject appears."""
    from .redact import pseudonym_terms

    conn = handle.conn
    terms = pseudonym_terms(handle, terms, key)  # a redacting collection holds her pseudonyms, not her name
    clause, lparams = label_clause(handle.labels)
    hits: dict[int, dict[str, Any]] = {}

    def hit(doc_id: int, reason: str, chunk_id: int | None = None) -> None:
        h = hits.setdefault(doc_id, {"reasons": set(), "chunks": set()})
        h["reasons"].add(reason)
        if chunk_id is not None:
            h["chunks"].add(chunk_id)

    for (doc_id,) in conn.execute(
        "SELECT d.id FROM documents d JOIN doc_subjects s ON s.doc_id = d.id WHERE s.subject = ?" + clause,
        [terms.subject, *lparams],
    ):
        hit(doc_id, "tagged")
    query = fts_query(terms)
    if query:
        try:
            rows = conn.execute(
                "SELECT c.id, c.doc_id, c.text FROM chunks_fts f JOIN chunks c ON c.id = f.rowid"
                " JOIN documents d ON d.id = c.doc_id WHERE chunks_fts MATCH ?" + clause,
                [query, *lparams],
            ).fetchall()
        except db.DatabaseError as exc:  # a term FTS5 cannot parse must not hide the subject: say so
            from ..errors import UsageError

            raise UsageError(
                f"cannot search for this subject's terms ({str(exc).splitlines()[0][:80]})"
            ) from None
        for cid, doc_id, text in rows:
            if mentions(text, terms):
                hit(doc_id, "text", cid)
    hashes = subject_hashes(terms, key)
    if hashes and _has_identifiers(conn):
        marks = ",".join("?" * len(hashes))
        for cid, doc_id in conn.execute(
            f"SELECT i.chunk_id, i.doc_id FROM identifiers i JOIN documents d ON d.id = i.doc_id"
            f" WHERE i.hash IN ({marks})" + clause,
            [*sorted(hashes), *lparams],
        ):
            hit(doc_id, "identifier", cid)
    for doc_id, name in conn.execute("SELECT d.id, d.name FROM documents d WHERE 1" + clause, lparams):
        if mentions(name.replace("_", " "), terms):
            hit(doc_id, "file name")
    out = []
    for doc_id in sorted(hits):
        h = hits[doc_id]
        others = _other_subjects(conn, doc_id, terms.subject, hashes)
        whole = bool({"tagged", "file name"} & h["reasons"]) or not others
        chunk_ids = _all_chunks(conn, doc_id) if whole else sorted(h["chunks"])
        out.append(Found(doc_id, whole, chunk_ids, sorted(h["reasons"]), others))
    return out


def _has_identifiers(conn: Any) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'identifiers'").fetchone() is not None


def _all_chunks(conn: Any, doc_id: int) -> list[int]:
    return [r[0] for r in conn.execute("SELECT id FROM chunks WHERE doc_id = ? ORDER BY ord", (doc_id,))]


def _other_subjects(conn: Any, doc_id: int, subject: str, hashes: set[str]) -> bool:
    if conn.execute(
        "SELECT 1 FROM doc_subjects WHERE doc_id = ? AND subject != ? LIMIT 1", (doc_id, subject)
    ).fetchone():
        return True
    if not _has_identifiers(conn):
        return False
    ids = {
        r[0]
        for r in conn.execute(
            "SELECT hash FROM identifiers WHERE doc_id = ? AND kind = ?", (doc_id, SUBJECT_ID_KIND)
        )
    }
    return bool(ids - hashes)
