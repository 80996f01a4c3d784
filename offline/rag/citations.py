"""Map the ``[n]`` markers a model wrote back to the chunks it was given."""

from __future__ import annotations

import re
from typing import Any

from ..llm.prompts import SourceBlock
from ..textsafe import one_line

_MARK_RE = re.compile(r"\[\s*(\d{1,3}(?:\s*[,;]\s*\d{1,3})*)\s*\]")


def cited_numbers(text: str) -> list[int]:
    """Every source number cited in ``text`` (``[1]``, ``[1, 3]``, ``[2][4]``), first-seen order."""
    seen: list[int] = []
    for m in _MARK_RE.finditer(text):
        for part in re.split(r"[,;]", m.group(1)):
            n = int(part.strip())
            if n not in seen:
                seen.append(n)
    return seen


def strip_citations(text: str) -> str:
    """``text`` without its ``[n]`` markers, whitespace collapsed: what scoring compares with a gold
    answer."""
    return " ".join(_MARK_RE.sub(" ", text).split())


def map_citations(text: str, blocks: list[SourceBlock]) -> list[dict[str, Any]]:
    """One record per cited number: whether it names a source that was given, and which chunk."""
    by_n = {b.n: b for b in blocks}
    out = []
    for n in cited_numbers(text):
        b = by_n.get(n)
        out.append(
            {
                "n": n,
                "valid": b is not None,
                "chunk_id": b.chunk_id if b else None,
                "doc_name": b.doc_name if b else None,
            }
        )
    return out


def source_list(blocks: list[SourceBlock], cited: set[int] | None = None) -> str:
    """The closing ``Sources:`` list: ``[n] document, page/section (chunk id)``; cited ones starred.

    Each entry is one line whatever the document's name or heading holds (``one_line``).
    """
    lines = ["Sources:"]
    for b in blocks:
        loc = b.locator()
        mark = "*" if cited and b.n in cited else " "
        flag = f"  [flagged: {', '.join(b.flags)}]" if b.flags else ""
        lines.append(
            one_line(f"{mark}[{b.n}] {b.doc_name}{', ' + loc if loc else ''} (chunk {b.chunk_id}){flag}")
        )
    return "\n".join(lines)
