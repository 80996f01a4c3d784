"""Hybrid retrieval over the collections a caller may read.

For each collection the caller's filter is built first, from their grant's labels intersected with
any requested labels and the documents of any requested subjects. Both legs rank only what the
filter permits (vec0 metadata constraints or a mask before top-k; FTS joined to documents), so a
filtered query still returns k results when k exist and a label-limited grant never ranks a chunk
it cannot see. Leg results from several collections are merged by score (cosine is comparable
across collections: one embedding model), then fused by reciprocal rank (see :mod:`.fusion`).
"""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ParameterError, UsageError
from ..textsafe import check_text
from ..vault.collections import CollectionHandle, open_collection, readable_collections
from ..vault.core import seal_for_auditors
from . import index as vindex
from .fts import bm25_search
from .fusion import FusionWeights, rrf

MODES = ("hybrid", "dense", "bm25")
# How deep the engine ranks (sqlite-vec's limit): evaluation asks for more than a user may
# (offline.limits.MAX_K, which the commands enforce).
MAX_DEPTH = vindex.KNN_MAX
DEFAULT_DEPTH = 50  # per-leg candidates fused in hybrid mode (at least k)
# Below this many vectors the matrix product takes about as long as handing BM25 to a thread.
PARALLEL_MIN_VECTORS = 50_000

_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    # BM25 runs beside the in-memory matrix product: both release the GIL (SQLite step, BLAS).
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="offline-bm25")
    return _pool


@dataclass
class Hit:
    """One retrieved chunk. ``chunk_id`` is ``"<collection>/<rowid>"``."""

    chunk_id: str
    collection: str
    doc_id: int
    doc_name: str
    source: str
    page: int | None
    section: str | None
    text: str
    score: float
    dense_rank: int | None
    bm25_rank: int | None
    label: str
    flags: list[str] = field(default_factory=list)
    dense_score: float | None = None  # cosine similarity, when the vector leg returned it
    bm25_score: float | None = None  # SQLite bm25 (lower is better), when the BM25 leg returned it

    @property
    def citation(self) -> str:
        """Human citation: "report.pdf p. 4", "handbook.md § On-call" or the document name."""
        if self.page is not None:
            return f"{self.doc_name} p. {self.page}"
        if self.section:
            return f"{self.doc_name} § {self.section}"
        return self.doc_name

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "citation": self.citation}


@dataclass
class SearchResult:
    hits: list[Hit]
    timings: dict[str, float]
    backend: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"hits": [h.to_dict() for h in self.hits], "timings": self.timings, "backend": self.backend}


def build_filter(
    handle: CollectionHandle, labels: list[str] | None, subjects: list[str] | None
) -> vindex.Filter:
    """The caller's grant labels ∩ requested labels, and the documents of the requested subjects."""
    allowed = handle.labels
    if labels is not None:
        wanted = frozenset(lb or "" for lb in labels)
        allowed = wanted if allowed is None else (allowed & wanted)
    doc_ids = None
    if subjects is not None:
        subj = sorted(set(subjects))
        doc_ids = (
            frozenset(
                r[0]
                for r in handle.conn.execute(
                    "SELECT DISTINCT doc_id FROM doc_subjects WHERE subject IN "
                    f"({','.join('?' * len(subj))})",
                    subj,
                )
            )
            if subj
            else frozenset()
        )
    return vindex.Filter(labels=allowed, doc_ids=doc_ids)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)


def search(
    session: Any,
    query: str,
    *,
    collections: list[str] | None = None,
    k: int = 5,
    labels: list[str] | None = None,
    subjects: list[str] | None = None,
    mode: str = "hybrid",
    audit: bool = True,
    weights: FusionWeights | None = None,
    depth: int | None = None,
    dense_backend: str = "auto",
    query_vector: Any = None,
    embed_model: str | None = None,
) -> SearchResult:
    """Rank chunks for ``query`` across the caller's readable collections (or ``collections``).

    ``labels``/``subjects`` narrow the search; the caller's label-limited grants always apply. Asking
    for a collection the caller may not read raises AccessDenied (same message whether or not it
    exists). ``query_vector`` skips embedding (evaluation). With ``audit`` one ``search`` entry is
    written; the query text is logged per the vault's ``audit_questions`` setting.
    """
    t_start = time.perf_counter()
    check_text(query, "the query")
    if mode not in MODES:
        raise UsageError(f"unknown search mode {mode!r} (modes: {', '.join(MODES)})")
    if not 1 <= int(k) <= MAX_DEPTH:
        raise ParameterError(f"{{k}} must be between 1 and {MAX_DEPTH}", "k")
    if dense_backend not in ("auto", "memory", "sqlite"):
        raise UsageError("dense backend must be auto, memory or sqlite")
    weights = weights or FusionWeights()
    names = list(dict.fromkeys(collections)) if collections else readable_collections(session)
    handles = [open_collection(session, name, "read") for name in names]
    timings: dict[str, float] = {}
    leg_depth = max(k, depth or DEFAULT_DEPTH) if mode == "hybrid" else k
    leg_depth = min(leg_depth, MAX_DEPTH)

    t0 = time.perf_counter()
    filters = {h.name: build_filter(h, labels, subjects) for h in handles}
    timings["filter_ms"] = _ms(t0)

    with_vectors = [h for h in handles if vindex.has_vectors(h.conn)] if mode in ("hybrid", "dense") else []
    want_dense = bool(with_vectors)
    qvec = None
    memory: dict[str, vindex.MemoryIndex | None] = {}
    if want_dense:
        from .embed import get_embedder

        embedder = get_embedder(embed_model, queries_only=True)
        for h in with_vectors:
            vindex.check_model(h.conn, h.name, embedder.name, embedder.sha256)
        t0 = time.perf_counter()
        qvec = query_vector if query_vector is not None else embedder.encode_query(query)
        timings["embed_ms"] = _ms(t0)
        t0 = time.perf_counter()
        memory = {h.name: _choose_memory(session, h, dense_backend) for h in with_vectors}
        timings["load_ms"] = _ms(t0)

    def run_bm25() -> list[tuple[str, int, float]]:
        t = time.perf_counter()
        out = [
            (h.name, cid, s)
            for h in handles
            for cid, s in bm25_search(h.conn, query, leg_depth, filters[h.name])
        ]
        out.sort(key=lambda x: (x[2], x[0], x[1]))
        timings["bm25_ms"] = _ms(t)
        return out[:leg_depth]

    bm25_future = None
    if (
        mode == "hybrid"
        and want_dense
        and memory
        and all(m is not None for m in memory.values())
        and sum(len(m.ids) for m in memory.values()) >= PARALLEL_MIN_VECTORS
    ):
        bm25_future = _executor().submit(run_bm25)  # memory leg touches no connection: safe in parallel
    dense: list[tuple[str, int, float]] = []
    if want_dense:
        t0 = time.perf_counter()
        for h in with_vectors:
            idx = memory[h.name]
            found = (
                idx.knn(qvec, leg_depth, filters[h.name])
                if idx is not None
                else vindex.knn_sqlite(h.conn, qvec, leg_depth, filters[h.name])
            )
            dense += [(h.name, cid, s) for cid, s in found]
        dense.sort(key=lambda x: (-x[2], x[0], x[1]))
        dense = dense[:leg_depth]
        timings["dense_ms"] = _ms(t0)
    bm25: list[tuple[str, int, float]] = []
    if bm25_future is not None:
        bm25 = bm25_future.result()
    elif mode in ("hybrid", "bm25"):
        bm25 = run_bm25()

    t0 = time.perf_counter()
    d_score = {(c, i): s for c, i, s in dense}
    b_score = {(c, i): s for c, i, s in bm25}
    if mode == "hybrid":
        fused = rrf([(c, i) for c, i, _ in dense], [(c, i) for c, i, _ in bm25], weights)[:k]
    elif mode == "dense":
        fused = [((c, i), s, r, None) for r, (c, i, s) in enumerate(dense[:k], start=1)]
    else:
        fused = [((c, i), -s, None, r) for r, (c, i, s) in enumerate(bm25[:k], start=1)]
    timings["fuse_ms"] = _ms(t0)

    t0 = time.perf_counter()
    rows = _fetch(handles, [key for key, *_ in fused])
    hits = []
    for (coll, cid), score, dr, br in fused:
        row = rows.get((coll, cid))
        if row is None:  # removed between ranking and fetching
            continue
        handle = next(h for h in handles if h.name == coll)
        if not handle.label_allowed(row["label"]):  # unreachable by construction; fail closed anyway
            continue
        hits.append(
            Hit(
                chunk_id=f"{coll}/{cid}",
                collection=coll,
                score=round(float(score), 6),
                dense_rank=dr,
                bm25_rank=br,
                dense_score=d_score.get((coll, cid)),
                bm25_score=b_score.get((coll, cid)),
                **row,
            )
        )
    timings["fetch_ms"] = _ms(t0)
    timings["total_ms"] = _ms(t_start)
    backend = ",".join(sorted({"memory" if m is not None else "sqlite" for m in memory.values()})) or "none"
    result = SearchResult(hits, timings, backend)
    if audit:
        session.audit(
            "search", **search_audit_payload(session, query, names, mode, k, labels, subjects, result)
        )
    return result


def _choose_memory(session: Any, handle: CollectionHandle, backend: str) -> vindex.MemoryIndex | None:
    """The warm in-memory index to use for this collection, or None for sqlite-vec."""
    if backend == "sqlite":
        return None
    if backend == "memory":
        return vindex.warm_index(session, handle)
    _, chosen = vindex.dense_search_plan(session, handle)
    return chosen


def _fetch(
    handles: list[CollectionHandle], keys: list[tuple[str, int]]
) -> dict[tuple[str, int], dict[str, Any]]:
    out: dict[tuple[str, int], dict[str, Any]] = {}
    by_coll: dict[str, list[int]] = {}
    for coll, cid in keys:
        by_coll.setdefault(coll, []).append(cid)
    for h in handles:
        ids = by_coll.get(h.name)
        if not ids:
            continue
        sql = (
            "SELECT c.id, c.doc_id, d.name, d.source, c.page, c.section, c.text, d.label, c.flags"
            " FROM chunks c JOIN documents d ON d.id = c.doc_id"
            f" WHERE c.id IN ({','.join('?' * len(ids))})"
        )
        for cid, doc_id, name, source, page, section, text, label, flags in h.conn.execute(sql, ids):
            out[(h.name, cid)] = {
                "doc_id": doc_id,
                "doc_name": name,
                "source": source,
                "page": page,
                "section": section,
                "text": text,
                "label": label,
                "flags": [f for f in (flags or "").split(",") if f],
            }
    return out


def search_audit_payload(
    session: Any,
    query: str,
    collections: list[str],
    mode: str,
    k: int,
    labels: list[str] | None,
    subjects: list[str] | None,
    result: SearchResult,
) -> dict[str, Any]:
    """The ``search`` audit entry: query per ``audit_questions`` (full / hash / none), hits, timings."""
    payload: dict[str, Any] = {
        "collections": collections,
        "mode": mode,
        "k": k,
        "hits": [{"chunk_id": h.chunk_id, "score": h.score} for h in result.hits],
        "timings": result.timings,
    }
    if labels is not None:
        payload["labels"] = labels
    if subjects is not None:
        payload["subjects_sealed"] = seal_for_auditors(session, "\n".join(subjects))
    policy = session.setting("audit_questions")
    if policy == "full":
        payload["query"] = query
    elif policy != "none":  # "sealed" and anything unrecognised: the safer middle
        payload["query_sealed"] = seal_for_auditors(session, query)
    return payload
