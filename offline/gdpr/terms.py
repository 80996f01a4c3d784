"""How a person is recognised in text: normalised tokens, the forms of a name, keyed hashes.

One normalisation serves every place that compares a subject with text (the erase/export finder,
identifiers detected at ingest, the erasure journal): NFKD with accents removed, case folded,
split into runs of letters and digits. So ``GONZÁLEZ, María`` and ``Maria Gonzalez`` are the same
two tokens, and ``PT-00417``, ``pt 00417`` and ``PT00417`` are the same identifier.

A *term* is a tuple of tokens. A subject gives several (:func:`subject_terms`): the id (also in
compact form), the name in both orders ("Gonzalez, Maria"), first and last name without the
middle ones, and each alias. Matching allows one initial between name tokens ("Maria J. Gonzalez").

Keyed hashes (:func:`term_hash`) let the vault remember terms without holding them in clear: an
HMAC under the vault's identifier key, which lives only inside the encrypted vault database.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

Term = tuple[str, ...]
_TOKEN = re.compile(r"[^\W_]+")
# Longest term the journal checks at ingest: ids, names and aliases rarely run past 4 tokens.
MAX_TERM_TOKENS = 4
# Name particles kept when a name is split into first/last (never matched alone).
HONORIFICS = frozenset({"mr", "mrs", "ms", "miss", "dr", "prof", "mx", "sir", "dame"})


def fold(text: str) -> str:
    """Accents removed and case folded (``María`` -> ``maria``)."""
    decomposed = unicodedata.normalize("NFKD", str(text))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def tokens(text: str) -> list[str]:
    """Runs of letters and digits of the folded text."""
    return _TOKEN.findall(fold(text))


def token_spans(text: str) -> list[tuple[str, int, int]]:
    """``(token, start, end)`` with offsets into ``text`` (folding keeps one character per character
    for the scripts names are written in; offsets that drift are clamped by the caller)."""
    out = []
    for m in _TOKEN.finditer(str(text)):
        for tok in _TOKEN.findall(fold(m.group(0))):
            out.append((tok, m.start(), m.end()))
    return out


@dataclass(frozen=True)
class SubjectTerms:
    """Everything a subject is known by, as terms: ``ids`` must match exactly, ``names`` loosely."""

    subject: str
    ids: tuple[Term, ...] = ()
    names: tuple[Term, ...] = ()
    labels: tuple[str, ...] = field(default=(), compare=False)  # what each came from, for reports

    @property
    def all(self) -> tuple[Term, ...]:
        return self.ids + self.names


def _id_forms(value: str) -> list[Term]:
    """``PT-00417`` as written, compacted (``pt00417``) and split where letters meet digits
    (``pt 00417``), so each spelling of the id is an FTS phrase of its own."""
    toks = tuple(tokens(value))
    if not toks:
        return []
    compact = "".join(toks)
    split = tuple(re.findall(r"\d+|[^\W\d_]+", compact))
    return list(dict.fromkeys(f for f in (toks, (compact,), split) if f))


def _name_forms(value: str) -> list[Term]:
    toks = [t for t in tokens(value) if t not in HONORIFICS]
    if not toks:
        return []
    forms = [tuple(toks)]
    if len(toks) >= 2:
        forms.append((toks[-1], *toks[:-1]))  # "Gonzalez, Maria"
    if len(toks) >= 3:
        forms += [(toks[0], toks[-1]), (toks[-1], toks[0])]  # middle names left out
    return forms


def subject_terms(subject: str, *, name: str | None = None, aliases: Iterable[str] = ()) -> SubjectTerms:
    """The terms of a subject: its id, its name and each alias (an alias with a digit is an id)."""
    ids: list[Term] = _id_forms(subject)
    names: list[Term] = _name_forms(name) if name else []
    for alias in aliases:
        if any(ch.isdigit() for ch in alias) or "@" in alias:
            ids.extend(_id_forms(alias))  # an old id, an email: matched exactly
        else:
            names.extend(_name_forms(alias))
    return SubjectTerms(
        subject, tuple(dict.fromkeys(ids)), tuple(dict.fromkeys(n for n in names if n not in ids))
    )


def _find_seq(text_toks: list[str], term: Term, *, loose: bool) -> bool:
    n = len(term)
    if n == 0:
        return False
    for i, tok in enumerate(text_toks):
        if tok != term[0]:
            continue
        j, k = i + 1, 1
        while k < n and j < len(text_toks):
            if text_toks[j] == term[k]:
                j, k = j + 1, k + 1
            elif loose and len(text_toks[j]) == 1 and j + 1 < len(text_toks) and text_toks[j + 1] == term[k]:
                j += 1  # one initial between name tokens: "Maria J. Gonzalez"
            else:
                break
        if k == n:
            return True
    return False


def mentions(text: str, terms: SubjectTerms) -> list[Term]:
    """The subject's terms that ``text`` contains (ids exactly, or compacted; names loosely)."""
    toks = tokens(text)
    found = [t for t in terms.ids if _find_seq(toks, t, loose=False)]
    if terms.ids and not found:
        compact = set(toks) | {a + b for a, b in zip(toks, toks[1:])}
        found = [t for t in terms.ids if len(t) == 1 and t[0] in compact]
    found += [t for t in terms.names if _find_seq(toks, t, loose=True)]
    return found


def fts_query(terms: SubjectTerms) -> str:
    """An FTS5 query matching every chunk that may mention the subject (checked afterwards)."""
    parts = []
    for t in terms.ids:
        parts.append('"' + " ".join(t) + '"')
    for t in terms.names:
        if len(t) == 1:
            parts.append(f'"{t[0]}"')
        else:
            parts.append("NEAR(" + " ".join(f'"{x}"' for x in t) + f", {len(t)})")
    return " OR ".join(dict.fromkeys(parts))


def term_hash(key: bytes, term: Term | str) -> str:
    """Keyed hash of a term (tokens joined by one space): 128 bits, hex."""
    text = term if isinstance(term, str) else " ".join(term)
    return hmac.new(key, b"offline/term/v1|" + text.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def window_terms(text: str, longest: int = MAX_TERM_TOKENS) -> Iterator[str]:
    """Every run of 1..``longest`` tokens of ``text``, joined by a space and compacted (for ids)."""
    toks = tokens(text)
    for i in range(len(toks)):
        for n in range(1, longest + 1):
            if i + n > len(toks):
                break
            run = toks[i : i + n]
            yield " ".join(run)
            if n > 1:
                yield "".join(run)


def terms_for_journal(terms: SubjectTerms) -> list[str]:
    """The subject's terms as the journal stores them (joined; short single words left out)."""
    out = []
    for t in terms.all:
        if len(t) > MAX_TERM_TOKENS:
            t = t[:MAX_TERM_TOKENS]
        if len(t) == 1 and not any(ch.isdigit() for ch in t[0]) and len(t[0]) < 4:
            continue  # "Al" alone would refuse every document with the word in it
        out.append(" ".join(t))
    return list(dict.fromkeys(out))
