"""Retrieval: embeddings, the vector index, BM25, and their fusion into one ranked list."""

from __future__ import annotations

from .fusion import RRF_K, FusionWeights, rrf
from .search import MODES, Hit, SearchResult, search

__all__ = [
    "MODES",
    "RRF_K",
    "FusionWeights",
    "Hit",
    "SearchResult",
    "rrf",
    "search",
    "get_embedder",
    "warm",
    "forget",
]


def get_embedder(model_name: str | None = None):  # noqa: ANN201 - lazy re-export, keeps torch out of import
    """See :func:`offline.retrieval.embed.get_embedder`."""
    from .embed import get_embedder as _get

    return _get(model_name)


def warm(session, collections: list[str] | None = None) -> dict[str, int]:  # noqa: ANN001
    """Load the in-memory vector index of each readable collection now (benchmarks use it to start
    warm; in normal use a collection warms itself on its second query, see ``index.WARM_AFTER_QUERIES``)."""
    from ..vault.collections import open_collection, readable_collections
    from .index import has_vectors, warm_index

    out = {}
    for name in collections or readable_collections(session):
        h = open_collection(session, name, "read")
        if has_vectors(h.conn):
            out[name] = len(warm_index(session, h).ids)
    return out


def forget(session) -> None:  # noqa: ANN001
    """Drop the session's warm in-memory vectors now (they also go with the session when it closes)."""
    from .index import forget as _forget

    _forget(session)
