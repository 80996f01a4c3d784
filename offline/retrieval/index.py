"""The vector index of a collection: a sqlite-vec ``vec0`` table, plus a warm in-memory copy.

Storage: ``vec_chunks`` (created on first ingest, because vec0 needs the dimension) holds one
unit-length float32 vector per chunk (rowid = chunks.id) with metadata columns ``label`` and
``doc_id``, cosine distance. It lives in the collection's SQLCipher file, so it is encrypted with it.
The collection's ``meta`` table records the model that made the vectors (``embed_model``,
``embed_model_sha256``, ``embed_dim``) and an ``index_version`` bumped by every write.

Search has two exact code paths returning the same ranking:

* **sqlite-vec KNN** with the filters as vec0 metadata constraints (``label IN (...)``,
  ``doc_id IN (...)``) inside the KNN query: cheapest for a single query in a fresh process.
* **memory index**: the vectors read once from vec0 into a float32 matrix kept for the life of the
  session (the agent keeps it warm). The filters become a boolean mask applied to the scores before
  the top-k selection (``argpartition``), so it ranks only permitted rows, like the KNN query.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from ..errors import OfflineError
from ..vault.migrations import VEC_DDL, VEC_TABLE  # the vector table is part of the collection schema

KNN_MAX = 4096  # sqlite-vec's limit on k
# A cold collection is served by sqlite-vec; it is loaded into memory when queried again.
WARM_AFTER_QUERIES = 2


class EmbeddingModelMismatch(OfflineError):
    """The collection's vectors were made by a different embedding model than the one in use."""


def get_meta(conn: Any, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def set_meta(conn: Any, key: str, value: Any) -> None:
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, str(value)))


def has_vectors(conn: Any) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (VEC_TABLE,)).fetchone() is not None


def index_version(conn: Any) -> int:
    return int(get_meta(conn, "index_version") or 0)


def check_model(conn: Any, collection: str, model_name: str, model_sha: str) -> None:
    """Refuse to mix vectors from two embedding models in one collection."""
    sha = get_meta(conn, "embed_model_sha256")
    if sha is not None and sha != model_sha:
        raise EmbeddingModelMismatch(
            f"collection {collection!r} was indexed with embedding model {get_meta(conn, 'embed_model')!r}"
            f" (sha256 {sha[:12]}), not {model_name!r} (sha256 {model_sha[:12]});"
            " re-ingest it to switch models"
        )


def ensure_vec_table(conn: Any, collection: str, model_name: str, model_sha: str, dim: int) -> None:
    """Create ``vec_chunks`` for ``dim`` and record the model (call inside the write transaction)."""
    check_model(conn, collection, model_name, model_sha)
    if not has_vectors(conn):
        conn.execute(VEC_DDL.format(dim=int(dim)))
        set_meta(conn, "embed_model", model_name)
        set_meta(conn, "embed_model_sha256", model_sha)
        set_meta(conn, "embed_dim", int(dim))


def bump_version(conn: Any) -> None:
    """Mark the index changed so warm in-memory copies (in any process) reload."""
    conn.execute(
        "INSERT INTO meta(key, value) VALUES ('index_version', '1') ON CONFLICT(key)"
        " DO UPDATE SET value = CAST(value AS INTEGER) + 1"
    )


@dataclass
class Filter:
    """What a caller may rank: ``labels`` None = any label; ``doc_ids`` None = any document."""

    labels: frozenset[str] | None = None
    doc_ids: frozenset[int] | None = None

    @property
    def empty(self) -> bool:
        return (self.labels is not None and not self.labels) or (
            self.doc_ids is not None and not self.doc_ids
        )


def _in_clause(column: str, values: list[Any]) -> tuple[str, list[Any]]:
    return f"{column} IN ({','.join('?' * len(values))})", list(values)


def knn_sqlite(conn: Any, qvec: Any, k: int, flt: Filter) -> list[tuple[int, float]]:
    """Exact KNN by sqlite-vec with the filter inside the query: [(chunk_id, cosine similarity)]."""
    import numpy as np

    if flt.empty or k <= 0 or not has_vectors(conn):
        return []
    where = ["embedding MATCH ?", "k = ?"]
    params: list[Any] = [np.asarray(qvec, dtype=np.float32).tobytes(), min(k, KNN_MAX)]
    if flt.labels is not None:
        clause, p = _in_clause("label", sorted(flt.labels))
        where.append(clause)
        params += p
    if flt.doc_ids is not None:
        clause, p = _in_clause("doc_id", sorted(flt.doc_ids))
        where.append(clause)
        params += p
    rows = conn.execute(
        f"SELECT rowid, distance FROM {VEC_TABLE} WHERE {' AND '.join(where)} ORDER BY distance", params
    ).fetchall()
    return [(int(r), 1.0 - float(d)) for r, d in rows]


class MemoryIndex:
    """All vectors of one collection as a float32 matrix, with label codes and doc ids per row."""

    def __init__(
        self, ids: Any, matrix: Any, labels: list[str], label_codes: Any, doc_ids: Any, version: int
    ):
        self.ids = ids
        self.matrix = matrix
        self.labels = labels
        self.label_codes = label_codes
        self.doc_ids = doc_ids
        self.version = version

    @classmethod
    def load(cls, conn: Any) -> MemoryIndex:
        """Read every vector from the (encrypted) vec0 table."""
        import numpy as np

        version = index_version(conn)
        rows = (
            conn.execute(f"SELECT rowid, embedding, label, doc_id FROM {VEC_TABLE}").fetchall()
            if has_vectors(conn)
            else []
        )
        dim = int(get_meta(conn, "embed_dim") or 0)
        n = len(rows)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=n)
        matrix = (
            np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(n, dim)
            if n
            else np.zeros((0, dim), dtype=np.float32)
        )
        labels = sorted({r[2] or "" for r in rows})
        code = {lb: i for i, lb in enumerate(labels)}
        label_codes = np.fromiter((code[r[2] or ""] for r in rows), dtype=np.int32, count=n)
        doc_ids = np.fromiter((r[3] for r in rows), dtype=np.int64, count=n)
        return cls(ids, np.ascontiguousarray(matrix), labels, label_codes, doc_ids, version)

    def mask(self, flt: Filter) -> Any:
        """Boolean mask of the rows the filter permits, or None when it permits all."""
        import numpy as np

        mask = None
        if flt.labels is not None:
            ok = np.array([lb in flt.labels for lb in self.labels], dtype=bool)
            if not ok.all():
                mask = ok[self.label_codes] if len(ok) else np.zeros(len(self.ids), dtype=bool)
        if flt.doc_ids is not None:
            m = np.isin(self.doc_ids, np.fromiter(flt.doc_ids, dtype=np.int64, count=len(flt.doc_ids)))
            mask = m if mask is None else (mask & m)
        return mask

    def knn(self, qvec: Any, k: int, flt: Filter) -> list[tuple[int, float]]:
        """Exact top-k by cosine among the permitted rows: [(chunk_id, similarity)], best first."""
        import numpy as np

        if flt.empty or k <= 0 or len(self.ids) == 0:
            return []
        scores = self.matrix @ np.asarray(qvec, dtype=np.float32)
        mask = self.mask(flt)
        if mask is not None:
            allowed = np.flatnonzero(mask)
            if len(allowed) == 0:
                return []
            scores = scores[allowed]
        else:
            allowed = None
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        # Ties broken by chunk id, the same order sqlite-vec gives.
        rows = top if allowed is None else allowed[top]
        order = np.lexsort((self.ids[rows], -scores[top]))
        return [(int(self.ids[rows[i]]), float(scores[top[i]])) for i in order]


# Warm indexes per session (dropped with the session object), keyed by collection id.
_warm: weakref.WeakKeyDictionary[Any, dict[str, MemoryIndex]] = weakref.WeakKeyDictionary()
_cold_queries: weakref.WeakKeyDictionary[Any, dict[str, int]] = weakref.WeakKeyDictionary()


def warm_index(session: Any, handle: Any) -> MemoryIndex:
    """Load (or reuse, if current) the in-memory index of an open collection."""
    if getattr(session, "closed", False):
        raise OfflineError("the vault session is closed")
    cache = _warm.setdefault(session, {})
    idx = cache.get(handle.id)
    if idx is None or idx.version != index_version(handle.conn):
        idx = MemoryIndex.load(handle.conn)
        cache[handle.id] = idx
    return idx


def dense_search_plan(session: Any, handle: Any) -> tuple[str, MemoryIndex | None]:
    """Pick the dense backend for ``handle`` in "auto" mode: ("memory", index) or ("sqlite", None).

    Memory when a current copy is already warm; otherwise sqlite-vec for the first query (loading
    every vector costs more than one KNN), and the next query on this collection in this session
    loads the copy and keeps it.
    """
    idx = _warm.get(session, {}).get(handle.id)
    if idx is not None and idx.version == index_version(handle.conn):
        return "memory", idx
    counts = _cold_queries.setdefault(session, {})
    counts[handle.id] = counts.get(handle.id, 0) + 1
    if counts[handle.id] >= WARM_AFTER_QUERIES:
        return "memory", warm_index(session, handle)
    return "sqlite", None


def forget(session: Any) -> None:
    """Drop the session's warm vectors now (call on lock/close; otherwise they go with the session)."""
    _warm.pop(session, None)
    _cold_queries.pop(session, None)
