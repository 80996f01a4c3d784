"""Reciprocal rank fusion of the dense and BM25 rankings.

For a chunk ``c`` ranked ``r_dense(c)`` by the vector leg and ``r_bm25(c)`` by the BM25 leg (ranks
start at 1; a leg that did not return ``c`` contributes 0)::

    score(c) = w_dense / (rrf_k + r_dense(c)) + w_bm25 / (rrf_k + r_bm25(c))

``rrf_k = 60`` is the constant of Cormack, Clarke & Büttcher (SIGIR 2009): it damps the head of each
list so one leg's first place cannot outvote agreement between both legs. Only ranks are used, so
cosine similarities and BM25 scores never need calibrating against each other. Ties are broken by the
better single-leg rank, then by key, so results are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from ..errors import UsageError

RRF_K = 60.0


@dataclass(frozen=True)
class FusionWeights:
    rrf_k: float = RRF_K
    w_dense: float = 1.0
    w_bm25: float = 1.0

    def __post_init__(self) -> None:
        # nan passes every "< 0" test, and inf turns every score into inf or nan: refuse both.
        values = (self.rrf_k, self.w_dense, self.w_bm25)
        if not all(math.isfinite(v) and v >= 0 for v in values):
            raise UsageError("rrf_k and weights must be finite and non-negative")


def rrf(
    dense: Sequence[Hashable], bm25: Sequence[Hashable], weights: FusionWeights = FusionWeights()
) -> list[tuple[Hashable, float, int | None, int | None]]:
    """Fuse two best-first key lists: [(key, score, dense_rank, bm25_rank)], best first."""
    d_rank = {key: i for i, key in enumerate(dense, start=1)}
    b_rank = {key: i for i, key in enumerate(bm25, start=1)}
    out = []
    for key in d_rank.keys() | b_rank.keys():
        dr, br = d_rank.get(key), b_rank.get(key)
        score = (weights.w_dense / (weights.rrf_k + dr) if dr else 0.0) + (
            weights.w_bm25 / (weights.rrf_k + br) if br else 0.0
        )
        out.append((key, score, dr, br))
    big = len(d_rank) + len(b_rank) + 1
    out.sort(key=lambda t: (-t[1], min(t[2] or big, t[3] or big), str(t[0])))
    return out
