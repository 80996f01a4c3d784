"""Retention that counts right (issue 17): the document's own date, first ingest, 30d/6m/8y, -c."""

from __future__ import annotations

import datetime as _dt
import json

import pytest


def test_periods_parse_and_round_up():
    from offline.errors import UsageError
    from offline.gdpr.retention import parse_period

    assert [parse_period(p) for p in ("30", "30d", "2w", "6m", "8y")] == [30, 30, 14, 183, 2922]
    for bad in ("", "8 years", "-1y", "1.5y", "y", "9999999d"):
        with pytest.raises(UsageError):
            parse_period(bad)


def test_row_dates_first_ingest_and_cli(admin_session, cli, tmp_path):
    from offline.gdpr.retention import apply_retention
    from offline.ingest.pipeline import TextRecord, ingest_records
    from offline.vault.collections import create_collection, open_collection

    s = admin_session
    create_collection(s, "clinic")
    csv_file = tmp_path / "visits.csv"
    csv_file.write_text("patient_id,visited,note\nP1,2010-01-05,old visit\nP2,2024-06-01,new visit\n")
    r = cli(
        ["ingest", str(csv_file), "-c", "clinic", "--subject-field", "patient_id", "--date-field", "visited"]
    )
    assert r.exit_code == 0, r.output
    assert cli(["ingest", str(csv_file), "-c", "clinic", "--date-field", "visited"]).exit_code == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,visited\nP3,yesterday\n")
    r = cli(["ingest", str(bad), "-c", "clinic", "--subject-field", "patient_id", "--date-field", "visited"])
    assert r.exit_code == 1 and "not a date" in r.output
    assert cli(["gdpr", "retention", "set", "-c", "clinic", "--days", "8y"]).exit_code == 0
    shown = json.loads(cli(["--json", "gdpr", "retention", "-c", "clinic"]).output)
    assert shown["collections"] == [{"collection": "clinic", "days": 2922}]
    assert cli(["gdpr", "retention", "-c", "nosuch"]).exit_code == 4
    # The 2010 visit is past 8 years from its own date, though ingested today; the 2024 one is not.
    plan = apply_retention(s, dry_run=True)
    conn = open_collection(s, "clinic", "read").conn
    names = dict(conn.execute("SELECT id, name FROM documents"))
    assert [names[i] for e in plan["expired"] for i in e["doc_ids"]] == ["visits.csv#row-1"]
    # Re-ingesting changed content keeps the first ingest date (the clock is not reset).
    ingest_records(s, [TextRecord("note", "note.txt", "first version")], "clinic")
    first = json.loads(conn.execute("SELECT meta FROM documents WHERE source = 'note'").fetchone()[0])
    conn.execute("UPDATE documents SET ingested_at = '2001-01-01T00:00:00+00:00' WHERE source = 'note'")
    ingest_records(s, [TextRecord("note", "note.txt", "second version")], "clinic")
    meta = json.loads(conn.execute("SELECT meta FROM documents WHERE source = 'note'").fetchone()[0])
    assert meta["first_ingested_at"].startswith("2001-01-01") and "first_ingested_at" not in first
    # In 2012 the note (first ingested 2001) is past 8 years though re-ingested today; the rows are not.
    expired = apply_retention(s, dry_run=True, now=_dt.datetime(2012, 1, 1, tzinfo=_dt.UTC))
    names = dict(conn.execute("SELECT id, name FROM documents"))
    assert [names[i] for e in expired["expired"] for i in e["doc_ids"]] == ["note.txt"]
