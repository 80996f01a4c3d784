#!/usr/bin/env python3
"""Warm hybrid query latency at N chunks vs a numpy float32 brute-force baseline, and dense recall@10.

    .venv/bin/python scripts/bench_retrieval.py --n 10000 [--queries 200] [--json]

What is measured, in one process and one run:

* the corpus is synthetic, written straight into a temporary encrypted vault through the same
  ``write_document`` path ingest uses (chunks, FTS5 rows by trigger, sqlite-vec vectors): N unit
  vectors (dim 384) drawn around 512 random cluster centres, and ~60-word texts over a Zipf
  vocabulary of 20,000 made-up words (the 100 most frequent play the role of stopwords and are left
  out of queries, as the real query sanitiser drops English stopwords). Embedding 100k real chunks
  would take an hour on a laptop and would not change the index's arithmetic;
* each query is a corpus vector plus noise, with 4 words from that chunk as its text;
* **numpy baseline**: ``scores = M @ q``; ``argpartition`` top-10; sort — over the same float32
  matrix, in the same process, interleaved query by query with the hybrid runs;
* **hybrid**: ``offline.retrieval.search(mode="hybrid", k=10)`` with the in-memory index warm (loaded
  once from the encrypted vec0 table, as the agent keeps it), the query vector given (query embedding is
  timed separately), no audit; includes BM25, fusion and fetching the chunk texts;
* **recall@10**: the dense leg (memory and sqlite-vec) against exact float64 search;
* sqlite-vec KNN alone (the cold path) on a subset of queries, for reference.

Each query is timed ``--repeat`` times per side (interleaved) and the best kept, then p50/p95 are
taken over queries; on a shared or busy machine single timings mostly measure the scheduler.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OFFLINE_KDF_TARGET_S", "0")  # throw-away vault: no point calibrating Argon2id
if "--threads" in sys.argv:  # must be set before numpy/torch load their thread pools
    _t = sys.argv[sys.argv.index("--threads") + 1]
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _t


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def synth(n: int, dim: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((512, dim)).astype(np.float32)
    assign = rng.integers(0, 512, n)
    vecs = centres[assign] + 0.9 * rng.standard_normal((n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    vocab_size = 20_000
    p = 1.0 / np.arange(1, vocab_size + 1) ** 1.07
    p /= p.sum()
    words = rng.choice(vocab_size, size=(n, 60), p=p)
    return rng, vecs.astype(np.float32), words


def word(i: int) -> str:
    # made-up but word-like tokens: letters only, so the porter stemmer leaves most of them alone
    letters = "bcdfghjklmnpqrstvwxz"
    vowels = "aeiou"
    s, i = "", int(i) + 1
    while i:
        i, r = divmod(i, 100)
        s += letters[r % 20] + vowels[r // 20]
    return s + "n"


def build(session, collection: str, vecs, words, chunk_per_doc: int = 1000) -> float:
    from offline.ingest.chunking import Chunk
    from offline.ingest.store import DocRecord, write_document
    from offline.retrieval.embed import get_embedder
    from offline.vault.collections import open_collection

    emb = get_embedder()
    h = open_collection(session, collection, "write")
    t0 = time.perf_counter()
    n = len(vecs)
    for d, start in enumerate(range(0, n, chunk_per_doc)):
        rows = range(start, min(n, start + chunk_per_doc))
        chunks = [Chunk(" ".join(word(w) for w in words[i]), None, None, 60) for i in rows]
        label = ("public", "internal", "phi")[d % 3]
        rec = DocRecord(
            source=f"synthetic:{d}",
            name=f"doc{d}.txt",
            sha256="0" * 64,
            size=0,
            mtime=None,
            label=label,
            mime="text/plain",
        )
        write_document(
            h.conn,
            collection,
            rec,
            chunks,
            vecs[rows.start : rows.stop],
            model=(emb.name, emb.sha256),
            user=session.user,
        )
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=3, help="timings per query per side; the best is kept")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="BLAS/OpenMP threads for both sides (default: the libraries' own choice)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import numpy as np

    from offline.retrieval import search, warm
    from offline.retrieval.embed import get_embedder
    from offline.vault import create_vault
    from offline.vault.collections import create_collection

    work = Path(tempfile.mkdtemp(prefix="offline-bench-retrieval-"))
    try:
        emb = get_embedder()
        session = create_vault(work / "vault", "bench", secrets.token_urlsafe(16))
        create_collection(session, "bench")
        rng, vecs, words = synth(args.n, emb.dim, args.seed)
        build_s = build(session, "bench", vecs, words)

        t0 = time.perf_counter()
        warm(session, ["bench"])
        load_ms = (time.perf_counter() - t0) * 1000

        qi = rng.choice(args.n, size=args.queries, replace=False)
        qv = (
            vecs[qi]
            + 0.5 * rng.standard_normal((args.queries, emb.dim)).astype(np.float32) / np.sqrt(emb.dim) * 4
        )
        qv = (qv / np.linalg.norm(qv, axis=1, keepdims=True)).astype(np.float32)
        texts = []
        for i in qi:
            content = [w for w in dict.fromkeys(words[i]) if w >= 100]
            texts.append(
                " ".join(word(w) for w in rng.choice(content, size=min(4, len(content)), replace=False))
            )

        matrix = np.ascontiguousarray(vecs)  # the baseline's own copy of the same vectors
        exact64 = vecs.astype(np.float64)
        k = args.k

        def numpy_topk(q):
            s = matrix @ q
            top = np.argpartition(-s, k)[:k]
            return top[np.argsort(-s[top])]

        for _ in range(5):  # warm caches, threads and the BM25 worker on both sides
            numpy_topk(qv[0])
            search(
                session,
                texts[0],
                collections=["bench"],
                k=k,
                audit=False,
                query_vector=qv[0],
                dense_backend="memory",
            )
        np_ms, hy_ms, leg = [], [], {"dense_ms": [], "bm25_ms": []}
        recall_mem = []
        for j in range(args.queries):
            # Best of --repeat per query for both sides, interleaved: on a shared machine a single
            # timing mostly measures the scheduler, and interleaving gives both sides the same noise.
            best_np, best_hy, res = float("inf"), float("inf"), None
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                numpy_topk(qv[j])
                best_np = min(best_np, (time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                r = search(
                    session,
                    texts[j],
                    collections=["bench"],
                    k=k,
                    audit=False,
                    query_vector=qv[j],
                    dense_backend="memory",
                )
                took = (time.perf_counter() - t0) * 1000
                if took < best_hy:
                    best_hy, res = took, r
            np_ms.append(best_np)
            hy_ms.append(best_hy)
            for key in leg:
                leg[key].append(res.timings.get(key, 0.0))
            truth = set(np.argsort(-(exact64 @ qv[j].astype(np.float64)))[:k] + 1)  # rowid = index + 1
            dense = search(
                session,
                texts[j],
                collections=["bench"],
                k=k,
                mode="dense",
                audit=False,
                query_vector=qv[j],
                dense_backend="memory",
            )
            recall_mem.append(len(truth & {int(h.chunk_id.split("/")[1]) for h in dense.hits}) / k)

        n_sql = min(args.queries, 30)
        sql_ms, recall_sql = [], []
        for j in range(n_sql):
            t0 = time.perf_counter()
            dense = search(
                session,
                texts[j],
                collections=["bench"],
                k=k,
                mode="dense",
                audit=False,
                query_vector=qv[j],
                dense_backend="sqlite",
            )
            sql_ms.append((time.perf_counter() - t0) * 1000)
            truth = set(np.argsort(-(exact64 @ qv[j].astype(np.float64)))[:k] + 1)
            recall_sql.append(len(truth & {int(h.chunk_id.split("/")[1]) for h in dense.hits}) / k)

        questions = [f"what is the policy on item {i} for the night shift?" for i in range(20)]
        emb.encode_query("warm-up query")
        q_ms = []
        for q in questions:
            t0 = time.perf_counter()
            emb.encode_query(q)
            q_ms.append((time.perf_counter() - t0) * 1000)

        out = {
            "n": args.n,
            "dim": emb.dim,
            "queries": args.queries,
            "k": k,
            "synthetic": True,
            "hybrid_p50_ms": round(pct(hy_ms, 50), 3),
            "hybrid_p95_ms": round(pct(hy_ms, 95), 3),
            "numpy_p50_ms": round(pct(np_ms, 50), 3),
            "numpy_p95_ms": round(pct(np_ms, 95), 3),
            "ratio_p50": round(pct(hy_ms, 50) / pct(np_ms, 50), 3),
            "recall_at_10": round(statistics.mean(recall_mem), 4),
            "dense_leg_p50_ms": round(pct(leg["dense_ms"], 50), 3),
            "bm25_leg_p50_ms": round(pct(leg["bm25_ms"], 50), 3),
            "sqlite_vec_p50_ms": round(pct(sql_ms, 50), 3),
            "sqlite_vec_ratio_p50": round(pct(sql_ms, 50) / pct(np_ms, 50), 3),
            "sqlite_vec_recall_at_10": round(statistics.mean(recall_sql), 4),
            "index_load_ms": round(load_ms, 1),
            "build_s": round(build_s, 1),
            "query_embed_p50_ms": round(pct(q_ms, 50), 3),
            "cpu_count": os.cpu_count(),
            "loadavg_1m": round(os.getloadavg()[0], 2),
            "threads": args.threads,
            "repeat": args.repeat,
        }
        session.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"N={out['n']} chunks (synthetic, dim {out['dim']}), {out['queries']} queries, k={k}")
        print(
            f"  hybrid (warm memory index)  p50 {out['hybrid_p50_ms']:.2f} ms  "
            f"p95 {out['hybrid_p95_ms']:.2f} ms"
        )
        print(
            f"  numpy float32 brute force   p50 {out['numpy_p50_ms']:.2f} ms  "
            f"p95 {out['numpy_p95_ms']:.2f} ms"
        )
        print(
            f"  ratio p50 {out['ratio_p50']:.2f}x (goal <= 2x); "
            f"dense recall@10 {out['recall_at_10']:.4f} (goal >= 0.99)"
        )
        print(f"  legs: dense p50 {out['dense_leg_p50_ms']:.2f} ms, bm25 p50 {out['bm25_leg_p50_ms']:.2f} ms")
        print(
            f"  sqlite-vec KNN alone p50 {out['sqlite_vec_p50_ms']:.2f} ms "
            f"({out['sqlite_vec_ratio_p50']:.1f}x), "
            f"recall@10 {out['sqlite_vec_recall_at_10']:.4f}"
        )
        print(
            f"  index load {out['index_load_ms']:.0f} ms; build {out['build_s']:.0f} s; "
            f"query embedding p50 {out['query_embed_p50_ms']:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
