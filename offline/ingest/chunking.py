"""Split segments into chunks measured in the embedding model's own word pieces.

A chunk never crosses a segment (page, heading section, JSONL line), so each keeps the page or
section its citation names. Windows hold ``size`` tokens (the model's limit less [CLS]/[SEP], so
nothing is silently truncated at embedding time) and overlap by ``overlap`` tokens; window edges
are moved to word boundaries so no chunk starts or ends inside a word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .loaders import Segment

DEFAULT_CHUNK_TOKENS = 254
DEFAULT_OVERLAP = 32

# Text that addresses the model rather than the reader. Such chunks are still indexed (they may be
# legitimate content) but flagged, and the answer prompt fences them as data.
_INJECTION = re.compile(
    r"(ignore|disregard|forget)\s+(all\s+|any\s+|the\s+)?(previous|prior|above|earlier)\s+(instructions|prompts?)"
    r"|\byou\s+are\s+now\b|\bsystem\s+prompt\b|<\|?(im_start|system)\|?>",
    re.IGNORECASE,
)


@dataclass
class Chunk:
    text: str
    page: int | None
    section: str | None
    token_count: int
    flags: set[str] = field(default_factory=set)


def chunk_segments(
    segments: list[Segment],
    tokenizer: Any,
    *,
    size: int = DEFAULT_CHUNK_TOKENS,
    overlap: int = DEFAULT_OVERLAP,
) -> list[Chunk]:
    """Token windows over each segment; ``tokenizer`` is a ``tokenizers.Tokenizer`` (no truncation)."""
    if size < 8 or not 0 <= overlap < size // 2:
        raise ValueError("chunk size must be >= 8 tokens and overlap < half of it")
    chunks: list[Chunk] = []
    encodings = tokenizer.encode_batch([s.text for s in segments], add_special_tokens=False)
    for seg, enc in zip(segments, encodings):
        offsets, words = enc.offsets, enc.word_ids
        n = len(offsets)
        if n == 0:
            continue
        start = 0
        while start < n:
            end = min(start + size, n)
            # Back off to a word boundary unless that would shrink the window by more than half.
            while (
                end < n
                and words[end] is not None
                and words[end] == words[end - 1]
                and end - start > size // 2
            ):
                end -= 1
            text = seg.text[offsets[start][0] : offsets[end - 1][1]].strip()
            if text:
                chunks.append(Chunk(text, seg.page, seg.section, end - start, _flags(text) | seg.flags))
            if end >= n:
                break
            nxt = max(end - overlap, start + 1)
            while nxt > start + 1 and words[nxt] is not None and words[nxt] == words[nxt - 1]:
                nxt -= 1
            start = nxt
    return chunks


def _flags(text: str) -> set[str]:
    from ..llm.prompts import injection_flags  # regexes only: the same tests the answer prompt applies

    flags = set()
    found = set(injection_flags(text))
    if _INJECTION.search(text) or found - {"citation_marker"}:
        flags.add("suspect-instructions")
    if "citation_marker" in found:  # "[3]" in a source could pass for the answer's own citations
        flags.add("citation-marker")
    if "\ufffd" in text:
        flags.add("invalid-utf8")
    return flags
