"""Issue 17: erasure and subject access that find the person everywhere, as a clinic IT lead tries it.

The patient is named in tagged letters, an untagged note (with a name variant), a shared ward list
and CSV rows; the erasure must find all of it, keep every other patient's document, keep erased
data out on re-ingest, and leave nothing for FTS, vectors or a raw page scan to find.
"""

from __future__ import annotations

import json

import pytest
from test_gdpr import _raw_scan

from offline.vault import set_setting

PID, NAME = "PT-00417", "Maria Gonzalez"
NOTE = "Phone call 3 March: GONZALEZ, María rang about her metformin dose; advised to keep 500 mg. qjzmaria1"
# Long enough to span several chunks: her line and his are in different ones.
WARD = (
    "Ward list 4 March.\nBed 1: PT-00417 Maria Gonzalez, diabetes review.\n"
    + "".join(
        f"Bed {n}: PT-{10000 + n} observations stable, fluids and mobilisation as charted, "
        f"review by the consultant on the morning round, family informed of the plan.\n"
        for n in range(2, 30)
    )
    + "Bed 30: PT-00999 John Smith, hip replacement, keepjohn2."
)
OTHER = "Letter about PT-00999 John Smith: hip replacement went well, physiotherapy booked. keepjohn3"


@pytest.fixture
def clinic(admin_session, tmp_path):
    from offline.ingest.pipeline import TextRecord, ingest_records
    from offline.vault.collections import create_collection

    s = admin_session
    create_collection(s, "clinic")
    set_setting(s, "subject_id_pattern", r"PT-?\d{5}") if _has_pattern_setting() else None
    recs = [
        TextRecord(
            "letter-1", "letter-1.txt", f"Dear Dr Lee, I saw {NAME} ({PID}) today. qjzmaria0", "phi", (PID,)
        ),
        TextRecord("note-1", "note-1.txt", NOTE),
        TextRecord("ward", "ward.txt", WARD),
        TextRecord("other", "other.txt", OTHER, "phi", ("PT-00999",)),
    ]
    rep = ingest_records(s, recs, "clinic")
    assert not rep["failed"], rep["failed"]
    return s


def _has_pattern_setting() -> bool:
    from offline.vault import settings

    return "subject_id_pattern" in settings.DEFAULTS


def _texts(s) -> str:
    from offline.vault.collections import open_collection

    conn = open_collection(s, "clinic", "read").conn
    return "\n".join(r[0] for r in conn.execute("SELECT text FROM chunks"))


def test_registry_is_sealed_and_admin_only(admin_session, open_as, cli):
    from offline.errors import AccessDenied, AlreadyExists, UsageError
    from offline.gdpr.registry import add_subject, get_subject, list_subjects, remove_subject

    s = admin_session
    add_subject(s, PID, name=NAME, aliases=["M. Gonzalez"], dob="1961-03-14")
    with pytest.raises(AlreadyExists):
        add_subject(s, PID, name=NAME)
    with pytest.raises(UsageError, match="date of birth"):
        add_subject(s, "PT-1", dob="14/03/1961")
    assert get_subject(s, PID).name == NAME
    # Sealed: neither the id nor the name is in the vault database's rows in clear.
    rows = " ".join(r[0] + r[1] for r in s.db.execute("SELECT ref, sealed FROM subject_registry"))
    assert "Gonzalez" not in rows and PID not in rows
    assert not any("Gonzalez" in json.dumps(e) for e in s.db.execute("SELECT payload FROM audit_log"))
    bob = open_as("bob")
    with pytest.raises(AccessDenied):
        list_subjects(bob)
    assert get_subject(bob, PID) is None  # members search by id and names they are given
    r = cli(["gdpr", "subject", "list"])
    assert r.exit_code == 0 and NAME in r.output
    assert cli(["gdpr", "subject", "add", "X1", "--dob", "banana"]).exit_code == 2
    assert cli(["gdpr", "subject", "list"], user="bob").exit_code == 4
    remove_subject(s, PID)
    assert list_subjects(s) == []


def test_erase_finds_untagged_mentions_keeps_other_patients(clinic, cli, tmp_path):
    from offline.gdpr.erase import erase_subject
    from offline.gdpr.export import collect_subject_data
    from offline.gdpr.registry import add_subject
    from offline.retrieval import search

    s = clinic
    add_subject(s, PID, name=NAME)
    data = collect_subject_data(s, PID)
    found = {d["name"]: d for c in data["collections"] for d in c["documents"]}
    assert set(found) == {"letter-1.txt", "note-1.txt", "ward.txt"}
    assert found["ward.txt"]["whole"] is False or not _has_pattern_setting()
    plan = erase_subject(s, PID, dry_run=True)
    assert plan["totals"]["documents"] + plan["totals"]["documents_in_part"] == 3
    assert "qjzmaria1" in _texts(s)  # dry run erased nothing
    r = cli(["gdpr", "erase", "--subject", PID, "--receipt-dir", str(tmp_path / "r")], input="n\n")
    assert r.exit_code == 1 and "Would erase" in r.output  # the confirmation shows the counts
    receipt = erase_subject(s, PID, receipt_dir=tmp_path / "rc")
    assert receipt["journal_entries"] > 0
    text = _texts(s)
    for marker in ("qjzmaria0", "qjzmaria1", "Gonzalez"):
        assert marker not in text
        assert not [h for h in search(s, marker, collections=["clinic"], k=10).hits if marker in h.text]
    assert "keepjohn3" in text  # the other patient's letter stays
    if _has_pattern_setting():
        assert "keepjohn2" in text  # ... and his line of the shared ward list
    assert not _raw_scan(s, b"aria1")  # the canary scan: no page of the file keeps the note


def test_erased_data_stays_out(clinic, cli, tmp_path):
    from offline.gdpr.erase import erase_subject
    from offline.ingest.pipeline import TextRecord, ingest_records

    s = clinic
    erase_subject(s, PID, names=(NAME,), receipt_dir=tmp_path / "rc")
    # Re-ingesting the note (another path, same text) or a new letter naming her is refused.
    rep = ingest_records(
        s,
        [
            TextRecord("note-copy", "note-copy.txt", NOTE),
            TextRecord("new", "new.txt", "Review for maria gonzalez next week."),
            TextRecord("fine", "fine.txt", "Review for John Smith next week."),
        ],
        "clinic",
    )
    assert {f["path"] for f in rep["failed"]} == {"note-copy", "new"}
    assert all("erased before" in f["reason"] for f in rep["failed"])
    f = tmp_path / "note.txt"
    f.write_text(NOTE)
    r = cli(["ingest", str(f), "-c", "clinic"])
    assert r.exit_code == 1 and "erased before" in r.output
    assert cli(["ingest", str(f), "-c", "clinic", "--allow-erased"]).exit_code == 2
    r = cli(["ingest", str(f), "-c", "clinic", "--allow-erased", "--reason", "court order 12"])
    assert r.exit_code == 0, r.output
    tail = cli(["--json", "audit", "tail", "--severity", "high"])
    assert "gdpr.erased.reingest" in tail.output and "Gonzalez" not in tail.output


def test_backup_from_before_erasure_warns_and_reapplies(clinic, cli, tmp_path, vault_dir):
    from conftest import PASSPHRASES

    from offline.gdpr.erase import erase_subject
    from offline.gdpr.journal import check_journal, missing_erasures
    from offline.gdpr.reapply import reapply
    from offline.vault import open_session
    from offline.vault.maintenance import backup_vault

    s = clinic
    backup = tmp_path / "backup"
    backup_vault(s, backup)
    erase_subject(s, PID, names=(NAME,), receipt_dir=tmp_path / "rc")
    assert check_journal(s) == []
    old = open_session(backup, "alice", PASSPHRASES["alice"])
    try:
        assert len(missing_erasures(old)) == 1
        r = cli(["docs", "list"], env={"OFFLINE_VAULT": str(backup)})
        assert "reapply-erasures" in r.output
        result = reapply(old, receipt_dir=tmp_path / "rc2")
        assert result["reapplied"] and missing_erasures(old) == []
        assert "qjzmaria1" not in _texts(old) and "keepjohn3" in _texts(old)
    finally:
        old.close()
    from offline.doctor.vault_checks import check_erasure_journal
    from offline.gdpr.record import build_record

    assert check_erasure_journal(s).status == "PASS"
    assert build_record(s)["security_measures"]["subjects_and_erasure"]["erasure_journal"]["erasures"] == 1
    # Journal rows deleted with raw tools are caught against the signed receipt (doctor fails).
    s.db.execute("DELETE FROM erasure_journal WHERE kind = 'term'")
    assert check_journal(s)
    assert check_erasure_journal(s).status == "FAIL"


def test_redacting_collection_hides_values_and_export_resolves(admin_session, open_as, cli, tmp_path):
    from offline.gdpr.erase import erase_subject
    from offline.gdpr.export import collect_subject_data
    from offline.gdpr.registry import add_subject
    from offline.retrieval import search
    from offline.vault.collections import grant, open_collection

    s = admin_session
    assert cli(["vault", "set", "subject_id_pattern", "PT-\\d{5}"]).exit_code == 0
    r = cli(["collections", "create", "ward", "--redact", "phi"])
    assert r.exit_code == 0 and "pseudonyms" in r.output
    grant(s, "ward", "bob", "read")
    letter = tmp_path / "letter.txt"
    letter.write_text(f"Dear Dr Lee, I saw {NAME} ({PID}) today. Call 07700 900123. qjzward1")
    (tmp_path / "other.txt").write_text("John Smith (PT-00999) is recovering well. keepjohn4")
    assert cli(["ingest", str(letter), str(tmp_path / "other.txt"), "-c", "ward"]).exit_code == 0
    conn = open_collection(s, "ward", "read").conn
    text = "\n".join(r[0] for r in conn.execute("SELECT text FROM chunks"))
    assert "Gonzalez" not in text and PID not in text and "07700" not in text
    assert "[PATIENT-" in text and "[PERSON-" in text
    bob = open_as("bob")
    hits = search(bob, "Gonzalez", collections=["ward"], k=5).hits
    assert not [h for h in hits if "Gonzalez" in h.text]
    # The same patient gets the same pseudonym in every document of the collection.
    (tmp_path / "again.txt").write_text(f"Follow-up for {PID}: stable.")
    cli(["ingest", str(tmp_path / "again.txt"), "-c", "ward"])
    tokens = [t for (t,) in conn.execute("SELECT token FROM pseudonyms WHERE kind = 'SUBJECT_ID'")]
    assert len([t for t in tokens if tokens.count(t) == 2]) == 2
    # Her export (an admin's) finds her by pseudonym and gives her own data back in clear.
    add_subject(s, PID, name=NAME)
    data = collect_subject_data(s, PID, ["ward"])
    texts = " ".join(c["text"] for col in data["collections"] for d in col["documents"] for c in d["chunks"])
    assert NAME in texts and "keepjohn4" not in texts and "Follow-up" in texts
    erase_subject(s, PID, collections=["ward"], receipt_dir=tmp_path / "rc")
    left = "\n".join(r[0] for r in open_collection(s, "ward", "read").conn.execute("SELECT text FROM chunks"))
    assert "qjzward1" not in left and "keepjohn4" in left
    assert (
        open_collection(s, "ward", "read")
        .conn.execute("SELECT count(*) FROM pseudonyms WHERE kind = 'SUBJECT_ID'")
        .fetchone()[0]
        == 1
    )  # only John's left
    assert cli(["collections", "redact", "ward", "off"], user="bob").exit_code == 4


def test_member_erases_by_names_given_and_planted_registry_rows_fail_closed(clinic, open_as, cli, tmp_path):
    from offline.errors import VaultCorrupted
    from offline.gdpr.erase import erase_subject
    from offline.gdpr.registry import add_subject, list_subjects
    from offline.vault.collections import grant

    s = clinic
    grant(s, "clinic", "bob", "write")
    bob = open_as("bob")
    # Without the registry a member finds the untagged note only by the name given for the request.
    plan = erase_subject(bob, PID, dry_run=True)
    before = plan["totals"]["documents"] + plan["totals"]["documents_in_part"]
    plan = erase_subject(bob, PID, names=(NAME,), dry_run=True)
    assert plan["totals"]["documents"] + plan["totals"]["documents_in_part"] == before + 1
    erase_subject(bob, PID, names=(NAME,), receipt_dir=tmp_path / "rc")
    assert "qjzmaria1" not in _texts(s)
    # A member with raw SQL plants a registry row: the admin's registry refuses to read it (exit 5).
    add_subject(s, "PT-00001", name="Real Person")
    bob.db.execute(
        "INSERT INTO subject_registry(ref, sealed, created_at, created_by) VALUES ('x', 'AAAA', 'now', 'bob')"
    )
    with pytest.raises(VaultCorrupted):
        list_subjects(s)
    assert cli(["gdpr", "subject", "list"]).exit_code == 5
