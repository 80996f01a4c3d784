"""How a subject is recognised in text (offline.gdpr.terms): spellings that must and must not match."""

from __future__ import annotations

import pytest

from offline.gdpr.terms import mentions, subject_terms


@pytest.mark.parametrize("subject", ["PT-00417", "PT00417", "pt 00417"])
@pytest.mark.parametrize("text", ["Seen PT-00417 today", "ref pt00417.", "PT 00417 seen", "(PT-00417)"])
def test_every_spelling_of_the_id(subject, text):
    assert mentions(text, subject_terms(subject))


@pytest.mark.parametrize(
    "text",
    [
        "Maria Gonzalez rang",
        "GONZALEZ, María",
        "María González",
        "Maria J. Gonzalez",
        "Mrs Maria Gonzalez",
        "gonzalez maria",
    ],
)
def test_name_variants(text):
    assert mentions(text, subject_terms("PT-00417", name="Maria Gonzalez"))


@pytest.mark.parametrize(
    "text",
    [
        "Carlos Gonzalez",
        "Maria Smith",
        "PT-004170",
        "APT-00417",
        "PT-00418",
        "Maria said Gonzalez",
        "Gonzalez",
    ],
)
def test_not_her(text):
    assert not mentions(text, subject_terms("PT-00417", name="Maria Gonzalez"))


def test_aliases_old_ids_and_email():
    t = subject_terms(
        "PT-00417", name="Maria Gonzalez", aliases=["RC-88121", "maria.gonzalez@example.org", "Mimi G"]
    )
    assert mentions("old number RC88121", t) and mentions("mail maria.gonzalez@example.org", t)
    assert mentions("Mimi G called", t) and not mentions("maria@example.org", t)
