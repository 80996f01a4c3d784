"""Replaying erasures into a vault restored from a backup made before them.

Above both the erasure journal (:mod:`offline.gdpr.journal`, which records what was erased) and
:mod:`offline.gdpr.erase` (which removes it and writes the journal rows): a replay is an erasure
driven by journal entries the vault misses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..vault.collections import open_collection
from ..vault.session import Session
from .common import label_clause, writable_collections
from .erase import erase_documents, erasure_coverage
from .finder import Found
from .journal import chunk_hash, doc_hash, identifier_key, missing_erasures, record
from .terms import term_hash, window_terms


def reapply(
    session: Session, *, receipt_dir: Path | str | None = None, partial: bool = False
) -> dict[str, Any]:
    """Replay the erasures this vault misses: remove what they removed, restore the journal rows."""
    session.require_role("admin", "member", action="reapplying erasures")
    missing = missing_erasures(session)
    if not missing:
        return {"reapplied": [], "receipt": None}
    key = identifier_key(session)
    index = {(k, h) for m in missing for k, h in m["entries"]}
    names = writable_collections(session)
    plan = []
    for name in names:
        handle = open_collection(session, name, "write")
        found = _replay_matches(handle, key, index)
        plan.append(
            (handle, [Found(doc_id, whole, chunks, ["journal"]) for doc_id, (whole, chunks) in found.items()])
        )
    coverage = erasure_coverage(session, [h for h, _ in plan], requested=False)
    receipt = erase_documents(
        session,
        plan,
        kind="reapply",
        reason="erasures replayed into a vault restored from before them "
        + ", ".join(m["receipt_id"] for m in missing),
        receipt_dir=receipt_dir,
        coverage=coverage,
        journal_terms=None,
    )
    for m in missing:
        record(session, m["receipt_id"], m["entries"], m["erased_at"], machine=False)
    return {
        "reapplied": [m["receipt_id"] for m in missing],
        "receipt": receipt,
        "complete": coverage["complete"] or partial,
    }


def _replay_matches(
    handle: Any, key: bytes, index: set[tuple[str, str]]
) -> dict[int, tuple[bool, list[int]]]:
    """doc id -> (whole, chunk ids) for the documents and chunks the journal entries name."""
    conn = handle.conn
    clause, params = label_clause(handle.labels)
    out: dict[int, tuple[bool, list[int]]] = {}
    for doc_id, sha in conn.execute("SELECT d.id, d.sha256 FROM documents d WHERE 1" + clause, params):
        if ("document", doc_hash(key, sha)) in index:
            out[doc_id] = (
                True,
                [r[0] for r in conn.execute("SELECT id FROM chunks WHERE doc_id = ?", (doc_id,))],
            )
    whole_docs = set(out)
    for cid, doc_id, text in conn.execute(
        "SELECT c.id, c.doc_id, c.text FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE 1" + clause,
        params,
    ):
        if doc_id in whole_docs:
            continue
        if ("chunk", chunk_hash(key, text)) in index or any(
            ("term", term_hash(key, w)) in index for w in window_terms(text)
        ):
            out.setdefault(doc_id, (False, []))[1].append(cid)
    return out
