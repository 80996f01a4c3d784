"""An erasure receipt states what it did not cover, and an incomplete erasure does not exit 0.

The hole: a member who cannot write the collections holding a subject ran ``gdpr erase`` and got
exit 0 with a clean receipt for 0 documents, which a controller would file as "erased". Real
vault, real grants (wrapped keys), real ingest, the real CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SECRET = "secret-ward-7731"  # a collection bob has no grant on: its name must never reach him


def _docs(session, collection: str, *docs: tuple[str, str, str]) -> None:
    from offline.ingest.pipeline import TextRecord, ingest_records
    from offline.vault.collections import create_collection

    create_collection(session, collection)
    report = ingest_records(
        session, [TextRecord(f"/src/{collection}/{n}", n, t, lb, ("p7",)) for n, t, lb in docs], collection
    )
    assert not report["failed"], report


def _count(session, collection: str) -> int:
    from offline.vault.collections import open_collection

    return (
        open_collection(session, collection, "read")
        .conn.execute("SELECT count(*) FROM documents")
        .fetchone()[0]
    )


@pytest.fixture
def vault(admin_session):
    from offline.vault.collections import grant

    s = admin_session
    _docs(s, "clinic", ("visit.txt", "Patient p7 visited with knee pain.", "phi"))
    _docs(s, SECRET, ("ward.txt", "Patient p7 stayed two nights on the secret ward.", "phi"))
    _docs(
        s,
        "notes",
        ("note.txt", "Patient p7 prefers morning appointments.", "notes"),
        ("lab.txt", "Patient p7 blood test results were normal.", "phi"),
    )
    grant(s, "clinic", "bob", "read")
    return s


def test_member_who_can_write_nothing_gets_exit_4_and_nothing_is_erased(vault, cli, tmp_path):
    r = cli(["gdpr", "erase", "--subject", "p7", "--yes", "--receipt-dir", str(tmp_path / "rc")], user="bob")
    assert r.exit_code == 4, r.output
    err = r.stderr.strip()
    assert (
        err.startswith("Error: access denied: you may write none of the 3 collection(s)") and "\n" not in err
    )
    assert SECRET not in r.output
    assert not (tmp_path / "rc").exists() or not list((tmp_path / "rc").iterdir())  # no "clean" receipt
    assert _count(vault, "clinic") == 1 and _count(vault, SECRET) == 1
    denied = vault.db.execute(
        "SELECT payload FROM audit_log WHERE action = 'access.denied' ORDER BY seq DESC"
    ).fetchone()
    assert json.loads(denied[0])["coverage"]["collections_covered"] == 0
    # With --partial the empty run is accepted, and its receipt says it covered nothing.
    r = cli(
        ["--json", "gdpr", "erase", "--subject", "p7", "--partial", "--receipt-dir", str(tmp_path / "rc")],
        user="bob",
    )
    assert r.exit_code == 0, r.output
    cov = json.loads(r.stdout)["coverage"]
    assert cov == {
        "scope": "all",
        "collections_in_vault": 3,
        "collections_covered": 0,
        "not_covered_no_grant": 2,
        "not_covered_read_only": 1,
        "covered_only_for_grant_labels": 0,
        "outside_requested_scope": 0,
        "complete": False,
    }
    assert SECRET not in r.output


def test_partial_coverage_erases_what_it_may_then_exits_1(vault, cli, tmp_path):
    from offline.vault.collections import grant

    grant(vault, "notes", "bob", "write")
    r = cli(["--json", "gdpr", "erase", "--subject", "p7", "--receipt-dir", str(tmp_path / "rc")], user="bob")
    assert r.exit_code == 1, r.output
    err = r.stderr.strip()
    assert (
        err.startswith(
            "Error: erasure incomplete: 2 of 3 collection(s) not covered (1 without a grant, 1 read-only)"
        )
        and "--partial" in err
        and "\n" not in err
    )
    receipt = json.loads(r.stdout)  # the receipt of what was erased is still printed
    assert receipt["totals"]["documents"] == 2 and receipt["coverage"]["complete"] is False
    assert (
        receipt["coverage"]["collections_covered"] == 1 and receipt["coverage"]["not_covered_no_grant"] == 1
    )
    assert SECRET not in r.output and receipt["collections_not_covered"] is None  # members: counts only
    assert _count(vault, "notes") == 0 and _count(vault, SECRET) == 1 and _count(vault, "clinic") == 1
    # The receipt file and the audit entry carry the same coverage, and the receipt verifies.
    on_file = json.loads(Path(receipt["file"]).read_text())["receipt"]
    assert on_file["coverage"] == receipt["coverage"]
    assert cli(["gdpr", "verify-receipt", receipt["file"]], user="bob").exit_code == 0
    # Human text says PARTIAL too (nothing of p7 is left in notes: this run erases 0 documents).
    r = cli(
        ["gdpr", "erase", "--subject", "p7", "--yes", "--partial", "--receipt-dir", str(tmp_path / "rc2")],
        user="bob",
    )
    assert r.exit_code == 0, r.output
    assert "Coverage: PARTIAL: 2 of 3 collection(s) not covered (1 without a grant, 1 read-only)" in r.stdout


def test_label_limited_write_grant_is_partial_coverage(vault, cli, tmp_path):
    from offline.gdpr.erase import ErasureIncomplete, erase_subject
    from offline.vault import open_session
    from offline.vault.collections import grant

    grant(vault, "notes", "bob", "write", ["notes"])
    bob = open_session(vault.vault_dir, "bob", "bob-passphrase-22")
    try:
        with pytest.raises(ErasureIncomplete, match="1 covered only for the labels of your grant") as err:
            erase_subject(bob, "p7", collections=["notes"], receipt_dir=tmp_path / "rc")
        cov = err.value.receipt["coverage"]
        assert cov["scope"] == "requested" and cov["outside_requested_scope"] == 2
        assert cov["covered_only_for_grant_labels"] == 1 and not cov["complete"]
        assert err.value.receipt["totals"]["documents"] == 1  # note.txt; lab.txt (phi) is outside his grant
    finally:
        bob.close()
    assert _count(vault, "notes") == 1


def test_admin_covering_everything_is_complete(vault, cli, tmp_path):
    r = cli(["--json", "gdpr", "erase", "--subject", "p7", "--receipt-dir", str(tmp_path / "rc")])
    assert r.exit_code == 0, r.output
    receipt = json.loads(r.stdout)
    assert receipt["coverage"]["complete"] is True and receipt["coverage"]["collections_covered"] == 3
    assert receipt["totals"]["documents"] == 4
