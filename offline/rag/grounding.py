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

Conflicting values. A number of the answer found in a cited sentence that gives *other* values of the
same kind (currency or unit) is checked against the question: each value owns the words between it
and its neighbours (the words before a sentence's first value are its topic, shared by all, and
question words found there tell no value apart). If another value of that sentence owns more of the
question's words than the answer's does ("£95 per weekday night and £260 per weekend shift", asked
about the weekend shift), the answer took the wrong value from a right passage: support cannot see
that, every word is in the source.

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
    r"|\b(?:cannot|can't|unable to) (?:find|answer|determine)\b",
    re.IGNORECASE,
)
_NUMBER_RE = re.compile(r"\d[\d,]*(?:\.\d+)?")
_NUMBER_WORD_RE = re.compile(
    r"\b(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|"
    r"thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen|twenty|thirty|"
    r"forty|fifty|sixty|hundred)\b",
    re.IGNORECASE,
)
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
    conflicts: list[dict[str, Any]] = field(default_factory=list)  # see conflicting_values
    reader_refused: bool = False
    leaked: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "support": self.support,
            "sentences": self.sentences,
            "quote": self.quote,
            "unsupported": self.unsupported,
            "inferred_citation": self.inferred,
            "corrected_citations": self.corrected,
            "conflicts": self.conflicts,
            "reader_refused": self.reader_refused,
            "leaked_instructions": self.leaked,
        }


def without_marks(text: str) -> str:
    """``text`` with its ``[n]`` markers removed."""
    return _MARK_RE.sub("", text).strip()


def says_documents_do_not_say(text: str) -> bool:
    """Whether the reader declined ("The documents do not say", "no information", ...)."""
    return bool(_REFUSAL_RE.search(text or ""))


def _trigrams(text: str) -> set[tuple[str, ...]]:
    t = tokens(text)
    return {tuple(t[i : i + 3]) for i in range(len(t) - 2)}


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
UNITS = frozenset(
    "mg g kg mcg µg ml l mmol iu % percent c f minute min hour hr day week month year "
    "am pm km mile dose tablet unit time night shift visit".split()
)


def _unit_after(surface: str, text: str, start: int) -> str | None:
    after = tokens(text[start + len(surface) : start + len(surface) + 12].replace("%", " percent "))
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


_VALUE_RE = re.compile(r"([£$€¥])?\s?(\d+(?:,\d{3})*(?:\.\d+)?)")


# Units that answer the same question compete: "2 years" and "30 days" are both "how long".
_FAMILY = {
    u: fam
    for fam, units in {
        "duration": "minute min hour hr day week month year night shift visit",
        "mass": "mg g kg mcg µg",
        "volume": "ml l",
    }.items()
    for u in units.split()
}
_JOIN_RE = re.compile(r",|;|\b(?:and|or|plus|but|while|whereas|then)\b", re.IGNORECASE)


_ROW_RE = re.compile(r"\s*(?:\||[-*•]\s)")


def _unwrap(text: str) -> str:
    """Hard-wrapped prose joined back into its sentences ("rotate every\n35 days"); bullets, table
    rows and headings keep their own lines."""
    return re.sub(r"(?<![.!?:|])[ \t]*\n[ \t]*(?=[a-z0-9(£$€])", " ", text)


def _values(sentence: str) -> list[dict[str, Any]]:
    """The numbers of one sentence in order: surface, value, kind (currency or unit) and ``owns``,
    the words that describe it. The text between two numbers is split at its last joining word
    ("£95 per weekday night | and £260", "Weekday: £95, | weekend: £260"): the part before it
    describes the first number, the part after it the second. The words before the first number
    are the sentence's topic, shared by all, and owned by none, except a label ending in a colon
    right before it ("Fees: weekday: £95")."""
    found = []
    for m in _VALUE_RE.finditer(sentence):
        if m.start(2) > 0 and (sentence[m.start(2) - 1].isalnum() or sentence[m.start(2) - 1] in ":."):
            continue  # part of a word, a time's minutes ("18:30") or a decimal's tail
        unit = _unit_after(m.group(2), sentence, m.start(2))
        surface = m.group(0).strip()
        if unit is not None:
            word = re.match(r"\s*(%|[^\W\d_]+)", sentence[m.end() :])
            surface += (" " if word and word.group(1) != "%" else "") + (word.group(1) if word else "")
        found.append(
            {
                "surface": surface,
                "value": normalise_number(m.group(2)),
                "kind": (m.group(1), _FAMILY.get(unit, unit)),
                "start": m.start(),
                "end": m.end(),
                "owns": set(),
                # "(out of $400 million)": an aside about the value before it, never a rival answer.
                "aside": sentence.count("(", 0, m.start()) > sentence.count(")", 0, m.start()),
            }
        )
    if found:
        lead = sentence[: found[0]["start"]].rstrip()
        if lead.endswith((":", "=", "-", "–")):
            found[0]["owns"] |= set(content_words(re.split(r"[,;:]", lead[:-1])[-1]))
    for i, v in enumerate(found):
        if i + 1 == len(found):
            v["owns"] |= set(content_words(sentence[v["end"] :]))
            continue
        region = sentence[v["end"] : found[i + 1]["start"]]
        cut = list(_JOIN_RE.finditer(region))
        head, tail = (region[: cut[-1].start()], region[cut[-1].end() :]) if cut else (region, "")
        v["owns"] |= set(content_words(head))
        found[i + 1]["owns"] |= set(content_words(tail))
    return found


def _other_row(
    n: int, rows: list[tuple[set[str], list[dict[str, Any]], str]], said: set[str]
) -> list[dict[str, Any]]:
    """The same test across the table rows and list items of one passage: the answer's value stands
    only in rows sharing fewer question words than a row giving another value of its kind ("10 years"
    from the row above "Vaccination records | 30 years"). Prose sentences do not take part: a
    heading sentence ("Within 1 hour of noticing the incident, ...:") shares few words with the
    question its list answers."""
    out = []
    kinds = {
        v["kind"] for _, vals, _ in rows for v in vals if v["value"] in said and v["kind"] != (None, None)
    }
    for kind in kinds:
        own = max(
            len(q) for q, vals, _ in rows if any(v["kind"] == kind and v["value"] in said for v in vals)
        )
        other = [
            (len(q), q, v, sent)
            for q, vals, sent in rows
            for v in vals
            if v["kind"] == kind
            and v["value"] not in said
            and not any(w["kind"] == kind and w["value"] in said for w in vals)
        ]
        if other:
            size, q, v, sent = max(other, key=lambda t: t[0])
            if size > own:
                mine = next(
                    v2 for _, vals, _ in rows for v2 in vals if v2["kind"] == kind and v2["value"] in said
                )
                out.append(
                    {
                        "n": n,
                        "answer": mine["surface"],
                        "source": v["surface"],
                        "for": sorted(q),
                        "sentence": sent,
                    }
                )
    return out


def conflicting_values(answer: str, question: str, passages: Sequence[Passage]) -> list[dict[str, Any]]:
    """Numbers of ``answer`` that a source sentence gives for something else than what was asked,
    with the value that sentence gives for the question (module docstring, "Conflicting values").

    Only values of one kind compete (``£95`` and ``£260``, ``2 hours`` and ``24 hours``, never a
    year and a dose), and only a strict lead in question words counts, so a tie never warns.
    """
    if not content_words(question):
        return []
    said = {normalise_number(t) for kind, t in facts(answer) if kind == "number" and t[0].isdigit()}
    out: list[dict[str, Any]] = []
    for p in passages:
        rows = []  # (sentence's question words, its values): a table row is a sentence
        for sent in sentences(_unwrap(p.text)):
            vals = _values(sent)
            # Question words the sentence's topic already holds ("on-call paid") tell no item apart.
            topic = set(content_words(sent[: vals[0]["start"]])) if vals else set()
            asked = set(content_words(question)) - topic
            if _ROW_RE.match(sent):  # rows of a table or list: items side by side; prose is not
                rows.append((set(content_words(sent)) & set(content_words(question)), vals, sent))
            for v in vals:
                if v["value"] not in said or v["kind"] == (None, None):
                    continue
                rivals = [
                    w for w in vals if w["kind"] == v["kind"] and w["value"] not in said and not w["aside"]
                ]
                best = max(rivals, key=lambda w: len(w["owns"] & asked), default=None)
                if best is not None and len(best["owns"] & asked) > len(v["owns"] & asked):
                    out.append(
                        {
                            "n": p.n,
                            "answer": v["surface"],
                            "source": best["surface"],
                            "for": sorted(best["owns"] & asked),
                            "sentence": sent,
                        }
                    )
        out += _other_row(p.n, rows, said)
    return list({(c["n"], c["answer"], c["source"]): c for c in out}.values())


def check(
    answer: str,
    question: str,
    passages: Sequence[Passage],
    retrieved: Sequence[str],
    instructions: Sequence[str] = (),
    min_support: float = DEFAULT_MIN_SUPPORT,
) -> Grounding:
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
    g.conflicts = conflicting_values(
        clean, question, [by_n[n] for s in g.sentences for n in s["checked_against"]]
    )
    return g
