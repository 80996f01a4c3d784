"""Writing and removing documents: one transaction per document, vectors included.

Callers embed first and open the transaction second, so the write lock is held only for inserts
and a crash mid-embedding leaves nothing behind. Replacing a document deletes its old row, chunks,
FTS rows (by trigger) and vectors and inserts the new ones in the same transaction: readers see
the old document or the new one, never a mix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import OfflineError
from ..retrieval import index as vindex
from ..vault import db
from ..vault.core import utc_now
from .chunking import Chunk


@dataclass
class DocRecord:
    source: str
    name: str
    sha256: str
    size: int
    mtime: float | None
    label: str
    mime: str | None
    subjects: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    # Detected identifiers: (chunk ord, kind, keyed hash, start, end, score); see offline.ingest.detect.
    identifiers: list[tuple[int, str, str, int, int, float]] = field(default_factory=list)
    # Redacting collections: (pseudonym, kind, keyed hash, sealed value); see offline.gdpr.redact.
    pseudonyms: list[tuple[str, str, str, str]] = field(default_factory=list)


def find_document(conn: Any, source: str) -> tuple[int, str, str, list[str]] | None:
    """(id, sha256, label, subjects) of the document stored for ``source``."""
    row = conn.execute("SELECT id, sha256, label FROM documents WHERE source = ?", (source,)).fetchone()
    if row is None:
        return None
    subjects = [
        r[0]
        for r in conn.execute("SELECT subject FROM doc_subjects WHERE doc_id = ? ORDER BY subject", (row[0],))
    ]
    return row[0], row[1], row[2], subjects


def _delete_rows(conn: Any, doc_id: int) -> int:
    ids = [(r[0],) for r in conn.execute("SELECT id FROM chunks WHERE doc_id = ?", (doc_id,))]
    if ids and vindex.has_vectors(conn):
        conn.executemany(f"DELETE FROM {vindex.VEC_TABLE} WHERE rowid = ?", ids)
    conn.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,))  # FTS rows go by trigger
    conn.execute("DELETE FROM doc_subjects WHERE doc_id = ?", (doc_id,))
    conn.execute("DELETE FROM documents WHERE id = ?", (doc_id,))
    return len(ids)


def _next_chunk_id(conn: Any) -> int:
    # Chunk ids appear in audit entries and citations: never reuse one for different text.
    stored = int(vindex.get_meta(conn, "next_chunk_id") or 1)
    top = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM chunks").fetchone()[0]
    return max(stored, top)


def _first_ingested(conn: Any, doc: DocRecord) -> str | None:
    """When this source, or this very content, first entered the collection (retention counts from
    there, so re-ingesting a changed or moved file never resets the clock)."""
    when = []
    for at, meta in conn.execute(
        "SELECT ingested_at, meta FROM documents WHERE source = ? OR sha256 = ?", (doc.source, doc.sha256)
    ):
        try:
            when.append(json.loads(meta or "{}").get("first_ingested_at") or at)
        except ValueError:
            when.append(at)
    return min(when) if when else None


def write_document(
    conn: Any,
    collection: str,
    doc: DocRecord,
    chunks: list[Chunk],
    vectors: Any,
    *,
    model: tuple[str, str],
    user: str,
) -> tuple[int, int | None]:
    """Insert ``doc`` (replacing any document with the same source) atomically.

    ``vectors`` is a float32 array (len(chunks), dim); ``model`` is (name, sha256) of the embedder.
    Returns (new doc id, old doc id or None).
    """
    import numpy as np

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(vectors) != len(chunks):
        raise ValueError("one vector per chunk")
    with db.transaction(conn):
        vindex.ensure_vec_table(conn, collection, model[0], model[1], vectors.shape[1])
        old = conn.execute("SELECT id FROM documents WHERE source = ?", (doc.source,)).fetchone()
        since = _first_ingested(conn, doc)
        if since:
            doc.meta = {**doc.meta, "first_ingested_at": since}
        if old:
            _delete_rows(conn, old[0])
        cur = conn.execute(
            "INSERT INTO documents(source, name, sha256, size, mtime, label, mime, ingested_at, ingested_by,"
            " meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                doc.source,
                doc.name,
                doc.sha256,
                doc.size,
                doc.mtime,
                doc.label,
                doc.mime,
                utc_now(),
                user,
                json.dumps(doc.meta, sort_keys=True),
            ),
        )
        doc_id = int(cur.lastrowid)
        conn.executemany(
            "INSERT OR IGNORE INTO doc_subjects(doc_id, subject) VALUES (?, ?)",
            [(doc_id, s) for s in doc.subjects],
        )
        first = _next_chunk_id(conn)
        conn.executemany(
            "INSERT INTO chunks(id, doc_id, ord, text, page, section, token_count, flags)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (first + i, doc_id, i, c.text, c.page, c.section, c.token_count, ",".join(sorted(c.flags)))
                for i, c in enumerate(chunks)
            ],
        )
        conn.executemany(
            f"INSERT INTO {vindex.VEC_TABLE}(rowid, embedding, label, doc_id) VALUES (?, ?, ?, ?)",
            [(first + i, vectors[i].tobytes(), doc.label, doc_id) for i in range(len(chunks))],
        )
        if doc.identifiers:
            conn.executemany(
                "INSERT INTO identifiers(chunk_id, doc_id, kind, hash, start, end, score)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(first + o, doc_id, k, h, a, b, sc) for o, k, h, a, b, sc in doc.identifiers],
            )
        if doc.pseudonyms:
            conn.executemany(
                "INSERT OR IGNORE INTO pseudonyms(doc_id, token, kind, hash, sealed) VALUES (?, ?, ?, ?, ?)",
                [(doc_id, *p) for p in doc.pseudonyms],
            )
        vindex.set_meta(conn, "next_chunk_id", first + len(chunks))
        vindex.bump_version(conn)
    return doc_id, (old[0] if old else None)


def relabel_document(conn: Any, doc_id: int, old: str, new: str) -> int:
    """Move a document from label ``old`` to ``new`` in place; returns the number of chunks.

    The id, chunks and vectors stay; every copy of the label moves in one transaction (the
    document row, which the FTS leg joins, and each vector's metadata column, which the vector
    leg filters on), and the index version is bumped so warm in-memory indexes reload. A label
    grant therefore sees the document under the new label at once, never under both or neither.
    Raises OfflineError if the document is gone or no longer has label ``old`` (another writer).
    """
    with db.transaction(conn):
        if (
            conn.execute(
                "UPDATE documents SET label = ? WHERE id = ? AND label = ?", (new, doc_id, old)
            ).rowcount
            != 1
        ):
            raise OfflineError("the document changed while it was being relabelled; run the ingest again")
        ids = [(new, r[0]) for r in conn.execute("SELECT id FROM chunks WHERE doc_id = ?", (doc_id,))]
        if ids and vindex.has_vectors(conn):
            conn.executemany(f"UPDATE {vindex.VEC_TABLE} SET label = ? WHERE rowid = ?", ids)
        vindex.bump_version(conn)
    return len(ids)


def _prune_pseudonyms(conn: Any, doc_id: int) -> None:
    """Forget the pseudonyms no remaining chunk of the document uses (an erased person's mapping)."""
    tokens = [r[0] for r in conn.execute("SELECT token FROM pseudonyms WHERE doc_id = ?", (doc_id,))]
    for token in tokens:
        used = conn.execute(
            "SELECT 1 FROM chunks WHERE doc_id = ? AND instr(text, ?) > 0 LIMIT 1", (doc_id, token)
        ).fetchone()
        if used is None:
            conn.execute("DELETE FROM pseudonyms WHERE doc_id = ? AND token = ?", (doc_id, token))


def delete_chunks(conn: Any, doc_id: int, chunk_ids: list[int]) -> tuple[int, bool]:
    """Remove some chunks of a document (an erasure of one person's passages in a shared document).

    The document goes too once no chunk is left. Returns (chunks removed, document removed). The
    document's meta records how many chunks were erased, so ``docs show`` says it is incomplete.
    """
    ids = [(c,) for c in chunk_ids]
    with db.transaction(conn):
        if ids and vindex.has_vectors(conn):
            conn.executemany(f"DELETE FROM {vindex.VEC_TABLE} WHERE rowid = ?", ids)
        n = 0
        for (cid,) in ids:
            n += conn.execute("DELETE FROM chunks WHERE id = ? AND doc_id = ?", (cid, doc_id)).rowcount
        left = conn.execute("SELECT count(*) FROM chunks WHERE doc_id = ?", (doc_id,)).fetchone()[0]
        gone = left == 0
        if gone:
            _delete_rows(conn, doc_id)
        else:
            row = conn.execute("SELECT meta FROM documents WHERE id = ?", (doc_id,)).fetchone()
            meta = json.loads(row[0] or "{}") if row else {}
            meta["chunks_erased"] = int(meta.get("chunks_erased", 0)) + n
            conn.execute(
                "UPDATE documents SET meta = ? WHERE id = ?", (json.dumps(meta, sort_keys=True), doc_id)
            )
            _prune_pseudonyms(conn, doc_id)
        vindex.bump_version(conn)
    return n, gone


def delete_document(conn: Any, doc_id: int) -> int:
    """Remove a document with its chunks, FTS rows and vectors; returns the number of chunks."""
    with db.transaction(conn):
        n = _delete_rows(conn, doc_id)
        vindex.bump_version(conn)
    return n
