"""Words that carry meaning, the one tokenizer grounding checks and RAFT distractor ranking share.

``content_words`` lower-cases, splits on anything that is not a letter, digit, ``.`` inside a
number or an apostrophe inside a word, drops a short English stop-word list, maps number words
(``eight``) to digits and strips a plural ``s`` so ``years``/``year`` match. Numbers keep their
decimals and lose thousands separators and signs (``+2``, ``2,000`` -> ``2``, ``2000``): the
question "is this number in the source" must not hinge on typography.
"""

from __future__ import annotations

import re

STOP = frozenset(
    """
a an the and or but if then else of to in on at by for with from into onto over under as is are was were be
been being am do does did done have has had having it its this that these those there here which who whom
whose what when where why how all any each every some such no nor not only own same so than too very can
will would shall should may might must could i me my we our you your he him his she her they them their
one s t just also about above after before again against between both during further once other out up
down off more most few per via within without upon while because until through among any's i'm it's
""".split()
)
_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
_NUMBER_WORDS.update({"thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "hundred": "100"})
_TOKEN_RE = re.compile(r"\d[\d,]*(?:\.\d+)?|[^\W\d_]+(?:['’][^\W\d_]+)*", re.UNICODE)


def normalise_number(token: str) -> str:
    """``2,000`` -> ``2000``; ``08`` -> ``8``; ``2.50`` -> ``2.5`` (a number is its value)."""
    t = token.replace(",", "")
    if "." in t:
        t = t.rstrip("0").rstrip(".")
    return t.lstrip("0") or "0"


def _stem(word: str) -> str:
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def tokens(text: str) -> list[str]:
    """Every word and number of ``text``, normalised (stop words kept)."""
    out = []
    for raw in _TOKEN_RE.findall(text or ""):
        if raw[0].isdigit():
            out.append(normalise_number(raw))
            continue
        w = raw.lower().replace("’", "'")
        out.append(_NUMBER_WORDS.get(w, _stem(w)))
    return out


def content_words(text: str) -> list[str]:
    """The tokens of ``text`` that are not stop words, in order (numbers always count)."""
    return [t for t in tokens(text) if t[0].isdigit() or t not in STOP]


# A sentence ends at . ! ? before a space and anything but a lower-case letter, except after a
# title or an abbreviation ("Dr. Ines Moravec", "e.g. X-ray"); a line break always ends one.
_SENT_RE = re.compile(
    r"(?<!\bDr\.)(?<!\bMr\.)(?<!\bMs\.)(?<!\bMrs\.)(?<!\bSt\.)(?<!\bNo\.)(?<!\be\.g\.)"
    r"(?<!\bi\.e\.)(?<!\bvs\.)(?<=[.!?])\s+(?=[^a-z\s])|\n+"
)


def sentences(text: str) -> list[str]:
    """``text`` split into sentences and lines (bullets and table rows are one each), each stripped."""
    return [s.strip() for s in _SENT_RE.split(text or "") if s and s.strip()]
