"""Is an answer grounded in what was retrieved? One lexical method, no model.

Method (``support``). Words are :func:`offline.rag.lexical.content_words`: lower-cased, stop words
dropped, number words as digits, numbers by value, plural ``s`` stripped. An answer sentence's
support against a chunk is the share of its distinct content words that occur in the chunk. Each
sentence is scored against the chunks it cites (its own ``[n]``, else the answer's, else the inferred
citation) and keeps its best score; the answer's support is its *weakest* sentence, because one
invented sentence is enough to mislead. A sentence with no content words (``Yes [1].``) is not scored.

Evidence is local: a chunk is read as windows of three sentences, and only windows that share a
word with the question count (:func:`evidence`). Quote: the sentence of the best window holding
most answer words, printed verbatim under the answer, so the reader sees what the answer rests on.
A wrong ``[n]`` whose sentence another source supports is corrected to that source, and reported.

Unsupported facts. Numbers (doses, dates, durations, amounts) and names (capitalised words not
opening a sentence) of the answer that occur in *no* retrieved chunk, and for names not in the
question either, are listed: "between 20 and 85°C" against a policy that says "+2 °C to +8 °C".

Leaked instructions. A sentence whose content words all come from the system prompt and which
shares a three-word run with it is the prompt talking, not the documents: it is removed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .citations import cited_numbers
from .lexical import STOP, content_words, normalise_number, sentences, tokens

DEFAULT_MIN_SUPPORT = 0.5
_MARK_RE = re.compile(r"\s*\[\s*\d{1,3}(?:\s*[,;]\s*\d{1,3})*\s*\]")
_REFUSAL_RE = re.compile(
    r"\b(?:documents?|sources?|passages?|texts?|context)\s+(?:do|does|did)\s*(?:not|n't)\s+"
    r"(?:say|mention|contain|state|specify|include|provide|tell)"
    r"|\bno (?:relevant )?information\b|\bnot (?:mentioned|stated|specified|given) in\b"
    r"|\b(?:cannot|can't|unable to) (?:find|answer|determine)\b", re.IGNORECASE)
_NUMBER_RE = re.compile(r"\d[\d,]*(?:\.\d+)?")
_NUMBER_WORD_RE = re.compile(r"\b(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|"
                             r"thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen|twenty|thirty|"
                             r"forty|fifty|sixty|hundred)\b", re.IGNORECASE)
_NAME_RE = re.compile(r"\b[A-Z][\w'’-]*[A-Za-z]\b")


@dataclass
class Passage:
    """What grounding needs of a source: its number in the prompt (0: retrieved, not in the prompt)."""

    n: int
    chunk_id: str
    text: str


@dataclass
class Grounding:
    """The checks on one answer (see the module docstring for the method)."""

    answer: str  # the answer with leaked instructions removed
    support: float | None
    sentences: list[dict[str, Any]] = field(default_factory=list)
    quote: dict[str, Any] | None = None
    unsupported: list[str] = field(default_factory=list)
    inferred: int | None = None  # source number attached because the answer cited none
    corrected: list[dict[str, Any]] = field(default_factory=list)  # {"from": [n], "to": m}
    reader_refused: bool = False
    leaked: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"support": self.support, "sentences": self.sentences, "quote": self.quote,
                "unsupported": self.unsupported, "inferred_citation": self.inferred,
                "corrected_citations": self.corrected,
                "reader_refused": self.reader_refused, "leaked_instructions": self.leaked}


def without_marks(text: str) -> str:
    """``text`` with its ``[n]`` markers removed."""
    return _MARK_RE.sub("", text).strip()


def says_documents_do_not_say(text: str) -> bool:
    """Whether the reader declined ("The documents do not say", "no information", ...)."""
    return bool(_REFUSAL_RE.search(text or ""))


def _trigrams(text: str) -> set[tuple[str, ...]]:
    t = tokens(text)
    return {tuple(t[i:i + 3]) for i in range(len(t) - 2)}


def strip_instructions(answer: str, instructions: Sequence[str]) -> tuple[str, bool]:
    """``answer`` without sentences that echo ``instructions``; and whether any were removed."""
    own_words = {w for text in instructions for w in content_words(text)}
    own_grams = set().union(*(_trigrams(t) for t in instructions)) if instructions else set()
    kept, leaked = [], False
    for s in sentences(answer):
        words = set(content_words(without_marks(s)))
        echo = bool(words) and words <= own_words and bool(_trigrams(s) & own_grams)
        if echo or s.rstrip(":").strip().lower() in ("sources", "question", "answer"):
            leaked = True
            continue
        kept.append(s)
    return " ".join(kept), leaked


def evidence(sentence: str, chunk_text: str, question: str = "") -> tuple[float | None, str | None]:
    """(support, quote) of one answer sentence in one chunk.

    The chunk is read as windows of three sentences. A window counts only when it shares a content
    word with the question (other than the answer's own words): an answer "1" is not supported by
    a heading "1. Purpose" of a passage about something else. Support is the best window's share
    of the sentence's content words; the quote is the sentence of that window holding most of them.
    None when the sentence has no content words.
    """
    words = set(content_words(without_marks(sentence)))
    if not words:
        return None, None
    asked = set(content_words(question)) - words
    sents = sentences(chunk_text)
    bags = [set(content_words(x)) for x in sents]
    best, quote = (0.0, 0, 0), None
    for i in range(len(bags)):
        span = range(max(0, i - 1), min(len(bags), i + 2))
        window = set().union(*(bags[j] for j in span))
        if asked and not window & asked:
            continue
        j = max(span, key=lambda j: (len(words & bags[j]), len(bags[j] & asked), -abs(j - i)))
        key = (len(words & window) / len(words), len(words & bags[j]), len(bags[j] & asked))
        if key > best:
            best, quote = key, sents[j]
    return best[0], (quote if best[1] > 0 else None)


def facts(answer: str) -> list[tuple[str, str]]:
    """Numbers and names stated in ``answer`` as (kind, surface text) in reading order, markers excluded."""
    text = without_marks(answer)
    found = [(m.start(), "number", m.group(0).rstrip(",")) for m in _NUMBER_RE.finditer(text)]
    found += [(m.start(), "number", m.group(0)) for m in _NUMBER_WORD_RE.finditer(text)]
    at = 0
    for s in sentences(text):
        at = text.find(s, at)
        for i, m in enumerate(_NAME_RE.finditer(s)):
            word = m.group(0)
            opens = s[: m.start()].strip(" \"'(*-") == ""
            if not (opens and i == 0) and word.lower() not in STOP:
                found.append((at + m.start(), "name", word))
    return list(dict.fromkeys((kind, surface) for _, kind, surface in sorted(found)))


# A number followed by one of these must occur with the same unit: "4 g" is not supported by a "4"
# somewhere else in the passage. (Tokens as lexical.tokens writes them: lower case, plural s off.)
UNITS = frozenset("mg g kg mcg µg ml l mmol iu % percent c f minute min hour hr day week month year "
                  "am pm km mile dose tablet unit time night shift visit".split())


def _unit_after(surface: str, text: str, start: int) -> str | None:
    after = tokens(text[start + len(surface): start + len(surface) + 12].replace("%", " percent "))
    return after[0] if after and after[0] in UNITS else None


def unsupported_facts(answer: str, retrieved: Sequence[str], question: str = "") -> list[str]:
    """The numbers and names of ``answer`` that occur in no retrieved text (names: nor the question).
    A number with a unit ("12 years", "500 mg") must occur with that unit."""
    pool, pairs = set(), set()
    for t in retrieved:
        toks = tokens(t.replace("%", " percent "))
        pool.update(toks)
        pairs.update(zip(toks, toks[1:]))
    asked = set(tokens(question))
    text = without_marks(answer)
    out = []
    for kind, surface in facts(answer):
        toks = tokens(surface)
        if not toks:
            continue
        key = toks[0]
        if kind == "name":
            if key not in pool and key not in asked:
                out.append(surface)
            continue
        unit = _unit_after(surface, text, text.find(surface))
        if key not in pool or (unit is not None and (key, unit) not in pairs):
            out.append(surface)
    return out


def check(answer: str, question: str, passages: Sequence[Passage], retrieved: Sequence[str],
          instructions: Sequence[str] = (), min_support: float = DEFAULT_MIN_SUPPORT) -> Grounding:
    """Run every check on one answer. ``passages``: the sources in the prompt; ``retrieved``: the
    text of every retrieved chunk (for unsupported facts); ``instructions``: the prompt's own text.

    Citations: a sentence is checked against the sources it cites (its own ``[n]``, else the
    answer's). With none, the best-supporting source is attached as an *inferred* citation. When
    the cited source does not reach ``min_support`` but another source in the prompt does, the
    citation is *corrected* to that one (small models often write the wrong number) and the
    correction is reported, never hidden.
    """
    if says_documents_do_not_say(answer):  # before stripping: the refusal's words are the prompt's
        return Grounding(answer=answer, support=None, reader_refused=True)
    clean, leaked = strip_instructions(answer, instructions)
    g = Grounding(answer=clean, support=None, leaked=leaked)
    by_n = {p.n: p for p in passages if p.n}
    cited = [n for n in cited_numbers(clean) if n in by_n]
    scores = []
    for s in sentences(clean):
        if not content_words(without_marks(s)):
            continue  # "Yes [1]." has nothing to check
        own = [n for n in cited_numbers(s) if n in by_n] or cited
        found = {n: evidence(s, p.text, question) for n, p in by_n.items()}
        score, n_best = max(((found[n][0] or 0.0, -n) for n in own), default=(0.0, 0))
        used = [-n_best] if own else []
        alt, n_alt = max(((v[0] or 0.0, -n) for n, v in found.items()), default=(0.0, 0))
        if alt > 0 and (not own or (score < min_support <= alt)):
            if own:
                g.corrected.append({"from": own, "to": -n_alt})
            elif g.inferred is None:
                g.inferred = -n_alt
            score, used = alt, [-n_alt]
        g.sentences.append({"text": s, "support": round(score, 3), "cited": own, "checked_against": used})
        scores.append(score)
        if g.quote is None and used and found[used[0]][1]:
            g.quote = {"n": used[0], "chunk_id": by_n[used[0]].chunk_id, "text": found[used[0]][1]}
    g.support = round(min(scores), 3) if scores else None
    g.unsupported = unsupported_facts(clean, retrieved, question)
    return g
