"""``offline ask`` as a library call: retrieve, pack, prompt, stream, cite, audit.

Modes: ``rag`` (retrieval + the model's retrieval-trained reader, :mod:`offline.llm.reader`;
``reader=False`` serves the plain model), ``base`` (model alone), ``finetune`` (model + LoRA
adapter, no retrieval), ``hybrid`` (adapter + retrieval). Exactly one ``ask`` audit entry is
written per call, also when the answer is a refusal for lack of evidence (then no model is loaded).

With retrieval every answer is checked before anyone sees it (:mod:`.grounding`): an answer that
cites nothing gets the best-supporting source as an *inferred* citation, each sentence is scored
against its cited chunk, the supporting source sentence is quoted, numbers and names found in no
retrieved chunk are listed, and the answer is replaced by a refusal when the reader declined,
support is under ``min_support`` or the answer's number is one the cited sentence gives for
something else than what was asked. Instructions of the prompt that leak into an answer are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import ParameterError, UsageError
from ..limits import check_k
from ..llm import prompts
from ..llm.prompts import SourceBlock
from ..textsafe import check_number, check_text
from . import citations as cit
from . import grounding
from .packing import pack

MODES = ("rag", "base", "finetune", "hybrid")
DEFAULT_K = 3  # measured best with the reader (scripts/eval_reader.py); the CLI mirrors it
DEFAULT_MAX_TOKENS = 256
# Relevance floor on the best hit. Hybrid fused scores are reciprocal-rank sums, which say nothing
# about relevance on their own, so the floor applies to the dense (cosine) similarity when the hit
# carries one, else to the fused score. 0.0 keeps every hit; raise it to refuse more eagerly.
DEFAULT_MIN_SCORE = 0.2
# Cosine similarity lies in [-1, 1]; a floor above 1 refuses everything (allowed, and audited).
MIN_SCORE_RANGE = (-1.0, 10.0)
NO_EVIDENCE = "No relevant passages found in your documents for this question."
# When the reader declines (it was trained to say offline.finetune.raft.REFUSAL) or what it wrote is
# not supported by the passage it cites.
NOT_SAID = "The documents do not say."
# The answer's number is in the cited sentence, but that sentence gives it for something else than
# what was asked (grounding.conflicting_values): a right passage read wrongly.
CONFLICT = "Not answered: the model took a value the source gives for something else."
NOT_SUPPORTED = "The retrieved passages do not support an answer to this question."
DEFAULT_MIN_SUPPORT = grounding.DEFAULT_MIN_SUPPORT
CLOSEST = 3  # passages shown with a refusal


@dataclass
class Answer:
    """The outcome of one question."""

    question: str
    mode: str
    answer: str
    refused: bool
    sources: list[dict[str, Any]]
    citations: list[dict[str, Any]]
    retrieved: list[dict[str, Any]]
    flagged: list[str]
    model: dict[str, Any] | None
    adapter: dict[str, Any] | None
    timings: dict[str, Any]
    dropped: list[str] = field(default_factory=list)
    support: float | None = None
    quote: dict[str, Any] | None = None
    unsupported: list[str] = field(default_factory=list)
    grounding: dict[str, Any] | None = None
    # None, "low_relevance" (retrieval), "reader" (it said the documents do not say), "low_support",
    # "instructions_only" (nothing left once leaked instructions were removed), "conflicting_value"
    # (the answer's number belongs to another item of the cited sentence).
    refusal_reason: str | None = None
    closest: list[dict[str, Any]] = field(default_factory=list)
    reader: dict[str, Any] | None = None
    # What the model wrote, before checks replaced it (evaluation reads it); never printed or audited.
    draft: str | None = field(default=None, repr=False)
    # The exact chat messages sent to the model (benchmarks replay them); never audited or printed.
    prompt: list[dict[str, str]] | None = field(default=None, repr=False)
    # The retrieval hits themselves (evaluation checks their text for gold answers); not serialised.
    hits: list[Any] | None = field(default=None, repr=False)

    @property
    def valid_citations(self) -> list[int]:
        return [c["n"] for c in self.citations if c["valid"]]

    @property
    def invalid_citations(self) -> list[int]:
        return [c["n"] for c in self.citations if not c["valid"]]

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("prompt", "hits", "draft")}
        d["valid_citations"] = self.valid_citations
        d["invalid_citations"] = self.invalid_citations
        return d

    def source_list(self) -> str:
        """The closing ``Sources:`` block (empty when no sources were used)."""
        if not self.sources:
            return ""
        blocks = [
            SourceBlock(
                n=s["n"],
                chunk_id=s["chunk_id"],
                doc_name=s["doc_name"],
                page=s["page"],
                section=s["section"],
                text="",
                flags=s["flags"],
            )
            for s in self.sources
        ]
        return cit.source_list(blocks, set(self.valid_citations))


def best_relevance(hits: Sequence[Any]) -> float | None:
    """The best dense (cosine) similarity among the hits, else the best fused score; None for no hits."""
    if not hits:
        return None
    dense = [float(h.dense_score) for h in hits if getattr(h, "dense_score", None) is not None]
    return max(dense) if dense else max(float(getattr(h, "score", 0.0) or 0.0) for h in hits)


def has_evidence(hits: Sequence[Any], min_score: float) -> bool:
    """Whether retrieval found anything worth answering from."""
    best = best_relevance(hits)
    return best is not None and best >= min_score


def candidate_blocks(hits: Sequence[Any]) -> list[SourceBlock]:
    """Retrieved hits as neutralised, flagged prompt blocks (numbers are assigned by packing).

    The flags cover the document's metadata as well as its text: a file name or heading is
    untrusted input like the passage itself.
    """
    blocks = []
    for h in hits:
        raw = h.text or ""
        flags = list(
            dict.fromkeys(
                [
                    *_as_list(getattr(h, "flags", None)),
                    *prompts.injection_flags(raw),
                    *prompts.metadata_flags(h.doc_name or h.source or h.doc_id, h.section),
                ]
            )
        )
        blocks.append(
            SourceBlock(
                n=0,
                chunk_id=str(h.chunk_id),
                doc_name=str(h.doc_name or h.source or h.doc_id),
                page=h.page,
                section=h.section,
                text=prompts.neutralise(raw),
                flags=flags,
            )
        )
    return blocks


def closest_passages(hits: Sequence[Any], limit: int = CLOSEST, chars: int = 240) -> list[dict[str, Any]]:
    """The best-ranked hits, shown with a refusal so the reader can look for themselves."""
    out = []
    for h in list(hits)[:limit]:
        text = " ".join((h.text or "").split())
        out.append(
            {
                "chunk_id": str(h.chunk_id),
                "doc_name": str(h.doc_name or h.source or h.doc_id),
                "page": h.page,
                "section": h.section,
                "text": text if len(text) <= chars else text[:chars].rsplit(" ", 1)[0] + " ...",
            }
        )
    return out


def _as_list(flags: Any) -> list[str]:
    if not flags:
        return []
    if isinstance(flags, str):
        import json

        try:
            val = json.loads(flags)
        except ValueError:
            return [f for f in flags.replace(";", ",").split(",") if f.strip()]
        return (
            [str(f) for f in val]
            if isinstance(val, list)
            else [str(k) for k in val]
            if isinstance(val, dict)
            else []
        )
    if isinstance(flags, dict):
        return [str(k) for k, v in flags.items() if v]
    return [str(f) for f in flags]


def _audit_question(session: Any, question: str) -> dict[str, Any]:
    from ..vault.core import seal_for_auditors

    policy = session.setting("audit_questions")
    if policy == "full":
        return {"question": question}
    if policy == "none":
        return {}
    return {"question_sealed": seal_for_auditors(session, question)}


def _audit_retrieval(
    session: Any,
    question: str,
    mode: str,
    collections: list[str] | None,
    retrieved: list[dict[str, Any]],
    blocks: list[Any],
    model: Any,
    adapter: Any,
) -> None:
    """Committed before the model sees a passage: an answer never reaches anyone unlogged."""
    session.audit(
        "ask.retrieve",
        mode=mode,
        collections=collections,
        **_audit_question(session, question),
        retrieved=[{"chunk_id": r["chunk_id"], "score": r["score"]} for r in retrieved],
        used=[b.chunk_id for b in blocks],
        model_sha256=model.sha256,
        adapter_sha256=adapter["sha256"] if adapter else None,
    )


@contextlib.contextmanager
def _engine_for(
    session: Any, model: str | None, adapter: str | None, n_ctx: int | None, use_reader: bool = False
) -> Iterator[tuple[Any, Any, dict | None, dict | None]]:
    """Resolve the model (its reader when ``use_reader`` and the manifest pins one), open the
    adapter (decrypted only while llama.cpp loads it), yield (engine, model, adapter, reader)."""
    from ..llm import engine as eng
    from ..llm.resolve import resolve_generate_model

    if adapter is None:
        gm = resolve_generate_model(model)
        rd = None
        if use_reader:
            from ..llm.reader import reader_for

            rd = reader_for(gm)
        if rd is None:
            yield eng.load(gm.path, n_ctx=n_ctx), gm, None, None
        elif rd.lora_path is None:  # merged into the base: served like any model, full decode speed
            yield eng.load(rd.model.path, n_ctx=n_ctx), rd.model, None, rd.info()
        else:
            yield (
                eng.load(
                    gm.path, n_ctx=n_ctx, lora_path=str(rd.lora_path), adapter_sha256=rd.spec.adapter_sha256
                ),
                gm,
                None,
                rd.info(),
            )
        return
    from ..finetune.store import check_adapter_use, open_adapter, record_use

    # Access and taint are checked for every question; the adapter is decrypted only when llama.cpp
    # does not already hold it. Either way the use is audited once.
    info = check_adapter_use(session, adapter)
    # Without --model, serve the adapter on the base it was trained on.
    gm = resolve_generate_model(model or info.get("base_model") or None)
    base = info.get("base_sha256")
    if base and base != gm.sha256:
        raise UsageError.naming(
            "adapter {name} was trained on a different base model (sha256 {base}...); pass "
            "{model} with that base",
            "model",
            name=repr(adapter),
            base=base[:12],
        )
    engine = eng.cached(gm.path, n_ctx=n_ctx, adapter_sha256=info["sha256"])
    if engine is None:
        with open_adapter(session, adapter) as (path, opened):
            engine = eng.load(gm.path, n_ctx=n_ctx, lora_path=str(path), adapter_sha256=opened["sha256"])
    else:
        record_use(session, info)
    yield engine, gm, {"name": adapter, "sha256": info["sha256"]}, None


def answer(
    session: Any,
    question: str,
    *,
    collections: list[str] | None = None,
    k: int = DEFAULT_K,
    mode: str = "rag",
    model: str | None = None,
    adapter: str | None = None,
    on_token: Callable[[str], None] | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    min_score: float = DEFAULT_MIN_SCORE,
    n_ctx: int | None = None,
    labels: list[str] | None = None,
    subjects: list[str] | None = None,
    reader: bool = True,
    min_support: float = DEFAULT_MIN_SUPPORT,
    generate: Callable[..., Any] | None = None,
) -> Answer:
    """Answer ``question`` for the session's user; stream pieces to ``on_token``; audit once.

    ``generate(messages, max_tokens=, on_token=)`` replaces the local engine's generation (the team
    server's ``--generate-backend``): it receives only the final, checked prompt; retrieval, the
    prompt's safety checks, grounding and audit stay here.

    Every argument is checked before anything is retrieved or loaded: a bad value is a
    :class:`UsageError`, never a failure after the answer was streamed.
    """
    question = check_text(question or "", "the question").strip()
    if not question:
        raise UsageError("the question is empty")
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r} (modes: {', '.join(MODES)})")
    if mode in ("finetune", "hybrid") and not adapter:
        raise ParameterError("{mode} {value} needs {adapter} NAME", "mode", "adapter", value=mode)
    if mode in ("rag", "base") and adapter:
        raise ParameterError("{adapter} is used only with {mode} finetune or hybrid", "adapter", "mode")
    check_k(k)
    if max_tokens < 1 or max_tokens > 8192:
        raise ParameterError("{max_tokens} must be between 1 and 8192", "max_tokens")
    min_score = check_number(min_score, "min_score", *MIN_SCORE_RANGE)
    min_support = check_number(min_support, "min_support", 0.0, 1.0)

    t_start = time.perf_counter()
    timings: dict[str, Any] = {}
    hits: list[Any] = []
    retrieving = mode in ("rag", "hybrid")
    searched = list(collections) if collections else None
    if retrieving:
        from ..retrieval import search

        t0 = time.perf_counter()
        result = search(
            session, question, collections=collections, k=k, labels=labels, subjects=subjects, audit=False
        )
        timings["retrieval_s"] = round(time.perf_counter() - t0, 4)
        hits = list(result.hits)
        if searched is None:
            from ..vault.collections import readable_collections

            searched = readable_collections(session)
    retrieved = [
        {
            "chunk_id": str(h.chunk_id),
            "score": round(float(h.score), 6),
            "dense_rank": h.dense_rank,
            "bm25_rank": h.bm25_rank,
            **(
                {"dense_score": round(float(h.dense_score), 6)}
                if getattr(h, "dense_score", None) is not None
                else {}
            ),
        }
        for h in hits
    ]
    # Hits the vector leg scored under the floor are noise the fusion dragged in to fill k: they do
    # not go to the model. (BM25-only hits carry no cosine and stay: they matched the words.)
    usable = [h for h in hits if getattr(h, "dense_score", None) is None or h.dense_score >= min_score]
    candidates = candidate_blocks(usable)
    flagged = [b.chunk_id for b in candidate_blocks(hits) if b.flags]

    if retrieving and not has_evidence(hits, min_score):
        timings["total_s"] = round(time.perf_counter() - t_start, 4)
        ans = Answer(
            question=question,
            mode=mode,
            answer=NO_EVIDENCE,
            refused=True,
            sources=[],
            citations=[],
            retrieved=retrieved,
            flagged=flagged,
            model=None,
            adapter=None,
            timings=timings,
            hits=hits,
            refusal_reason="low_relevance",
            closest=closest_passages(hits),
        )
        _audit(session, ans, searched, min_score, min_support)
        return ans

    t0 = time.perf_counter()
    with _engine_for(session, model, adapter, n_ctx, reader and mode == "rag") as (
        engine,
        gm,
        adapter_info,
        reader_info,
    ):
        pass
    timings["load_s"] = round(time.perf_counter() - t0, 4)

    dropped: list[str] = []
    blocks: list[SourceBlock] = []
    # Everything untrusted that enters the prompt (question, passages, their metadata) loses every
    # special token of *this* model's vocabulary, whatever its spelling; check_prompt confirms it.
    safe_q = engine.defang(prompts.neutralise(question))
    if retrieving:
        for b in candidates:
            text = engine.defang(b.text)
            meta = prompts.source_meta(b.doc_name, b.page, b.section)
            b.meta = engine.defang(meta)
            if (text != b.text or b.meta != meta) and "control_token" not in b.flags:
                b.flags.append("control_token")
            b.text = text
        flagged = list(dict.fromkeys([*flagged, *(b.chunk_id for b in candidates if b.flags)]))
        if engine.prompt_tokens(prompts.rag_messages(safe_q, [])) + max_tokens > engine.n_ctx:
            raise UsageError(f"the question is too long for the model's {engine.n_ctx}-token window")
        packed = pack(
            safe_q,
            candidates,
            n_ctx=engine.n_ctx,
            max_tokens=max_tokens,
            count=engine.prompt_tokens,
            count_text=engine.count,
        )
        messages, blocks, dropped = packed.messages, packed.blocks, packed.dropped
    else:
        messages = prompts.base_messages(safe_q)
        if engine.prompt_tokens(messages) + max_tokens > engine.n_ctx:
            raise UsageError(f"the question is too long for the model's {engine.n_ctx}-token window")
    if retrieving and not blocks:
        raise UsageError.naming(
            "no retrieved passage fits the model's {n_ctx}-token window with {max_tokens} "
            "{value}; lower {max_tokens}",
            "max_tokens",
            n_ctx=engine.n_ctx,
            value=max_tokens,
        )
    engine.check_prompt(messages)  # fail closed: no control token may come from the content

    _audit_retrieval(session, question, mode, searched, retrieved, blocks, gm, adapter_info)
    gen = (generate or engine.stream_chat)(messages, max_tokens=max_tokens, on_token=on_token)
    timings.update(gen.timings())
    timings["total_s"] = round(time.perf_counter() - t_start, 4)
    draft = gen.text.strip()
    hit_by_id = {str(h.chunk_id): h for h in hits}
    sources = [
        {
            "n": b.n,
            "chunk_id": b.chunk_id,
            "doc_name": b.doc_name,
            "page": b.page,
            "section": b.section,
            "score": round(float(hit_by_id[b.chunk_id].score), 6),
            "flags": b.flags,
        }
        for b in blocks
    ]
    ans = Answer(
        question=question,
        mode=mode,
        answer=draft,
        refused=False,
        sources=sources,
        citations=[],
        retrieved=retrieved,
        flagged=flagged,
        model={"name": gm.name, "sha256": gm.sha256, "path": str(Path(gm.path).name)},
        adapter=adapter_info,
        timings=timings,
        dropped=dropped,
        prompt=messages,
        hits=hits,
        reader=reader_info,
        draft=draft,
    )
    if retrieving:
        _ground(ans, blocks, hit_by_id, min_support)
    else:
        ans.answer, _ = grounding.strip_instructions(
            draft, [m["content"] for m in messages if m["role"] == "system"]
        )
    _audit(session, ans, searched, min_score, min_support)
    return ans


def _ground(
    ans: Answer, blocks: Sequence[SourceBlock], hit_by_id: dict[str, Any], min_support: float
) -> None:
    """Check the draft against its sources (module docstring); refuse or annotate ``ans`` in place."""
    passages = [grounding.Passage(b.n, b.chunk_id, hit_by_id[b.chunk_id].text or "") for b in blocks]
    g = grounding.check(
        ans.draft or "",
        ans.question,
        passages,
        [h.text or "" for h in ans.hits or []],
        [prompts.SYSTEM_RAG],
        min_support=min_support,
    )
    ans.grounding, ans.support, ans.quote, ans.unsupported = g.to_dict(), g.support, g.quote, g.unsupported
    if g.reader_refused:
        reason, text = "reader", NOT_SAID
    elif not g.answer.strip():
        reason, text = "instructions_only", NOT_SUPPORTED
    elif g.support is not None and g.support < min_support:
        reason, text = "low_support", NOT_SUPPORTED
    elif g.conflicts:
        reason, text = "conflicting_value", CONFLICT
    else:
        reason, text = None, g.answer
    ans.answer, ans.refusal_reason, ans.refused = text, reason, reason is not None
    if ans.refused:
        ans.closest = closest_passages(ans.hits or [])
        if reason != "conflicting_value":  # there the quote is the sentence the reader misread
            ans.quote = None
        return
    # Citations the checks attached (inferred: the model cited nothing; corrected: the cited source
    # does not hold the sentence, this one does) come first: they are the ones the support rests on.
    by_n = {b.n: b for b in blocks}
    added = ([{"n": g.inferred, "inferred": True}] if g.inferred is not None else []) + [
        {"n": c["to"], "inferred": True, "corrected_from": c["from"]} for c in g.corrected
    ]
    ans.citations = [
        {**a, "valid": True, "chunk_id": by_n[a["n"]].chunk_id, "doc_name": by_n[a["n"]].doc_name}
        for a in added
    ] + cit.map_citations(text, list(blocks))


def _audit(
    session: Any, ans: Answer, collections: list[str] | None, min_score: float, min_support: float
) -> None:
    payload: dict[str, Any] = {
        "user": session.user,
        "mode": ans.mode,
        "collections": collections,
        **_audit_question(session, ans.question),
        "retrieved": [{"chunk_id": r["chunk_id"], "score": r["score"]} for r in ans.retrieved],
        "used": [s["chunk_id"] for s in ans.sources],
        "flagged": ans.flagged,
        "refused": ans.refused,
        "min_score": min_score,
        "model_sha256": ans.model["sha256"] if ans.model else None,
        "adapter": ans.adapter["name"] if ans.adapter else None,
        "adapter_sha256": ans.adapter["sha256"] if ans.adapter else None,
        "answer_sha256": hashlib.sha256(ans.answer.encode("utf-8")).hexdigest(),
        "citations": {
            "valid": ans.valid_citations,
            "invalid": ans.invalid_citations,
            "inferred": [c["n"] for c in ans.citations if c.get("inferred")],
        },
        # Grounding: the score and how many facts no passage holds (not the facts: they are answer text).
        "support": ans.support,
        "min_support": min_support,
        "unsupported_count": len(ans.unsupported),
        "refusal_reason": ans.refusal_reason,
        "reader": ans.reader,
        "timings": ans.timings,
    }
    session.audit("ask", severity="notice" if ans.flagged else "info", **payload)
