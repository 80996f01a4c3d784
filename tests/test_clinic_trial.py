"""The trial of issue 17, as a clinic IT lead runs it on the labelled synthetic clinic set.

One patient in 12 places (tagged and untagged, name variants, old id, e-mail only, CSV and JSON
rows, a shared ward list, a DOCX, a scanned letter). Her erasure must find every place, remove no
other patient's document (another Gonzalez included), leave no trace in any search or decrypted
page, and keep her data out when her CSV or scan is ingested again.
"""

from __future__ import annotations

import shutil

import pytest
from _clinic import ROOT, ingest_clinic, labels, place_name, places_found, survivors
from test_gdpr import _raw_scan

from offline.vault import set_setting

HAVE_OCR = shutil.which("tesseract") is not None


@pytest.fixture
def trial(admin_session):
    from offline.gdpr.registry import add_subject
    from offline.vault.collections import create_collection

    s = admin_session
    create_collection(s, "clinic")
    set_setting(s, "subject_id_pattern", r"\b(?:PT|pt)-?\d{5}\b")
    rep = ingest_clinic(s, "clinic")
    lab = labels()
    if not HAVE_OCR:
        lab["places"] = [p for p in lab["places"] if not p["file"].endswith(".png")]
    assert [f for f in rep["failed"] if HAVE_OCR or not f["path"].endswith(".png")] == []
    sub = lab["subject"]
    add_subject(s, sub["id"], name=sub["name"], aliases=sub["aliases"], dob=sub["dob"])
    return s, lab


def test_export_finds_every_place_and_erase_leaves_no_trace(trial, tmp_path, cli):
    from offline.gdpr.erase import erase_subject
    from offline.gdpr.export import collect_subject_data
    from offline.retrieval import search

    s, lab = trial
    pid = lab["subject"]["id"]
    found = places_found(collect_subject_data(s, pid), lab)
    assert all(found.values()), [k for k, v in found.items() if not v]
    assert len(found) >= 10 or not HAVE_OCR
    # Another patient with her surname is not her.
    export = collect_subject_data(s, pid)
    names = {d["name"] for c in export["collections"] for d in c["documents"]}
    assert "asthma-carlos-gonzalez.txt" not in names and "appointments.csv#row-3" not in names

    plan = erase_subject(s, pid, dry_run=True)
    assert plan["totals"]["documents_in_part"] == 1  # the ward list keeps the other beds
    receipt = erase_subject(s, pid, receipt_dir=tmp_path / "rc")
    assert receipt["coverage"]["complete"]
    left = survivors(s, "clinic", lab)
    assert left == {"subject_markers_left": [], "other_markers_lost": []}
    # No search finds her by id, name variant or alias; no page of the file holds a marker.
    for probe in (pid, "Maria Gonzalez", "González", "RC-88121", "maria.gonzalez@example.org", "mgz09"):
        hits = search(s, probe, collections=["clinic"], k=20).hits
        assert not [h for h in hits if "mgz" in h.text], probe
    for p in lab["places"]:
        assert not _raw_scan(s, p["marker"][1:].encode()), p["marker"]
    # Her id in every spelling, her old hospital number and her e-mail: in no page, text or FTS term
    # (FTS5 prefix-compresses terms, so scan for a tail every stored form contains).
    for needle in (b"0417", b"88121", b"ia.gonzalez"):
        assert not _raw_scan(s, needle), needle
    assert _raw_scan(s, b"eep08")  # positive control: the other Gonzalez is still in the file


def test_reingest_of_her_csv_and_scan_is_refused(trial, tmp_path, cli):
    from offline.gdpr.erase import erase_subject

    s, lab = trial
    erase_subject(s, lab["subject"]["id"], receipt_dir=tmp_path / "rc")
    r = cli(["ingest", str(ROOT / "appointments.csv"), "-c", "clinic", "--subject-field", "patient_id"])
    assert r.exit_code == 1 and r.output.count("erased before") == 2  # her two rows, nobody else's
    if HAVE_OCR:
        r = cli(["ingest", str(ROOT / "scans/referral-scan-0210.png"), "-c", "clinic"])
        assert r.exit_code == 1 and "erased before" in r.output
    # A new letter that names her another way is refused too; one about someone else is not.
    (tmp_path / "new.txt").write_text("Review GONZALEZ, María next week.")
    (tmp_path / "ok.txt").write_text("Review Carlos Gonzalez next week.")
    r = cli(["--json", "ingest", str(tmp_path / "new.txt"), str(tmp_path / "ok.txt"), "-c", "clinic"])
    assert r.exit_code == 1
    import json

    rep = json.loads(r.output.split("\nError:")[0]) if r.output.lstrip().startswith("{") else None
    if rep:
        assert [f["path"].rsplit("/", 1)[-1] for f in rep["failed"]] == ["new.txt"]
    assert place_name(lab["places"][0])
