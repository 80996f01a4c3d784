"""``offline eval qa``: answer quality on SQuAD v1.1 with the real pipeline.

The paragraphs of every article that holds a selected question are indexed (one document per
paragraph, so the other paragraphs act as distractors) into a throw-away vault in a private temp
folder; each question then goes through :func:`offline.rag.answer` exactly as ``offline ask``
runs it. Scores use the official SQuAD normalisation (:mod:`offline.eval.metrics`), after the
``[n]`` citation markers are stripped from the answer.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidInput, ParameterError
from . import metrics

CITES = re.compile(r"\[\s*\d{1,3}(?:\s*[,;]\s*\d{1,3})*\s*\]")
EVAL_USER = "eval"
EVAL_COLLECTION = "squad"


@dataclass
class QAItem:
    qid: str
    question: str
    answers: list[str]
    doc: str  # file name of the gold paragraph's document


def load_squad(path: str | Path, limit: int | None) -> tuple[list[QAItem], dict[str, str]]:
    """The first ``limit`` questions and the paragraphs to index ({file name: text})."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
        articles = raw["data"]
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {p}: {exc.__class__.__name__}") from None
    except (ValueError, KeyError, TypeError):
        raise InvalidInput(f"{p} is not a SQuAD v1.1 JSON file (no 'data' list)") from None
    items: list[QAItem] = []
    docs: dict[str, str] = {}
    try:
        for a_i, art in enumerate(articles):
            title = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(art.get("title", f"article{a_i}")))[:60]
            paras = art["paragraphs"]
            names = [f"{a_i:03d}-{title}-p{p_i:03d}.txt" for p_i in range(len(paras))]
            taken = False
            for p_i, para in enumerate(paras):
                for qa in para["qas"]:
                    if limit is not None and len(items) >= limit:
                        break
                    golds = [str(x["text"]) for x in qa["answers"]]
                    if golds:
                        items.append(QAItem(str(qa["id"]), str(qa["question"]), golds, names[p_i]))
                        taken = True
            if taken:  # the whole article goes in, so retrieval has distractors
                docs.update({n: str(para["context"]) for n, para in zip(names, paras)})
            if limit is not None and len(items) >= limit:
                break
    except (KeyError, TypeError):
        raise InvalidInput(f"{p} is not a SQuAD v1.1 JSON file (bad article/paragraph/qas layout)") from None
    if not items:
        raise InvalidInput(f"{p} holds no answerable questions")
    return items, docs


def _index(session: Any, docs: dict[str, str], folder: Path) -> dict[str, Any]:
    """One text file per paragraph, ingested into a fresh collection with the real ingest pipeline."""
    from ..ingest import ingest_paths
    from ..vault.collections import create_collection

    create_collection(session, EVAL_COLLECTION)
    src = folder / "paragraphs"
    src.mkdir(mode=0o700)
    for name, text in docs.items():
        (src / name).write_text(text, encoding="utf-8")
    t0 = time.perf_counter()
    summary = ingest_paths(session, [src], EVAL_COLLECTION)
    return {"documents": len(docs), "ingest_s": round(time.perf_counter() - t0, 3),
            "summary": summary if isinstance(summary, dict) else None}


def _latency(values: list[float]) -> dict[str, float | None]:
    r = lambda v: None if v is None else round(v, 4)  # noqa: E731
    return {"p50": r(metrics.percentile(values, 50)), "p95": r(metrics.percentile(values, 95)),
            "mean": r(sum(values) / len(values)) if values else None}


def evaluate_squad(path: str | Path, limit: int | None = 100, mode: str = "rag", *, k: int | None = None,
                   max_tokens: int = 48, model: str | None = None, min_score: float | None = None,
                   reader: bool = True, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Exact match, token F1, answer-contains, retrieval hit rate, the grounding figures of
    :mod:`.grounded` (citation present and correct, support, false refusals) and latencies on a
    SQuAD file. ``reader=False`` serves rag with the plain model instead of its reader."""
    from ..rag import DEFAULT_K, DEFAULT_MIN_SCORE, answer
    from .grounded import score, summarise

    k = DEFAULT_K if k is None else k
    from ..vault import create_vault

    if mode not in ("rag", "base"):
        raise ParameterError("{mode} must be rag or base", "mode")
    if limit is not None and limit < 1:
        raise ParameterError("{limit} must be at least 1", "limit")
    items, docs = load_squad(path, limit)
    floor = DEFAULT_MIN_SCORE if min_score is None else min_score
    work = Path(tempfile.mkdtemp(prefix="offline-eval-qa-"))
    work.chmod(0o700)
    rows: list[dict[str, Any]] = []
    try:
        session = create_vault(work / "vault", EVAL_USER, secrets.token_urlsafe(24))
        try:
            indexed = _index(session, docs, work) if mode == "rag" else {"documents": 0}
            for i, item in enumerate(items):
                ans = answer(session, item.question, collections=[EVAL_COLLECTION] if mode == "rag" else None,
                             k=k, mode=mode, model=model, max_tokens=max_tokens, min_score=floor, reader=reader)
                pred = " ".join(CITES.sub(" ", ans.answer).split()) if not ans.refused else ""
                hit_texts = [h.text for h in (ans.hits or [])]
                rows.append({
                    "id": item.qid, "question": item.question, "prediction": pred, "gold": item.answers,
                    "em": metrics.best_over(metrics.exact_match, pred, item.answers),
                    "f1": metrics.best_over(metrics.f1_score, pred, item.answers),
                    "contains": metrics.best_over(metrics.contains, pred, item.answers),
                    "retrieval_hit": (any(metrics.best_over(metrics.contains, t, item.answers) for t in hit_texts)
                                      if mode == "rag" else None),
                    "gold_doc_retrieved": (any(h.doc_name == item.doc for h in (ans.hits or []))
                                           if mode == "rag" else None),
                    "refused": ans.refused,
                    "timings": ans.timings,
                    "grounded": score(ans, item.answers),
                })
                if progress is not None:
                    progress(i + 1, len(items))
        finally:
            session.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    n = len(rows)
    mean = lambda key: round(sum(float(r[key]) for r in rows) / n, 4)  # noqa: E731
    t = lambda key: [r["timings"][key] for r in rows if key in r["timings"]]  # noqa: E731
    return {
        "file": str(path), "mode": mode, "k": k, "questions": n, "max_tokens": max_tokens,
        "min_score": floor, "indexed_documents": indexed["documents"],
        "exact_match": mean("em"), "f1": mean("f1"), "answer_contains": mean("contains"),
        "retrieval_hit_rate": mean("retrieval_hit") if mode == "rag" else None,
        "gold_paragraph_rate": mean("gold_doc_retrieved") if mode == "rag" else None,
        "refused_rate": mean("refused"),
        "reader": reader and mode == "rag",
        # cited / cite_correct / false_refusal / support, defined in offline.eval.grounded
        "grounding": {k: v for k, v in summarise([r["grounded"] for r in rows]).items()
                      if k in ("cited", "cite_correct", "false_refusal", "support")} if mode == "rag" else None,
        "latency_s": {"total": _latency(t("total_s")), "retrieval": _latency(t("retrieval_s")),
                      "ttft": _latency(t("ttft_s")), "decode": _latency(t("decode_s"))},
        "decode_tok_s_mean": round(sum(t("decode_tok_s")) / max(1, len(t("decode_tok_s"))), 2),
        "ingest_s": indexed.get("ingest_s"),
        "per_question": rows,
    }
