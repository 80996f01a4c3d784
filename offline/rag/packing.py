"""Fit retrieved chunks into the model's context window, whole chunks only.

The budget is counted in the model's own tokens on the *rendered* prompt (chat template included):
window - answer reserve - (prompt with no sources). Chunks are taken in rank order; the first one
that no longer fits ends the packing, so a chunk is never cut and lower-ranked chunks are the ones
dropped. A final render of the whole prompt confirms the total (token merges across block
boundaries can differ by a token or two from the per-block sum) and drops from the tail if needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..llm.prompts import SourceBlock, rag_messages

SEPARATOR_TOKENS = 2  # the blank line between blocks


@dataclass
class Packed:
    """What went into the prompt and what did not."""

    blocks: list[SourceBlock]
    messages: list[dict[str, str]]
    prompt_tokens: int
    budget: int
    dropped: list[str] = field(default_factory=list)  # chunk ids left out for lack of room


def pack(
    question: str,
    candidates: Sequence[SourceBlock],
    *,
    n_ctx: int,
    max_tokens: int,
    count: Callable[[list[dict[str, str]]], int],
    count_text: Callable[[str], int],
) -> Packed:
    """Number and pack ``candidates`` (best first) so prompt + ``max_tokens`` fits in ``n_ctx``.

    ``count(messages)`` gives the token length of a rendered chat; ``count_text`` of a bare string.
    """
    base = count(rag_messages(question, []))
    budget = n_ctx - max_tokens - base
    chosen: list[SourceBlock] = []
    used = 0
    dropped: list[str] = []
    for cand in candidates:
        if dropped:  # once one is dropped, every lower-ranked chunk is too
            dropped.append(cand.chunk_id)
            continue
        block = SourceBlock(
            n=len(chosen) + 1,
            chunk_id=cand.chunk_id,
            doc_name=cand.doc_name,
            page=cand.page,
            section=cand.section,
            text=cand.text,
            flags=list(cand.flags),
            meta=cand.meta,
        )
        cost = count_text(block.render()) + SEPARATOR_TOKENS
        if used + cost > budget:
            dropped.append(cand.chunk_id)
            continue
        chosen.append(block)
        used += cost
    while True:
        messages = rag_messages(question, chosen)
        total = count(messages)
        if total + max_tokens <= n_ctx or not chosen:
            break
        dropped.insert(0, chosen.pop().chunk_id)
    return Packed(
        blocks=chosen, messages=messages, prompt_tokens=total, budget=n_ctx - max_tokens, dropped=dropped
    )
