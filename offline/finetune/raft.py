"""Retrieval-augmented fine-tuning (RAFT, Zhang et al. 2024) examples on the prompt ``ask`` builds.

Each example is the exact chat ``offline ask`` sends (:func:`offline.llm.prompts.rag_messages`:
system rules, ``[n]``-headed fenced sources, question), with the gold chunk at a random position
among retrieved distractors. In a share of examples (``p_absent``, about a quarter) the gold chunk
is left out and the target is the refusal the system prompt asks for. Otherwise the target is the
short answer in the source's own words followed by its ``[n]``. A reader trained this way learns
to answer *from* a passage, to cite it and to say when none holds the answer: the three things the
135M default did not do with retrieval alone (docs/compare.md).

Two sources of examples share :func:`raft_messages`: SQuAD articles (the kit's shipped reader,
``scripts/train_reader.py``) and a user's own questions over their collection, retrieved under
their grants (:func:`collection_examples`, ``offline finetune create --raft``).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidInput, ParameterError
from ..llm import prompts
from ..rag.lexical import content_words
from .data import Dataset, Example

# What SYSTEM_RAG tells the model to say when no source holds the answer; the refusal detector in
# offline.rag.grounding keys on the same words.
REFUSAL = "The documents do not say."
P_ABSENT = 0.25
MAX_SOURCES = 3


@dataclass(frozen=True)
class Passage:
    """A chunk as it would be retrieved: where it is from and its text."""

    chunk_id: str
    doc_name: str
    text: str
    section: str | None = None
    page: int | None = None


def raft_messages(
    question: str,
    answer: str,
    gold: Passage | None,
    distractors: Sequence[Passage],
    rng: random.Random,
    n_sources: int,
) -> list[dict[str, str]]:
    """One training chat: ``n_sources`` passages (gold at a random position unless ``gold`` is None)
    rendered exactly as ``ask`` renders them, then the assistant's target."""
    chosen = list(distractors[: n_sources - (1 if gold else 0)])
    gold_at = None
    if gold is not None:
        gold_at = rng.randrange(len(chosen) + 1)
        chosen.insert(gold_at, gold)
    if not chosen:
        raise InvalidInput("a RAFT example needs at least one passage")
    blocks = [
        prompts.SourceBlock(
            n=i + 1,
            chunk_id=p.chunk_id,
            doc_name=p.doc_name,
            page=p.page,
            section=p.section,
            text=prompts.neutralise(p.text),
        )
        for i, p in enumerate(chosen)
    ]
    target = REFUSAL if gold_at is None else f"{answer.strip()} [{gold_at + 1}]"
    return [
        *prompts.rag_messages(prompts.neutralise(question), blocks),
        {"role": "assistant", "content": target},
    ]


def adapter_recipe(info: dict[str, Any] | None) -> str | None:
    """How an adapter was trained: ``raft`` (on ask's retrieval prompt), else ``closed-book``."""
    if info is None:
        return None
    return "raft" if (info.get("meta") or {}).get("raft") else "closed-book"


def lexical_rank(query: str, passages: Sequence[Passage]) -> list[int]:
    """Indices of ``passages`` by IDF-weighted content-word overlap with ``query``, best first
    (a stand-in for retrieval when building distractors from a corpus with no index)."""
    docs = [set(content_words(p.text)) for p in passages]
    df = Counter(w for d in docs for w in d)
    q = set(content_words(query))
    n = len(docs)
    scores = [sum(math.log(1 + n / df[w]) for w in q & d) for d in docs]
    return sorted(range(n), key=lambda i: (-scores[i], i))


def _pick_sources(rng: random.Random, max_sources: int) -> int:
    return rng.randint(1, max_sources)


def squad_examples(
    articles: list[dict[str, Any]],
    *,
    n: int,
    seed: int,
    p_absent: float = P_ABSENT,
    max_sources: int = MAX_SOURCES,
) -> list[dict[str, Any]]:
    """``n`` RAFT chats from SQuAD ``articles``: paragraphs named as ``scripts/example_compare.py``
    ingests them (``Title-p003.txt``), distractors the most similar other paragraphs of the article."""
    rng = random.Random(seed)
    pool = []
    for art in articles:
        title = art["title"]
        passages = [
            Passage(chunk_id=f"squad/{title}/{i}", doc_name=f"{title}-p{i:03d}.txt", text=p["context"])
            for i, p in enumerate(art["paragraphs"])
        ]
        for i, p in enumerate(art["paragraphs"]):
            for qa in p["qas"]:
                pool.append((passages, i, qa["question"], qa["answers"][0]["text"]))
    rng.shuffle(pool)
    out = []
    for passages, gi, question, ans in pool[:n]:
        ranked = [j for j in lexical_rank(question, passages) if j != gi]
        distractors = [passages[j] for j in ranked[:max_sources]]
        absent = rng.random() < p_absent
        msgs = raft_messages(
            question, ans, None if absent else passages[gi], distractors, rng, _pick_sources(rng, max_sources)
        )
        out.append({"messages": msgs})
    return out


def write_jsonl(rows: list[dict[str, Any]], path: str | Path) -> str:
    """Write ``rows`` as JSONL; return the file's sha256 (recorded in the lineage)."""
    data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode("utf-8")
    Path(path).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def load_qa_pairs(path: str | Path) -> list[tuple[str, list[str]]]:
    """A Q/A file as (question, answers), read by the loader ``compare`` uses too
    (:func:`offline.finetune.data.load_qa_file`); answers empty: unanswerable."""
    from .data import load_qa_file

    qa = load_qa_file(path)
    pairs = [(e.question, list(e.answers)) for e in qa.examples if e.question]
    if not pairs:
        raise InvalidInput(f"{qa.name}: no questions")
    return pairs


def collection_examples(
    session: Any,
    qa_file: str | Path,
    collection: str,
    *,
    k: int = MAX_SOURCES,
    seed: int = 0,
    p_absent: float = P_ABSENT,
) -> Dataset:
    """RAFT chats for the caller's own questions, context retrieved from ``collection`` under their
    grants. The gold chunk is the best-ranked retrieved chunk holding an answer; a question whose
    answer no retrieved chunk holds is skipped (counted in ``meta``). An unanswerable question (no
    answers) becomes a refusal example over what retrieval returns for it. Lineage: every chunk id used."""
    from ..eval.metrics import normalize_answer
    from ..retrieval import search

    if k < 1 or k > 20:
        raise ParameterError("{k} must be between 1 and 20", "k")
    rng = random.Random(seed)
    pairs = load_qa_pairs(qa_file)
    examples, used, skipped, refusals = [], {}, 0, 0
    for question, answers in pairs:
        hits = search(session, question, collections=[collection], k=k + 1, audit=False).hits
        if not answers:  # the user says the documents do not answer it: learn to say so
            if hits:
                shown = [
                    Passage(
                        chunk_id=h.chunk_id,
                        doc_name=h.doc_name or h.source,
                        text=h.text,
                        section=h.section,
                        page=h.page,
                    )
                    for h in hits[:k]
                ]
                examples.append(Example(messages=raft_messages(question, "", None, shown, rng, len(shown))))
                refusals += 1
                for h in hits[:k]:
                    used.setdefault(h.chunk_id, (h.collection, h.doc_id, h.label))
            continue
        golds = [normalize_answer(a) for a in answers if normalize_answer(a)]
        holds = [h for h in hits if any(f" {g} " in f" {normalize_answer(h.text)} " for g in golds)]
        if not holds:
            skipped += 1
            continue
        gold, rest = holds[0], [h for h in hits if h is not holds[0] and h not in holds]
        absent = rng.random() < p_absent
        if absent and not rest:  # nothing to show without the gold: keep it answerable
            absent = False
        as_p = [
            Passage(
                chunk_id=h.chunk_id,
                doc_name=h.doc_name or h.source,
                text=h.text,
                section=h.section,
                page=h.page,
            )
            for h in [gold, *rest]
        ]
        msgs = raft_messages(
            question,
            answers[0],
            None if absent else as_p[0],
            as_p[1:],
            rng,
            min(k, len(as_p) - (1 if absent else 0)) or 1,
        )
        examples.append(Example(messages=msgs))
        for h in [gold, *rest]:
            used.setdefault(h.chunk_id, (h.collection, h.doc_id, h.label))
    if not examples:
        raise InvalidInput(
            f"no retrieved chunk of {collection!r} holds an answer to any question in "
            f"{Path(qa_file).name}; nothing to train on"
        )
    by_coll: dict[str, dict[str, set]] = {}
    for _cid, (coll, doc_id, label) in used.items():
        e = by_coll.setdefault(coll, {"doc_ids": set(), "labels": set()})
        e["doc_ids"].add(doc_id)
        e["labels"].add(label or "")
    from ..vault.collections import open_collection

    sources = [
        {
            "collection": c,
            "collection_id": open_collection(session, c, need="read").id,
            "doc_ids": sorted(v["doc_ids"]),
            "labels": sorted(v["labels"]),
        }
        for c, v in by_coll.items()
    ]
    blob = json.dumps([e.messages for e in examples], ensure_ascii=False, sort_keys=True).encode("utf-8")
    meta = {
        "questions": len(pairs),
        "examples": len(examples),
        "skipped_no_gold": skipped,
        "unanswerable_refusals": refusals,
        "chunk_ids": sorted(used),
        "k": k,
        "p_absent": p_absent,
        "seed": seed,
    }
    return Dataset(examples, hashlib.sha256(blob).hexdigest(), f"raft:{collection}", sources, meta)
