"""The BM25 leg: FTS5 over chunk text, with the caller's filters joined in before ranking.

User text never reaches FTS5 syntax: it is cut into word tokens, each quoted as a string literal
and OR-ed, so punctuation, quotes, ``NEAR``, ``*`` or ``-`` in a question cannot raise or change the
query's meaning.
"""

from __future__ import annotations

import re
from typing import Any

from .index import Filter

MAX_TERMS = 32
_WORD = re.compile(r"\w+", re.UNICODE)
# Terms that match most chunks add little to BM25 but make the OR query scan every posting list.
STOPWORDS = frozenset(
    "a an and are as at be but by did do does for from had has have how i if in into is it its of on or"
    " that the their there these this to was were what when where which who whom why will with you".split()
)


def fts_query(text: str) -> str | None:
    """Safe FTS5 query for free text: quoted tokens OR-ed; None when there is nothing to search."""
    tokens = [t.lower() for t in _WORD.findall(text)]
    content = [t for t in tokens if t not in STOPWORDS]
    terms = list(dict.fromkeys(content or tokens))[:MAX_TERMS]
    if not terms:
        return None
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


def bm25_search(conn: Any, query: str, k: int, flt: Filter) -> list[tuple[int, float]]:
    """Top-k (chunk_id, bm25) among permitted chunks; lower bm25 is better (SQLite's convention)."""
    match = fts_query(query)
    if match is None or flt.empty or k <= 0:
        return []
    if flt.labels is None and flt.doc_ids is None:
        sql = (
            "SELECT rowid, bm25(chunks_fts) AS s FROM chunks_fts WHERE chunks_fts MATCH ?"
            " ORDER BY s, rowid LIMIT ?"
        )
        return [(int(r), float(s)) for r, s in conn.execute(sql, (match, k))]
    where, params = ["chunks_fts MATCH ?"], [match]
    join = " JOIN chunks c ON c.id = chunks_fts.rowid"
    if flt.labels is not None:
        join += " JOIN documents d ON d.id = c.doc_id"
        where.append(f"d.label IN ({','.join('?' * len(flt.labels))})")
        params += sorted(flt.labels)
    if flt.doc_ids is not None:
        where.append(f"c.doc_id IN ({','.join('?' * len(flt.doc_ids))})")
        params += sorted(flt.doc_ids)
    sql = (
        f"SELECT chunks_fts.rowid, bm25(chunks_fts) AS s FROM chunks_fts{join} WHERE {' AND '.join(where)}"
        " ORDER BY s, chunks_fts.rowid LIMIT ?"
    )
    return [(int(r), float(s)) for r, s in conn.execute(sql, (*params, k))]
