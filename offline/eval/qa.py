"""``offline eval qa``: answer quality on SQuAD v1.1 with the real pipeline.

The paragraphs of every article that holds a selected question are indexed (one document per
paragraph, so the other paragraphs act as distractors) into a throw-away vault in a private temp
folder; each question then goes through :func:`offline.rag.answer` exactly as ``offline ask``
runs it, and is scored by :func:`offline.eval.grounded.score_answer` (the scorer ``compare`` and
``scripts/eval_reader.py`` use: official SQuAD normalisation, ``[n]`` markers stripped).

Modes: ``rag`` (the reader), ``base``, and with ``adapter`` a LoRA from the caller's own vault:
``finetune`` (no retrieval) or ``hybrid`` (the adapter with retrieval, served on the prompt ``ask``
builds, which is what ``finetune create --raft`` trains on). The adapter is decrypted under the
caller's grants (audited there as a use) and re-encrypted into the throw-away vault for the run.

Refusal on unanswerable questions: ``unanswerable`` more questions of the indexed articles are
asked over a second collection that lacks their gold paragraph (:func:`pick_gold_removed`, only
questions whose answer occurs in no other paragraph), as ``scripts/eval_reader.py`` does.
"""

from __future__ import annotations

import json
import random
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidInput, ParameterError
from .metrics import normalize_answer, percentile

EVAL_USER = "eval"
EVAL_COLLECTION = "squad"
NOGOLD_COLLECTION = "squad_nogold"  # the same paragraphs minus the gold ones of the unanswerable questions
MODES = ("rag", "base", "finetune", "hybrid")
ADAPTER_MODES = ("finetune", "hybrid")


@dataclass
class QAItem:
    qid: str
    question: str
    answers: list[str]
    doc: str  # file name of the gold paragraph's document (removed for an unanswerable item)


def pick_gold_removed(
    questions: Sequence[tuple[Hashable, Sequence[str]]], paragraphs: Mapping[Hashable, str], n: int
) -> tuple[list[int], set[Hashable]]:
    """Up to ``n`` questions that no paragraph answers once their own gold paragraph is removed.

    ``questions`` are (gold paragraph key, gold answers), taken in the given order (shuffle first
    for a sample); returns their indices and the paragraph keys to leave out. A question whose
    answer still occurs in another remaining paragraph is passed over: it is no test of refusal.
    """
    norm = {key: normalize_answer(text) for key, text in paragraphs.items()}
    picked: list[int] = []
    removed: set[Hashable] = set()
    for i, (key, golds) in enumerate(questions):
        if len(picked) >= n:
            break
        if key in removed:
            continue
        gs = [normalize_answer(g) for g in golds if normalize_answer(g)]
        if any(f" {g} " in f" {v} " for g in gs for k2, v in norm.items() if k2 != key and k2 not in removed):
            continue
        picked.append(i)
        removed.add(key)
    return picked, removed


def load_squad(
    path: str | Path, limit: int | None, unanswerable: int = 0, seed: int = 0
) -> tuple[list[QAItem], dict[str, str]]:
    """The first ``limit`` questions and the paragraphs to index ({file name: text}); then up to
    ``unanswerable`` questions of those articles (others first), with ``answers`` empty, whose gold
    paragraph (``doc``) is to be left out of the second collection (:func:`pick_gold_removed`)."""
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
    if unanswerable > 0:
        items += _gold_removed_items(articles, docs, {i.qid for i in items}, unanswerable, seed)
    return items, docs


def _gold_removed_items(
    articles: list[Any], docs: dict[str, str], taken: set[str], n: int, seed: int
) -> list[QAItem]:
    by_text = {}
    for name, text in docs.items():
        by_text.setdefault(text, name)
    pool = [
        (
            str(qa["id"]),
            str(qa["question"]),
            [str(x["text"]) for x in qa["answers"]],
            by_text[para["context"]],
        )
        for art in articles
        for para in art["paragraphs"]
        if para["context"] in by_text
        for qa in para["qas"]
        if qa["answers"]
    ]
    rng = random.Random(seed)
    fresh, asked = [x for x in pool if x[0] not in taken], [x for x in pool if x[0] in taken]
    rng.shuffle(fresh)
    rng.shuffle(asked)
    # Questions not asked already come first; when --limit took them all, an asked one is asked
    # again over the collection without its paragraph (a paired test: same question, gold gone).
    pool = fresh + asked
    picked, _ = pick_gold_removed([(doc, golds) for _, _, golds, doc in pool], docs, n)
    return [QAItem(pool[i][0], pool[i][1], [], pool[i][3]) for i in picked]


def _index(session: Any, docs: dict[str, str], folder: Path, name: str) -> dict[str, Any]:
    """One text file per paragraph, ingested into a fresh collection with the real ingest pipeline."""
    from ..ingest import ingest_paths
    from ..vault.collections import create_collection

    create_collection(session, name)
    src = folder / name
    src.mkdir(mode=0o700)
    for doc, text in docs.items():
        (src / doc).write_text(text, encoding="utf-8")
    t0 = time.perf_counter()
    summary = ingest_paths(session, [src], name)
    return {
        "documents": len(docs),
        "ingest_s": round(time.perf_counter() - t0, 3),
        "summary": summary if isinstance(summary, dict) else None,
    }


def copy_adapter(source: Any, name: str, target: Any) -> dict[str, Any]:
    """Decrypt adapter ``name`` under ``source``'s grants and taint checks (audited there as a use)
    and store it, encrypted, in the throw-away ``target`` vault; returns its lineage in ``source``."""
    from ..finetune.store import read_adapter_bytes, record_use, save_adapter

    data, info = read_adapter_bytes(source, name)
    record_use(source, info)
    save_adapter(
        target,
        name,
        data,
        base_model=info["base_model"],
        base_sha256=info["base_sha256"],
        base_arch=info["base_arch"],
        dataset_sha256=info["dataset_sha256"],
        hyperparameters=info.get("hyperparameters") or {},
        loss_curve=[],
        eval_loss_before=None,
        eval_loss_after=None,
        meta=info.get("meta"),
    )
    return info


def _latency(values: list[float]) -> dict[str, float | None]:
    r = lambda v: None if v is None else round(v, 4)  # noqa: E731
    return {
        "p50": r(percentile(values, 50)),
        "p95": r(percentile(values, 95)),
        "mean": r(sum(values) / len(values)) if values else None,
    }


def evaluate_squad(
    path: str | Path,
    limit: int | None = 100,
    mode: str = "rag",
    *,
    k: int | None = None,
    max_tokens: int = 48,
    model: str | None = None,
    min_score: float | None = None,
    reader: bool = True,
    adapter: str | None = None,
    session: Any = None,
    unanswerable: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Exact match, token F1, answer-contains, retrieval hit rate, the grounding figures of
    :mod:`.grounded` (citation present and correct, support, false refusals, refusal with the gold
    paragraph removed) and latencies on a SQuAD file. ``reader=False`` serves rag with the plain
    model instead of its reader; ``finetune``/``hybrid`` serve ``adapter`` from ``session``'s vault."""
    from ..finetune import raft
    from ..rag import DEFAULT_K, DEFAULT_MIN_SCORE, answer
    from ..vault import create_vault
    from .grounded import score_answer, summarise

    k = DEFAULT_K if k is None else k
    if mode not in MODES:
        raise ParameterError("{mode} must be one of {modes}", "mode", modes=", ".join(MODES))
    if (mode in ADAPTER_MODES) != (adapter is not None):
        if mode in ADAPTER_MODES:
            raise ParameterError("{mode} " + mode + " needs {adapter} NAME", "mode", "adapter")
        raise ParameterError("{adapter} goes with {mode} finetune or hybrid", "adapter", "mode")
    if adapter is not None and session is None:
        raise ParameterError("{adapter} needs your vault: the adapter is read from it", "adapter")
    if limit is not None and limit < 1:
        raise ParameterError("{limit} must be at least 1", "limit")
    if unanswerable < 0:
        raise ParameterError("{unanswerable} must be 0 or more", "unanswerable")
    retrieving = mode in ("rag", "hybrid")
    items, docs = load_squad(path, limit, unanswerable if retrieving else 0)
    floor = DEFAULT_MIN_SCORE if min_score is None else min_score
    if adapter is not None:
        from ..finetune.store import check_adapter_use

        check_adapter_use(session, adapter)  # fail closed before anything is indexed
    work = Path(tempfile.mkdtemp(prefix="offline-eval-qa-"))
    work.chmod(0o700)
    rows: list[dict[str, Any]] = []
    adapter_info = None
    try:
        tmp = create_vault(work / "vault", EVAL_USER, secrets.token_urlsafe(24))
        try:
            if adapter is not None:
                adapter_info = copy_adapter(session, adapter, tmp)
            indexed = {"documents": 0}
            removed = {i.doc for i in items if not i.answers}
            if retrieving:
                indexed = _index(tmp, docs, work, EVAL_COLLECTION)
                if removed:
                    _index(tmp, {n: t for n, t in docs.items() if n not in removed}, work, NOGOLD_COLLECTION)
            for i, item in enumerate(items):
                coll = EVAL_COLLECTION if item.answers else NOGOLD_COLLECTION
                ans = answer(
                    tmp,
                    item.question,
                    collections=[coll] if retrieving else None,
                    k=k,
                    mode=mode,
                    model=model,
                    adapter=adapter,
                    max_tokens=max_tokens,
                    min_score=floor,
                    reader=reader,
                )
                row = score_answer(ans, item.answers)
                row.update(
                    id=item.qid,
                    question=item.question,
                    gold=item.answers,
                    gold_doc_retrieved=(
                        any(h.doc_name == item.doc for h in (ans.hits or []))
                        if retrieving and item.answers
                        else None
                    ),
                )
                rows.append(row)
                if progress is not None:
                    progress(i + 1, len(items))
        finally:
            tmp.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    answerable = [r for r in rows if r["gold"]]
    n = len(answerable)
    mean = lambda key: round(sum(float(r[key]) for r in answerable) / n, 4)  # noqa: E731
    t = lambda key: [r[key] for r in rows if r.get(key) is not None]  # noqa: E731
    g = summarise(rows)
    dec = t("decode_tok_s")
    return {
        "file": str(path),
        "mode": mode,
        "k": k,
        "questions": n,
        "unanswerable_questions": len(rows) - n,
        "max_tokens": max_tokens,
        "min_score": floor,
        "indexed_documents": indexed["documents"],
        "exact_match": mean("em"),
        "f1": mean("f1"),
        "answer_contains": mean("contains"),
        "retrieval_hit_rate": mean("retrieval_hit") if retrieving else None,
        "gold_paragraph_rate": mean("gold_doc_retrieved") if retrieving else None,
        "refused_rate": mean("refused"),
        "reader": reader and mode == "rag",
        "adapter": (
            {"name": adapter, "sha256": adapter_info["sha256"], "recipe": raft.adapter_recipe(adapter_info)}
            if adapter_info
            else None
        ),
        # defined in offline.eval.grounded; refusal_unanswerable: gold paragraph removed
        "grounding": {
            key: g[key]
            for key in (
                "cited",
                "cite_correct",
                "citation_hit",
                "false_refusal",
                "support",
                "refusal_unanswerable",
            )
        }
        if retrieving
        else None,
        "latency_s": {
            "total": _latency(t("total_s")),
            "retrieval": _latency(t("retrieval_s")),
            "ttft": _latency(t("ttft_s")),
            "decode": _latency(t("decode_s")),
        },
        "decode_tok_s_mean": round(sum(dec) / max(1, len(dec)), 2),
        "ingest_s": indexed.get("ingest_s"),
        "per_question": rows,
    }
