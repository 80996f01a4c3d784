"""Per-answer figures of a grounded answer, shared by ``scripts/eval_reader.py``, ``eval qa`` and ``compare``.

Definitions (each a share over the questions it applies to):

- ``em`` / ``contains`` / ``f1``: what the user sees without its ``[n]`` markers (a refusal scores 0),
  SQuAD normalisation.
- ``citation_hit``: a chunk the answer cites (written or inferred) holds a gold answer (refused: no).
- ``cited``: the model's own text holds a valid ``[n]`` (an inferred citation does not count).
- ``cite_correct``: of the answered questions that carry a citation, the chunk the answer finally
  cites (the checks' inferred or corrected citation first, else the model's) holds a gold answer;
  ``own_cite_correct``: the same for the first ``[n]`` the model wrote itself.
- ``refused``: the answer is a refusal (low relevance, the reader declined, or support too low).
  On answerable questions it is a *false* refusal; with the gold passage removed, the goal.
- ``support``: the grounding score of the answer (:mod:`offline.rag.grounding`), answered ones only.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import median
from typing import Any

from ..rag.citations import strip_citations
from .metrics import best_over, contains, exact_match, f1_score, normalize_answer


def holds_gold(text: str, golds: Sequence[str]) -> bool:
    """Whether ``text`` holds one of the gold answers (normalised, on word boundaries)."""
    return any(contains(text, g) for g in golds if normalize_answer(g))


RETRIEVAL_MODES = ("rag", "hybrid")


def score_answer(ans: Any, golds: Sequence[str]) -> dict[str, Any]:
    """The figures of one :class:`offline.rag.Answer` against its gold answers (empty: unanswerable).

    The one scorer of ``offline compare``, ``offline eval qa`` and ``scripts/eval_reader.py``. The
    answer is scored without its ``[n]`` markers; a refusal scores as an empty answer. The grounding
    figures (``cited`` ... ``retrieval_hit``) are None for a mode without retrieval.
    """
    retrieving = ans.mode in RETRIEVAL_MODES
    pred = "" if ans.refused else strip_citations(ans.answer)
    texts = {str(h.chunk_id): h.text or "" for h in (ans.hits or [])}
    valid = [c for c in ans.citations if c["valid"]]  # the checks' own (inferred/corrected) come first
    own = [c for c in valid if not c.get("inferred")]
    g = retrieving or None  # a figure that does not apply stays None
    row: dict[str, Any] = {
        "prediction": pred,
        "refused": bool(ans.refused),
        "refusal_reason": ans.refusal_reason,
        "cited": bool(own) if g else None,
        "has_citation": (bool(valid) and not ans.refused) if g else None,
        "support": ans.support,
        "unsupported": len(ans.unsupported),
        "ttft_s": ans.timings.get("ttft_s"),
        "decode_tok_s": ans.timings.get("decode_tok_s"),
        "tokens": ans.timings.get("tokens"),
        "prompt_tokens": ans.timings.get("prompt_tokens"),
        "total_s": ans.timings.get("total_s"),
        "load_s": ans.timings.get("load_s"),
        "retrieval_s": ans.timings.get("retrieval_s"),
        "decode_s": ans.timings.get("decode_s"),
        "retrieval_hit": any(holds_gold(t, golds) for t in texts.values()) if g and golds else None,
    }
    if golds:
        row["em"] = best_over(exact_match, pred, golds)
        row["f1"] = round(best_over(f1_score, pred, golds), 4)
        row["contains"] = best_over(contains, pred, golds)
        row["draft_contains"] = best_over(contains, ans.draft or "", golds)
        # Any chunk the answer cites (written or inferred) holds a gold answer.
        row["citation_hit"] = (
            any(holds_gold(texts.get(c["chunk_id"], ""), golds) for c in valid)
            if g and not ans.refused
            else (False if g else None)
        )
        row["cite_correct"] = (
            holds_gold(texts.get(valid[0]["chunk_id"], ""), golds) if g and row["has_citation"] else None
        )
        row["own_cite_correct"] = (
            holds_gold(texts.get(own[0]["chunk_id"], ""), golds) if g and own and not ans.refused else None
        )
    return row


def _mean(xs: Sequence[float]) -> float | None:
    return round(sum(xs) / len(xs), 3) if xs else None


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Averages of :func:`score_answer` rows (None where a figure does not apply)."""
    answerable = [r for r in rows if "contains" in r]
    unanswerable = [r for r in rows if "contains" not in r]
    answered = [r for r in answerable if not r["refused"]]
    ttft = [r["ttft_s"] for r in rows if r["ttft_s"] is not None and r["tokens"]]
    dec = [r["decode_tok_s"] for r in rows if r["decode_tok_s"] and (r["tokens"] or 0) >= 4]
    return {
        "n_answerable": len(answerable),
        "n_unanswerable": len(unanswerable),
        "em": _mean([r["em"] for r in answerable]),
        "contains": _mean([r["contains"] for r in answerable]),
        "f1": _mean([r["f1"] for r in answerable]),
        "draft_contains": _mean([r["draft_contains"] for r in answerable]),
        "cited": _mean([float(r["cited"]) for r in answered if r["cited"] is not None]),
        "cite_correct": _mean([float(r["cite_correct"]) for r in answered if r["cite_correct"] is not None]),
        "own_cite_correct": _mean(
            [float(r["own_cite_correct"]) for r in answered if r.get("own_cite_correct") is not None]
        ),
        "false_refusal": _mean([float(r["refused"]) for r in answerable]),
        "refusal_unanswerable": _mean([float(r["refused"]) for r in unanswerable]),
        "citation_hit": _mean(
            [float(r["citation_hit"]) for r in answerable if r.get("citation_hit") is not None]
        ),
        "support": _mean([r["support"] for r in answered if r["support"] is not None]),
        "retrieval_hit": _mean(
            [float(r["retrieval_hit"]) for r in answerable if r["retrieval_hit"] is not None]
        ),
        "ttft_p50_s": round(median(ttft), 4) if ttft else None,
        "decode_tok_s_p50": round(median(dec), 2) if dec else None,
    }
