#!/usr/bin/env python3
"""Ingest throughput (chunks/s) versus raw ``SentenceTransformer.encode`` on the same chunks.

    .venv/bin/python scripts/bench_ingest.py [--paragraphs 600] [--squad FILE] [--json]

The corpus is SQuAD v1.1 paragraphs (``../shared/data/squad-v1.1-dev-part-a.json`` by default,
else the slice in tests/data), written as Markdown files of 5 paragraphs each under a heading per
paragraph. ``offline ingest``'s library call (read, parse, chunk by tokens, embed in batches of 64,
one transaction per document into a fresh encrypted vault) is timed end to end, with the model
already loaded. The baseline encodes exactly the chunk texts ingest produced (read back from the
vault) with the same model object and batch size, timed once before and once after the ingest run;
its rate is the mean of the two, so drifting machine load hits both sides alike.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("OFFLINE_KDF_TARGET_S", "0")


def write_corpus(squad: Path, out: Path, paragraphs: int) -> int:
    data = json.loads(squad.read_text(encoding="utf-8"))
    paras = [(a["title"].replace("_", " "), p["context"]) for a in data["data"] for p in a["paragraphs"]][
        :paragraphs
    ]
    out.mkdir(parents=True)
    for i in range(0, len(paras), 5):
        body = "\n\n".join(f"## {t} ({i + j})\n\n{c}" for j, (t, c) in enumerate(paras[i : i + 5]))
        (out / f"doc{i // 5:04d}.md").write_text(f"# Part {i // 5}\n\n{body}\n", encoding="utf-8")
    return len(paras)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paragraphs", type=int, default=600)
    ap.add_argument("--squad", type=Path, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    squad = args.squad or next(
        p
        for p in (
            REPO.parent / "shared/data/squad-v1.1-dev-part-a.json",
            REPO / "tests/data/squad-beir-slice.json",
        )
        if p.exists()
    )

    from offline.ingest import ingest_paths
    from offline.retrieval.embed import BATCH_SIZE, get_embedder
    from offline.vault import create_vault
    from offline.vault.collections import create_collection, open_collection

    work = Path(tempfile.mkdtemp(prefix="offline-bench-ingest-"))
    try:
        n_par = write_corpus(squad, work / "docs", args.paragraphs)
        emb = get_embedder()
        emb.encode(["warm-up sentence"] * 8)
        session = create_vault(work / "vault", "bench", secrets.token_urlsafe(16))
        create_collection(session, "bench")
        # Chunk texts for the baseline come from a dry run of the same chunker (before timing).
        from offline.ingest.chunking import chunk_segments
        from offline.ingest.loaders import load

        texts = []
        for f in sorted((work / "docs").iterdir()):
            texts += [
                c.text
                for c in chunk_segments(load(f, f.read_bytes(), max_bytes=1 << 30).segments, emb.tokenizer)
            ]

        def encode_s() -> float:
            t0 = time.perf_counter()
            emb.model.encode(texts, batch_size=BATCH_SIZE, normalize_embeddings=True, show_progress_bar=False)
            return time.perf_counter() - t0

        before = encode_s()
        t0 = time.perf_counter()
        report = ingest_paths(session, [work / "docs"], "bench")
        ingest_s = time.perf_counter() - t0
        after = encode_s()
        stored = [
            r[0]
            for r in open_collection(session, "bench").conn.execute("SELECT text FROM chunks ORDER BY id")
        ]
        session.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert sorted(stored) == sorted(texts), "baseline must encode exactly the chunks ingest stored"
    n = report["chunks"]
    encode_s_mean = (before + after) / 2
    out = {
        "paragraphs": n_par,
        "files": len(report["added"]),
        "chunks": n,
        "failed": len(report["failed"]),
        "ingest_s": round(ingest_s, 3),
        "encode_s": round(encode_s_mean, 3),
        "encode_s_before": round(before, 3),
        "encode_s_after": round(after, 3),
        "ingest_chunks_per_s": round(n / ingest_s, 2),
        "encode_chunks_per_s": round(n / encode_s_mean, 2),
        "ratio": round(encode_s_mean / ingest_s, 3),
        "batch_size": BATCH_SIZE,
        "cpu_count": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{out['files']} files, {n} chunks from {n_par} SQuAD paragraphs")
        print(
            f"  ingest  {out['ingest_chunks_per_s']:.1f} chunks/s "
            f"({out['ingest_s']:.1f} s, parse+chunk+embed+write)"
        )
        print(
            f"  encode  {out['encode_chunks_per_s']:.1f} chunks/s "
            "(raw SentenceTransformer.encode, same chunks)"
        )
        print(f"  ratio   {out['ratio']:.3f} (goal >= 0.85)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
