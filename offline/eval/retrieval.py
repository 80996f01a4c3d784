"""``offline eval retrieval``: nDCG@10, Recall@100 and MRR@10 on a BEIR-layout folder.

The corpus is indexed into a throw-away vault (private temp folder, removed afterwards) with the
same chunking, embedding and storage as ``offline ingest``; each query is run through the real
:func:`offline.retrieval.search` in dense, BM25 and hybrid mode. A document's rank is the rank of
its best chunk. Metric definitions follow BEIR (pytrec_eval):

* nDCG@10 = DCG@10 / IDCG@10 with DCG = Σ rel_i / log2(i + 1) (linear gain, graded qrels);
* Recall@100 = |relevant ∩ top 100| / |relevant| (relevance > 0);
* MRR@10 = 1 / rank of the first relevant document in the top 10 (0 if none).
"""

from __future__ import annotations

import json
import math
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InvalidInput, UsageError

EVAL_USER = "eval"
EVAL_COLLECTION = "beir"
MODES = ("dense", "bm25", "hybrid")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        raise InvalidInput(f"{path.name}: invalid JSON on line {n}") from None
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc.__class__.__name__}") from None
    return out


def load_beir(
    beir_dir: str | Path, split: str = "test"
) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    """(corpus id -> text, query id -> text, qrels query id -> {doc id: relevance}) from a BEIR folder."""
    root = Path(beir_dir)
    for need in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (root / need).is_file():
            raise UsageError(f"not a BEIR folder: {root} has no {need}")
    corpus = {}
    for d in _read_jsonl(root / "corpus.jsonl"):
        title, text = str(d.get("title") or "").strip(), str(d.get("text") or "").strip()
        corpus[str(d["_id"])] = f"{title}\n{text}" if title else text
    queries = {str(q["_id"]): str(q["text"]) for q in _read_jsonl(root / "queries.jsonl")}
    qrels: dict[str, dict[str, int]] = {}
    with open(root / "qrels" / f"{split}.tsv", encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            parts = line.rstrip("\n").split("\t")
            if n == 1 and parts[0] in ("query-id", "query_id", "qid"):
                continue
            if len(parts) < 3:
                if line.strip():
                    raise InvalidInput(f"qrels/{split}.tsv line {n}: expected query-id, corpus-id, score")
                continue
            try:
                qrels.setdefault(parts[0], {})[parts[1]] = int(float(parts[2]))
            except ValueError:
                raise InvalidInput(f"qrels/{split}.tsv line {n}: score is not a number") from None
    return corpus, queries, qrels


def ndcg_at(ranked: list[str], rels: dict[str, int], k: int = 10) -> float:
    dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at(ranked: list[str], rels: dict[str, int], k: int = 100) -> float:
    relevant = {d for d, r in rels.items() if r > 0}
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0


def mrr_at(ranked: list[str], rels: dict[str, int], k: int = 10) -> float:
    for i, d in enumerate(ranked[:k], start=1):
        if rels.get(d, 0) > 0:
            return 1.0 / i
    return 0.0


def evaluate_beir(
    beir_dir: str | Path,
    *,
    limit: int | None = None,
    split: str = "test",
    depth: int = 100,
    modes: tuple[str, ...] = MODES,
    rrf_k: float = 60.0,
    w_dense: float = 1.0,
    w_bm25: float = 1.0,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Index a BEIR corpus into a temporary vault and score dense, BM25 and hybrid retrieval.

    ``limit`` caps the number of (judged) queries. Returns metrics per mode, sizes and timings.
    """
    from ..ingest import TextRecord, ingest_records
    from ..retrieval import FusionWeights, search
    from ..retrieval.embed import get_embedder
    from ..vault import create_vault
    from ..vault.collections import create_collection

    for m in modes:
        if m not in MODES:
            raise UsageError(f"unknown mode {m!r}")
    corpus, queries, qrels = load_beir(beir_dir, split)
    qids = [q for q in qrels if q in queries and any(r > 0 for r in qrels[q].values())]
    if limit is not None:
        qids = qids[:limit]
    if not qids or not corpus:
        raise InvalidInput("the BEIR folder has no judged queries or no documents")
    report = progress or (lambda *a: None)
    work = Path(tempfile.mkdtemp(prefix="offline-eval-beir-"))
    session = None
    try:
        work.chmod(0o700)
        session = create_vault(work / "vault", EVAL_USER, secrets.token_urlsafe(24))
        create_collection(session, EVAL_COLLECTION)
        t0 = time.perf_counter()
        total = len(corpus)
        done = {"n": 0}

        def on_event(event: str, **info: Any) -> None:
            if event == "file":
                done["n"] += 1
                if done["n"] % 100 == 0 or done["n"] == total:
                    report("index", done["n"], total)

        summary = ingest_records(
            session,
            (TextRecord(source=f"beir:{doc_id}", name=doc_id, text=text) for doc_id, text in corpus.items()),
            EVAL_COLLECTION,
            progress=on_event,
        )
        index_s = time.perf_counter() - t0
        embedder = get_embedder()
        t0 = time.perf_counter()
        qvecs = embedder.encode([queries[q] for q in qids])
        embed_s = time.perf_counter() - t0
        weights = FusionWeights(rrf_k, w_dense, w_bm25)
        scores: dict[str, dict[str, list[float]]] = {
            m: {"ndcg@10": [], "recall@100": [], "mrr@10": []} for m in modes
        }
        latency: dict[str, list[float]] = {m: [] for m in modes}
        chunk_depth = min(4 * depth, 4096)  # several chunks of one document may rank together
        for i, q in enumerate(qids):
            for m in modes:
                res = search(
                    session,
                    queries[q],
                    collections=[EVAL_COLLECTION],
                    k=chunk_depth,
                    mode=m,
                    audit=False,
                    weights=weights,
                    query_vector=qvecs[i],
                    dense_backend="memory",
                )
                latency[m].append(res.timings["total_ms"])
                ranked = list(dict.fromkeys(h.doc_name for h in res.hits))[:depth]
                rels = qrels[q]
                scores[m]["ndcg@10"].append(ndcg_at(ranked, rels, 10))
                scores[m]["recall@100"].append(recall_at(ranked, rels, 100))
                scores[m]["mrr@10"].append(mrr_at(ranked, rels, 10))
            if (i + 1) % 50 == 0 or i + 1 == len(qids):
                report("queries", i + 1, len(qids))
        metrics = {m: {name: round(sum(v) / len(v), 4) for name, v in s.items()} for m, s in scores.items()}
        return {
            "dataset": Path(beir_dir).name,
            "split": split,
            "queries": len(qids),
            "documents": len(corpus),
            "chunks": summary["chunks"],
            "failed_documents": len(summary["failed"]),
            "embedding_model": embedder.name,
            "fusion": {"rrf_k": rrf_k, "w_dense": w_dense, "w_bm25": w_bm25},
            "metrics": metrics,
            "timings": {
                "index_s": round(index_s, 2),
                "query_embed_ms_mean": round(1000 * embed_s / len(qids), 2),
                "search_ms_p50": {m: round(sorted(v)[len(v) // 2], 2) for m, v in latency.items()},
            },
        }
    finally:
        if session is not None:
            session.close()
        shutil.rmtree(work, ignore_errors=True)


def squad_to_beir(
    squad_file: str | Path,
    out_dir: str | Path,
    *,
    max_paragraphs: int | None = None,
    questions_per_paragraph: int | None = None,
) -> dict[str, int]:
    """Write a BEIR folder from SQuAD v1.1 JSON: paragraphs are the corpus, each question's
    relevant document is the paragraph it was asked about (relevance 1)."""
    try:
        data = json.loads(Path(squad_file).read_text(encoding="utf-8"))
        articles = data["data"]
    except (OSError, ValueError, KeyError, TypeError):
        raise InvalidInput(f"{squad_file}: not a SQuAD v1.1 JSON file") from None
    out = Path(out_dir)
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    n_docs = n_q = 0
    with (
        open(out / "corpus.jsonl", "w", encoding="utf-8") as corpus,
        open(out / "queries.jsonl", "w", encoding="utf-8") as queries,
        open(out / "qrels" / "test.tsv", "w", encoding="utf-8") as qrels,
    ):
        qrels.write("query-id\tcorpus-id\tscore\n")
        for a, article in enumerate(articles):
            for p, para in enumerate(article["paragraphs"]):
                if max_paragraphs is not None and n_docs >= max_paragraphs:
                    break
                doc_id = f"{a}-{p}"
                corpus.write(
                    json.dumps(
                        {"_id": doc_id, "title": article["title"].replace("_", " "), "text": para["context"]}
                    )
                    + "\n"
                )
                n_docs += 1
                for qa in para["qas"][:questions_per_paragraph]:
                    queries.write(json.dumps({"_id": qa["id"], "text": qa["question"]}) + "\n")
                    qrels.write(f"{qa['id']}\t{doc_id}\t1\n")
                    n_q += 1
    return {"documents": n_docs, "queries": n_q}
