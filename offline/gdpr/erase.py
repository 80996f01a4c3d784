"""Art. 17 erasure: remove a subject's documents everywhere the caller may write, prove it, scrub.

Each document goes with its chunks, FTS rows and vectors through the ingest store's
``delete_document`` (the same path as ``docs rm``). Then each touched collection is scrubbed: the
FTS index is merged (``optimize`` drops the deleted entries from its segments), the file is
``VACUUM``-ed (rebuilt, with ``secure_delete`` on, so no freed page keeps the text) and the WAL is
checkpointed and truncated. A receipt (what went, counts, content hashes, when, by whom, the
adapters now tainted and the backups that still hold the data) is written to the audit chain and to
a 0600 JSON file. The audit copy names the subject only by a vault-specific hash, because the chain
can never forget; the file names it in clear for the controller to hand over.

A receipt also states what it did **not** cover (``coverage``): how many collections the caller
could not write (without a grant, or read-only) and how many it covered only for the labels of
a label-limited grant, by count only, so nobody learns the names of collections they may not
see. An erasure that cannot cover everything fails closed unless the caller accepts it
(``partial=True``, ``--partial``): with nothing writable it erases nothing (AccessDenied, exit 4);
with some collections out of reach it erases what it may, writes the receipt and raises
:class:`ErasureIncomplete` (exit 1).
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from ..audit import chain
from ..errors import AccessDenied, NotFound, OfflineError, UsageError
from ..vault import db
from ..vault.collections import CollectionHandle, open_collection
from ..vault.core import Session, new_id, utc_now
from .common import (
    backup_retention_days,
    check_subject,
    new_file,
    parse_ts,
    private_output_dir,
    subject_ref,
    subject_ref_matches,
    utc_now_dt,
    writable_collections,
    write_private_json,
)
from .finder import Found
from .registry import resolve_terms

RECEIPT_VERSION = 1


class ErasureIncomplete(OfflineError):
    """The erasure ran but could not cover every collection; ``receipt`` records what it did."""

    def __init__(self, message: str, receipt: dict[str, Any] | None = None):
        super().__init__(message)
        self.receipt = receipt


def erasure_coverage(session: Session, covered: list[CollectionHandle], *, requested: bool) -> dict[str, Any]:
    """What an erasure over ``covered`` leaves out, by count (names never: see the module notes).

    ``requested``: the caller named the collections (others are out of scope by choice, and
    counted as such); otherwise every collection of the vault is in scope.
    """
    from ..vault.collections import readable_collections

    total = session.db.execute("SELECT count(*) FROM collections").fetchone()[0]
    names = {h.name for h in covered}
    label_limited = sum(1 for h in covered if h.labels is not None)
    if requested:
        read_only = no_grant = 0
        outside = max(0, total - len(names))
    else:
        read_only = len(set(readable_collections(session)) - names)
        no_grant = max(0, total - len(names) - read_only)
        outside = 0
    return {
        "scope": "requested" if requested else "all",
        "collections_in_vault": total,
        "collections_covered": len(names),
        "not_covered_no_grant": no_grant,
        "not_covered_read_only": read_only,
        "covered_only_for_grant_labels": label_limited,
        "outside_requested_scope": outside,
        "complete": no_grant == 0 and read_only == 0 and label_limited == 0,
    }


def describe_gaps(coverage: dict[str, Any]) -> str:
    """The receipt's coverage in words: ``2 of 3 collection(s) not covered (1 without ...)``."""
    missed = coverage["not_covered_no_grant"] + coverage["not_covered_read_only"]
    parts = []
    if missed:
        why = [
            f"{n} {what}"
            for n, what in (
                (coverage["not_covered_no_grant"], "without a grant"),
                (coverage["not_covered_read_only"], "read-only"),
            )
            if n
        ]
        parts.append(
            f"{missed} of {coverage['collections_in_vault']} collection(s) not covered ({', '.join(why)})"
        )
    if coverage["covered_only_for_grant_labels"]:
        parts.append(f"{coverage['covered_only_for_grant_labels']} covered only for the labels of your grant")
    return "; ".join(parts) or "complete"


def erase_subject(
    session: Session,
    subject: str,
    *,
    names: tuple[str, ...] = (),
    aliases: tuple[str, ...] = (),
    collections: list[str] | None = None,
    receipt_dir: Path | str | None = None,
    partial: bool = False,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Erase every trace of ``subject`` in ``collections`` (default: all you may write).

    The subject is looked for by tag, by what the text says (id, registered name and aliases,
    plus ``names``/``aliases`` given for this request) and by detected identifiers
    (:mod:`offline.gdpr.finder`). ``dry_run`` returns the plan (:func:`plan_summary`) and erases
    nothing. Returns the receipt (with ``file`` and ``audit`` added). A write grant is needed on
    each named collection; without ``collections`` every writable one is searched. The receipt's
    ``coverage`` says what was out of reach; unless ``partial``, an incomplete erasure raises
    (AccessDenied before anything is erased when nothing is writable, else
    :class:`ErasureIncomplete` once the reachable part is erased and receipted).
    """
    subject = check_subject(subject)
    session.require_role("admin", "member", action="erasing personal data")
    terms, _ = resolve_terms(session, subject, names=names, aliases=aliases)
    plan, coverage = subject_plan(session, terms, collections, need="write")
    if dry_run:
        summary = plan_summary(session, plan, coverage)
        session.audit("gdpr.erase.dry_run", subject_ref=subject_ref(session, subject), **summary["totals"])
        return summary
    if not plan and not coverage["complete"] and not partial:
        session.audit(
            "access.denied",
            severity="warning",
            what="gdpr.erase",
            subject_ref=subject_ref(session, subject),
            reason="no writable collection",
            coverage=coverage,
        )
        raise AccessDenied.naming(
            "access denied: you may write none of the {n} collection(s) of this vault, so "
            "nothing was erased; ask an admin for write access (or pass {partial} to record "
            "an empty receipt)",
            "partial",
            n=coverage["collections_in_vault"],
        )
    receipt = erase_documents(
        session,
        plan,
        kind="subject",
        reason="erasure request of the data subject (GDPR Art. 17)",
        subject=subject,
        receipt_dir=receipt_dir,
        considered=None if collections else [h.name for h, _ in plan],
        coverage=coverage,
        journal_terms=terms,
    )
    if not coverage["complete"] and not partial:
        exc = ErasureIncomplete.naming(
            "erasure incomplete: {gaps}; receipt {receipt_id} records what was erased. "
            "Ask an admin to cover the rest, or pass {partial} to accept a partial erasure",
            "partial",
            gaps=describe_gaps(coverage),
            receipt_id=receipt["receipt_id"],
        )
        exc.receipt = receipt
        raise exc
    return receipt


def subject_plan(
    session: Session, terms: Any, collections: list[str] | None, *, need: str
) -> tuple[list[tuple[CollectionHandle, list[Found]]], dict[str, Any]]:
    """Where the subject appears in each collection the caller may ``need`` (read or write), and coverage."""
    from ..vault.collections import readable_collections
    from .finder import find_in_collection
    from .journal import identifier_key

    key = identifier_key(session)
    if collections:
        names = list(dict.fromkeys(collections))
    else:
        names = writable_collections(session) if need == "write" else readable_collections(session)
    plan = []
    for name in names:
        handle = open_collection(session, name, need)  # type: ignore[arg-type]
        plan.append((handle, find_in_collection(handle, terms, key)))
    return plan, erasure_coverage(session, [h for h, _ in plan], requested=bool(collections))


def plan_summary(
    session: Session, plan: list[tuple[CollectionHandle, list[Found]]], coverage: dict[str, Any]
) -> dict[str, Any]:
    """What an erasure would remove: per collection, documents whole or in part, chunks, adapters."""
    from ..finetune.store import adapters_using_document

    per, adapters = [], set()
    for handle, found in plan:
        for f in found:
            adapters.update(adapters_using_document(session, handle.id, f.doc_id))
        per.append(
            {
                "collection": handle.name,
                "documents": sum(1 for f in found if f.whole),
                "documents_in_part": sum(1 for f in found if not f.whole),
                "chunks": sum(len(f.chunk_ids) for f in found),
                "doc_ids": [f.doc_id for f in found],
            }
        )
    return {
        "dry_run": True,
        "collections": per,
        "adapters_to_taint": sorted(adapters),
        "coverage": coverage,
        "totals": {
            "documents": sum(c["documents"] for c in per),
            "documents_in_part": sum(c["documents_in_part"] for c in per),
            "chunks": sum(c["chunks"] for c in per),
            "adapters": len(adapters),
        },
    }


def _doc_facts(conn: Any, doc_id: int, subject: str | None) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT id, source, name, sha256, size, label, ingested_at, ingested_by FROM documents WHERE id = ?",
        (doc_id,),
    ).fetchone()
    if row is None:
        return None
    chunk_ids = [r[0] for r in conn.execute("SELECT id FROM chunks WHERE doc_id = ? ORDER BY ord", (doc_id,))]
    subjects = [r[0] for r in conn.execute("SELECT subject FROM doc_subjects WHERE doc_id = ?", (doc_id,))]
    vectors = _count_vectors(conn, chunk_ids)
    return {
        "doc_id": row[0],
        "source": row[1],
        "name": row[2],
        "sha256": row[3],
        "size": row[4],
        "label": row[5],
        "ingested_at": row[6],
        "ingested_by": row[7],
        "chunk_ids": chunk_ids,
        "vectors": vectors,
        "other_subjects": len([s for s in subjects if s != subject]),
    }


def _count_vectors(conn: Any, chunk_ids: list[int]) -> int:
    from ..retrieval import index as vindex

    if not chunk_ids or not vindex.has_vectors(conn):
        return 0
    return sum(
        conn.execute(f"SELECT count(*) FROM {vindex.VEC_TABLE} WHERE rowid = ?", (cid,)).fetchone()[0]
        for cid in chunk_ids
    )


def scrub_collection(conn: Any) -> dict[str, Any]:
    """Leave no trace of deleted rows in the file: merge FTS segments, VACUUM, truncate the WAL."""
    conn.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('optimize')")
    conn.execute("VACUUM")
    busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return {
        "fts_optimize": True,
        "vacuum": True,
        "wal_truncated": busy == 0,
        "secure_delete": bool(conn.execute("PRAGMA secure_delete").fetchone()[0]),
    }


def backups_holding_data(session: Session, before: _dt.datetime) -> list[dict[str, Any]]:
    """Backups made before ``before`` that have not yet expired (from ``vault.backup`` entries)."""
    days = backup_retention_days(session)
    out = []
    for e in chain.iter_entries(session.db, "action = ?", ("vault.backup",)):
        made = parse_ts(e.ts)
        if made >= before:
            continue
        expires = made + _dt.timedelta(days=days) if days else None
        if expires is not None and expires <= before:
            continue
        dest = str(e.payload.get("dest", ""))
        out.append(
            {
                "dest": dest,
                "made_at": e.ts,
                "made_by": e.user,
                "audit_seq": e.seq,
                "expires_at": expires.isoformat(timespec="seconds") if expires else None,
                "present": bool(dest) and Path(dest).exists(),
            }
        )
    return out


def _taint_adapters(session: Session, removed: list[tuple[str, int]], receipt_id: str) -> list[str]:
    from ..finetune.store import adapters_using_document, mark_tainted

    names: set[str] = set()
    for cid, doc_id in removed:
        names.update(adapters_using_document(session, cid, doc_id))
    for name in sorted(names):
        mark_tainted(
            session, name, f"its training data included a document erased under receipt {receipt_id}"
        )
    return sorted(names)


def erase_documents(
    session: Session,
    plan: list[tuple[CollectionHandle, list[Any]]],
    *,
    kind: str,
    reason: str,
    subject: str | None = None,
    receipt_dir: Path | str | None = None,
    considered: list[str] | None = None,
    coverage: dict[str, Any] | None = None,
    journal_terms: Any = None,
) -> dict[str, Any]:
    """Remove what ``plan`` names in each open (write) collection, scrub, taint, journal, write a receipt.

    ``plan``: (handle opened for write, items), an item being a document id (the whole document)
    or a :class:`~offline.gdpr.finder.Found` (whole, or only its chunks that mention the subject).
    ``considered``: the collection names the caller chose from (only for "everything I may write"),
    so admins learn which others exist. ``coverage``: what the erasure could not reach
    (:func:`erasure_coverage`). ``journal_terms``: the subject's terms, remembered (hashed) in
    the erasure journal with the removed documents and chunks so they stay out.
    """
    from ..ingest.store import delete_chunks, delete_document
    from . import journal

    folder = private_output_dir(receipt_dir)  # fail before deleting anything
    receipt_id = new_id()
    file = new_file(folder, f"erasure-receipt-{receipt_id}.json")
    for handle, _ in plan:
        if handle.perm != "write":
            raise AccessDenied(f"access denied: collection {handle.name!r}")
    started = utc_now_dt()
    per_coll, named, removed_docs = [], [], []
    erased_shas: list[str] = []
    erased_chunks: list[str] = []
    problems: list[str] = []

    for handle, items in plan:
        docs = []
        for item in items:
            found = item if isinstance(item, Found) else Found(int(item), True, [])
            facts = _doc_facts(handle.conn, found.doc_id, subject)
            if facts is None or not handle.label_allowed(facts["label"]):
                continue  # gone meanwhile, or outside the grant: never touched
            if found.whole or set(found.chunk_ids) >= set(facts["chunk_ids"]):
                delete_document(handle.conn, found.doc_id)
                erased_shas.append(facts["sha256"])
                facts["whole"] = True
            else:
                chunk_ids = [c for c in found.chunk_ids if c in set(facts["chunk_ids"])]
                erased_chunks += _chunk_texts(handle.conn, chunk_ids)
                facts["vectors"] = _count_vectors(handle.conn, chunk_ids)
                delete_chunks(handle.conn, found.doc_id, chunk_ids)
                facts["chunk_ids"], facts["whole"] = chunk_ids, False
            facts["found_by"] = found.reasons
            docs.append(facts)
            removed_docs.append((handle.id, found.doc_id))
        scrub: dict[str, Any] | None = None
        if docs:
            try:
                scrub = scrub_collection(handle.conn)
            except db.DatabaseError as exc:  # busy reader elsewhere: the rows are gone, the pages not yet
                scrub = {"fts_optimize": False, "vacuum": False, "error": str(exc).splitlines()[0][:120]}
                problems.append(f"{handle.name}: scrub incomplete ({scrub['error']}); run the erasure again")
        chunks = sum(len(d["chunk_ids"]) for d in docs)
        per_coll.append(
            {
                "collection": handle.name,
                "collection_id": handle.id,
                "grant_labels": sorted(handle.labels) if handle.labels is not None else None,
                "documents_removed": sum(1 for d in docs if d["whole"]),
                "documents_erased_in_part": sum(1 for d in docs if not d["whole"]),
                "chunks_removed": chunks,
                "fts_rows_removed": chunks,
                "vectors_removed": sum(d["vectors"] for d in docs),
                "documents": [
                    {
                        "doc_id": d["doc_id"],
                        "sha256": d["sha256"],
                        "size": d["size"],
                        "label": d["label"],
                        "ingested_at": d["ingested_at"],
                        "chunks": len(d["chunk_ids"]),
                        "whole": d["whole"],
                        "found_by": d["found_by"],
                        "vectors": d["vectors"],
                        "other_subjects": d["other_subjects"],
                    }
                    for d in docs
                ],
                "scrub": scrub,
            }
        )
        named += [
            {
                "collection": handle.name,
                "doc_id": d["doc_id"],
                "name": d["name"],
                "source": d["source"],
                "ingested_by": d["ingested_by"],
                "whole": d["whole"],
            }
            for d in docs
        ]
    tainted = _taint_adapters(session, removed_docs, receipt_id)
    not_covered = None
    if considered is not None and session.role == "admin":
        touched = {h.name for h, _ in plan}
        not_covered = [
            r[0]
            for r in session.db.execute("SELECT name FROM collections ORDER BY name")
            if r[0] not in touched
        ]
    entries = journal.entries_for(journal.identifier_key(session), journal_terms, erased_shas, erased_chunks)
    body: dict[str, Any] = {
        "receipt_version": RECEIPT_VERSION,
        "receipt_id": receipt_id,
        "kind": kind,
        "reason": reason,
        "subject_ref": subject_ref(session, subject) if subject is not None else None,
        "vault_id": session.vault_id,
        "erased_by": session.user,
        "started_at": started.isoformat(timespec="seconds"),
        "erased_at": utc_now(),
        "collections": per_coll,
        "totals": {
            "documents": sum(c["documents_removed"] for c in per_coll),
            "documents_in_part": sum(c["documents_erased_in_part"] for c in per_coll),
            "chunks": sum(c["chunks_removed"] for c in per_coll),
            "vectors": sum(c["vectors_removed"] for c in per_coll),
        },
        "adapters_tainted": tainted,
        "backups_still_holding_data": backups_holding_data(session, started),
        "collections_not_covered": not_covered,
        "journal_entries": len(entries),
        "journal_sha256": journal.digest(entries),
        "problems": problems,
        **({"coverage": coverage} if coverage is not None else {}),
    }
    entry = session.audit("gdpr.erase", severity="notice", **body)
    with db.transaction(session.db):
        session.db.execute(
            "INSERT INTO erasure_receipts(id, created_at, created_by, kind, audit_seq, receipt)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (receipt_id, entry.ts, session.user, kind, entry.seq, chain.canonical_json(body).decode()),
        )
    journal.record(session, receipt_id, entries, entry.ts, machine=kind != "reapply")
    record = {
        "receipt": entry.payload,
        "subject": subject,
        "documents": named,
        "audit": {"seq": entry.seq, "hash": entry.hash, "action": entry.action, "ts": entry.ts},
    }
    write_private_json(file, record)
    return {**entry.payload, "file": str(file), "audit": record["audit"]}


def _chunk_texts(conn: Any, chunk_ids: list[int]) -> list[str]:
    return [r[0] for cid in chunk_ids for r in conn.execute("SELECT text FROM chunks WHERE id = ?", (cid,))]


def verify_receipt(session: Session, path: Path | str) -> dict[str, Any]:
    """Check a receipt file against the audit chain: same payload, same entry hash, chain intact.

    Raises :class:`~offline.errors.AuditChainBroken` if the chain does not verify and
    :class:`~offline.errors.IntegrityError` if the file does not match its entry.
    """
    from ..errors import IntegrityError

    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        seq, digest, receipt = int(record["audit"]["seq"]), str(record["audit"]["hash"]), record["receipt"]
    except FileNotFoundError:
        raise NotFound(f"no such receipt file: {path}") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"{path} is not an erasure receipt") from None
    entries = list(chain.iter_entries(session.db, "seq = ?", (seq,)))
    if not entries or entries[0].action != "gdpr.erase":
        raise IntegrityError(f"receipt {path}: audit entry {seq} is not an erasure receipt")
    entry = entries[0]
    if session.role not in ("admin", "auditor") and entry.user != session.user:
        raise AccessDenied("access denied: only admins, auditors and the eraser verify a receipt")
    if entry.hash != digest or chain.canonical_json(entry.payload) != chain.canonical_json(receipt):
        raise IntegrityError(f"receipt {path}: does not match audit entry {seq}")
    report = chain.verify(session.db)
    if (
        record.get("subject") is not None
        and session.role in ("admin", "auditor")
        and not subject_ref_matches(session, str(receipt.get("subject_ref")), str(record["subject"]))
    ):
        raise IntegrityError(f"receipt {path}: subject does not match the recorded reference")
    return {
        "ok": True,
        "receipt_id": receipt.get("receipt_id"),
        "audit_seq": seq,
        "chain_entries": report.entries,
        "head_hash": report.head_hash,
    }
