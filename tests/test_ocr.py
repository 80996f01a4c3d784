"""OCR of scanned pages (issue 17): Tesseract on rendered-then-rasterised pages, flags and confidence."""

from __future__ import annotations

import shutil

import pytest
from _docfactory import render_page, scanned_pdf

from offline.eval.metrics import char_accuracy

pytestmark = pytest.mark.skipif(
    shutil.which("tesseract") is None, reason="Tesseract (Debian tesseract-ocr) absent"
)

LETTER = [
    "Riverside Clinic, 12 Mill Lane, Leeds",
    "Dear Dr Lee,",
    "Re: Maria Gonzalez, PT-00417, DOB 14/03/1961",
    "I reviewed Mrs Gonzalez in clinic today. Her blood pressure was 132/84.",
    "Plan: continue current treatment, repeat bloods in three months.",
    "Yours sincerely, Dr Aisha Patel",
]


def test_png_and_scanned_pdf_are_read_with_flags(admin_session, tmp_path, cli):
    from offline.vault.collections import create_collection

    create_collection(admin_session, "clinic")
    render_page(LETTER).save(tmp_path / "letter.png")
    (tmp_path / "scan.pdf").write_bytes(scanned_pdf([render_page(LETTER), render_page(["", ""], noise=120)]))
    r = cli(["--json", "ingest", str(tmp_path / "letter.png"), str(tmp_path / "scan.pdf"), "-c", "clinic"])
    assert r.exit_code == 0, r.output
    import json

    rep = json.loads(r.output)
    assert len(rep["added"]) == 2
    shown = json.loads(cli(["--json", "docs", "show", "letter.png", "-c", "clinic"]).output)
    flags = shown["chunk_list"][0]["flags"]
    assert "ocr" in flags and any(f.startswith("ocr-confidence:") for f in flags)
    assert shown["meta"]["ocr"]["confidence"]["1"] > 0.85
    assert "Maria Gonzalez" in json.dumps(shown)
    found = cli(["--json", "search", "PT-00417", "-c", "clinic", "--mode", "bm25"])
    assert {h["citation"].split(",")[0] for h in json.loads(found.output)["hits"]} >= {
        "letter.png",
        "scan.pdf",
    } or len(json.loads(found.output)["hits"]) >= 2


def test_ocr_character_accuracy_on_clean_page():
    from offline.ingest.ocr import ocr_image

    got = ocr_image(render_page(LETTER))
    assert char_accuracy("\n".join(LETTER), got.text) >= 0.97
    assert got.confidence > 0.85
