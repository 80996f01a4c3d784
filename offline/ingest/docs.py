"""``offline docs``: list, show and remove documents, seen through the caller's grants.

A document whose label the caller's grant does not cover is invisible: it is not listed, and
showing or removing it gives the same "no such document" as a document that does not exist.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import NotFound, UsageError
from ..vault.collections import CollectionHandle, open_collection, readable_collections
from .store import delete_document

_DOC_COLS = (
    "d.id, d.name, d.source, d.sha256, d.size, d.mtime, d.label, d.mime, d.ingested_at, d.ingested_by, d.meta"
)


def _label_sql(handle: CollectionHandle, alias: str = "d") -> tuple[str, list[str]]:
    if handle.labels is None:
        return "1", []
    return f"{alias}.label IN ({','.join('?' * len(handle.labels))})", sorted(handle.labels)


def _doc_dict(handle: CollectionHandle, row: tuple) -> dict[str, Any]:
    doc_id, name, source, sha, size, mtime, label, mime, at, by, meta = row
    conn = handle.conn
    return {
        "collection": handle.name,
        "id": doc_id,
        "name": name,
        "source": source,
        "sha256": sha,
        "size": size,
        "mtime": mtime,
        "label": label,
        "mime": mime,
        "ingested_at": at,
        "ingested_by": by,
        "meta": json.loads(meta or "{}"),
        "subjects": [
            r[0]
            for r in conn.execute(
                "SELECT subject FROM doc_subjects WHERE doc_id = ? ORDER BY subject", (doc_id,)
            )
        ],
        "chunks": conn.execute("SELECT count(*) FROM chunks WHERE doc_id = ?", (doc_id,)).fetchone()[0],
    }


def list_documents(
    session: Any,
    collections: list[str] | None = None,
    *,
    label: str | None = None,
    subject: str | None = None,
) -> list[dict[str, Any]]:
    """Documents the caller may see, in the given collections (default: every readable one)."""
    out = []
    for name in collections or readable_collections(session):
        handle = open_collection(session, name, "read")
        where, params = _label_sql(handle)
        if label is not None:
            where += " AND d.label = ?"
            params.append(label)
        if subject is not None:
            where += " AND d.id IN (SELECT doc_id FROM doc_subjects WHERE subject = ?)"
            params.append(subject)
        rows = handle.conn.execute(
            f"SELECT {_DOC_COLS} FROM documents d WHERE {where} ORDER BY d.source", params
        ).fetchall()
        out += [_doc_dict(handle, r) for r in rows]
    return out


def resolve_document(handle: CollectionHandle, ref: str | int) -> tuple:
    """Find a visible document by id, source path or file name; NotFound (same text) otherwise."""
    where, params = _label_sql(handle)
    ref_s = str(ref).strip()
    candidates: list[tuple] = []
    if ref_s.isdigit():
        candidates = handle.conn.execute(
            f"SELECT {_DOC_COLS} FROM documents d WHERE d.id = ? AND {where}", [int(ref_s), *params]
        ).fetchall()
    if not candidates:
        sources = [ref_s, str(Path(ref_s).expanduser().resolve())]
        candidates = handle.conn.execute(
            f"SELECT {_DOC_COLS} FROM documents d WHERE d.source IN (?, ?) AND {where}", [*sources, *params]
        ).fetchall()
    if not candidates:
        candidates = handle.conn.execute(
            f"SELECT {_DOC_COLS} FROM documents d WHERE d.name = ? AND {where}", [ref_s, *params]
        ).fetchall()
    if not candidates:
        raise NotFound(f"no such document in collection {handle.name!r}: {ref_s}")
    if len(candidates) > 1:
        raise UsageError(f"{ref_s!r} names {len(candidates)} documents; use the document id")
    return candidates[0]


def show_document(session: Any, collection: str, ref: str | int) -> dict[str, Any]:
    """A document's metadata and its chunks (id, page, section, tokens, flags, opening words)."""
    handle = open_collection(session, collection, "read")
    row = resolve_document(handle, ref)
    doc = _doc_dict(handle, row)
    doc["chunk_list"] = [
        {
            "chunk_id": f"{collection}/{cid}",
            "ord": o,
            "page": p,
            "section": s,
            "tokens": t,
            "flags": [f for f in (fl or "").split(",") if f],
            "preview": " ".join(text.split())[:100],
        }
        for cid, o, p, s, t, fl, text in handle.conn.execute(
            "SELECT id, ord, page, section, token_count, flags, text FROM chunks"
            " WHERE doc_id = ? ORDER BY ord",
            (row[0],),
        )
    ]
    doc["identifiers"] = identifiers_of(handle.conn, collection, row[0])
    session.audit("doc.show", collection=collection, doc_id=row[0])
    return doc


def identifiers_of(conn: Any, collection: str, doc_id: int) -> list[dict[str, Any]]:
    """Identifiers detected in a document: kind, the value as the chunk writes it, score."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'identifiers'").fetchone() is None:
        return []
    rows = conn.execute(
        "SELECT i.chunk_id, i.kind, i.start, i.end, i.score, c.text FROM identifiers i"
        " JOIN chunks c ON c.id = i.chunk_id WHERE i.doc_id = ? ORDER BY c.ord, i.start",
        (doc_id,),
    )
    return [
        {"chunk_id": f"{collection}/{cid}", "kind": kind, "value": text[a:b], "score": score}
        for cid, kind, a, b, score, text in rows
    ]


def remove_document(session: Any, collection: str, ref: str | int) -> dict[str, Any]:
    """Remove a document with its chunks, vectors and FTS rows (write grant needed)."""
    handle = open_collection(session, collection, "write")
    row = resolve_document(handle, ref)
    n = delete_document(handle.conn, row[0])
    session.audit(
        "doc.remove",
        severity="notice",
        collection=collection,
        doc_id=row[0],
        source=row[2],
        sha256=row[3],
        chunks=n,
    )
    return {"collection": collection, "id": row[0], "name": row[1], "source": row[2], "chunks_removed": n}
