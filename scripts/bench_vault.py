#!/usr/bin/env python3
"""Encrypted vault vs the same schema unencrypted: insert and warm KNN timings, one run.

Both sides use the same engine (sqlcipher3 with sqlite-vec; the plain side simply sets no key)
and the same pragmas (WAL, synchronous, secure_delete, cache), so the ratio isolates encryption.
The encrypted side is opened through offline.vault.db.connect, the kit's one connection function.

    python scripts/bench_vault.py [--n 100000] [--dim 384] [--k 10] [--queries 30] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from offline.vault import crypto, db  # noqa: E402

BATCH = 1000


def open_plain(path: Path):
    import sqlcipher3
    import sqlite_vec

    conn = sqlcipher3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL").fetchone()
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA secure_delete = ON")
    conn.execute(f"PRAGMA cache_size = -{db.CACHE_KIB}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.enable_load_extension(True)
    sqlite_vec.load(conn)
    return conn


def run_side(conn, vectors: np.ndarray, queries: np.ndarray, k: int) -> dict:
    dim = vectors.shape[1]
    conn.execute(
        f"CREATE VIRTUAL TABLE v USING vec0(id INTEGER PRIMARY KEY, e float[{dim}] distance_metric=cosine)"
    )
    t0 = time.perf_counter()
    for start in range(0, len(vectors), BATCH):
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO v(id, e) VALUES (?, ?)",
            [(start + i + 1, vec.tobytes()) for i, vec in enumerate(vectors[start : start + BATCH])],
        )
        conn.execute("COMMIT")
    insert_s = time.perf_counter() - t0
    sql = "SELECT id, distance FROM v WHERE e MATCH ? AND k = ?"
    conn.execute(sql, (queries[0].tobytes(), k)).fetchall()  # warm the page cache
    times, results = [], []
    for q in queries:
        t = time.perf_counter()
        results.append([r[0] for r in conn.execute(sql, (q.tobytes(), k)).fetchall()])
        times.append((time.perf_counter() - t) * 1000)
    return {
        "insert_s": insert_s,
        "insert_rows_per_s": len(vectors) / insert_s,
        "knn_p50_ms": statistics.median(times),
        "knn_p95_ms": float(np.percentile(times, 95)),
        "results": results,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)

    with tempfile.TemporaryDirectory() as tmp:
        enc_conn = db.connect(Path(tmp) / "enc.db", crypto.random_key(), "collection", create=True)
        enc = run_side(enc_conn, vectors, queries, args.k)
        enc_conn.close()
        plain_conn = open_plain(Path(tmp) / "plain.db")
        plain = run_side(plain_conn, vectors, queries, args.k)
        plain_conn.close()
        with open(Path(tmp) / "enc.db", "rb") as f:
            assert not f.read(16).startswith(b"SQLite format 3")

    same = sum(a == b for a, b in zip(enc.pop("results"), plain.pop("results")))
    out = {
        "n": args.n,
        "dim": args.dim,
        "k": args.k,
        "queries": args.queries,
        "encrypted": enc,
        "plain": plain,
        "knn_ratio_p50": enc["knn_p50_ms"] / plain["knn_p50_ms"],
        "insert_ratio": enc["insert_s"] / plain["insert_s"],
        "identical_results": f"{same}/{args.queries}",
        "goal": "knn_ratio_p50 <= 1.1, insert_ratio <= 1.3",
        "cache_kib": db.CACHE_KIB,
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"n={args.n} dim={args.dim} k={args.k}")
        print(
            f"insert   encrypted {enc['insert_s']:.2f}s  plain {plain['insert_s']:.2f}s  "
            f"ratio {out['insert_ratio']:.2f}"
        )
        print(
            f"warm KNN encrypted p50 {enc['knn_p50_ms']:.1f}ms  plain p50 {plain['knn_p50_ms']:.1f}ms  "
            f"ratio {out['knn_ratio_p50']:.2f}"
        )
        print(f"identical top-{args.k}: {out['identical_results']}")


if __name__ == "__main__":
    main()
