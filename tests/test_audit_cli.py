"""``offline audit tail|verify|checkpoint|export``: exit codes, exact error lines, role rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from offline.audit import chain


@pytest.fixture
def log(admin_session, open_as):
    bob = open_as("bob")
    for i in range(12):
        (admin_session, bob)[i % 2].audit(
            "search" if i % 3 else "ingest.add", severity="warning" if i == 5 else "info", i=i
        )
    return admin_session


def j(result) -> object:
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_tail_admin_and_filters(log, cli):
    rows = j(cli(["--json", "audit", "tail", "-n", "5"]))
    assert len(rows) == 5 and [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)
    assert rows[-1]["seq"] == chain.head(log.db)[0] - 1  # newest last; the audit.tail entry comes after
    bob_rows = j(cli(["audit", "tail", "--user", "bob", "--json"]))
    assert bob_rows and {r["user"] for r in bob_rows} == {"bob"}
    assert {r["action"] for r in j(cli(["--json", "audit", "tail", "--action", "search", "-n", "100"]))} == {
        "search"
    }
    assert {r["action"] for r in j(cli(["--json", "audit", "tail", "--action", "ingest"]))} == {"ingest.add"}
    sev = j(cli(["--json", "audit", "tail", "--severity", "warning", "-n", "100"]))
    assert sev and all(r["severity"] in ("warning", "high") for r in sev)
    assert j(cli(["--json", "audit", "tail", "--since", "1h"]))
    assert j(cli(["--json", "audit", "tail", "--until", "2000-01-01"])) == []
    text = cli(["audit", "tail", "-n", "3"])
    assert text.exit_code == 0 and text.output.startswith("SEQ")
    assert len(text.output.strip().splitlines()) == 4


def test_tail_member_sees_only_own(log, cli):
    rows = j(cli(["--json", "audit", "tail", "-n", "1000"], user="bob"))
    assert rows and {r["user"] for r in rows} == {"bob"}
    r = cli(["audit", "tail", "--user", "alice"], user="bob")
    assert r.exit_code == 4
    assert r.output == "Error: access denied: members can read only their own audit entries\n"
    # the refusal is on record
    last = list(chain.iter_entries(log.db, "user = 'bob' AND action = 'access.denied'"))
    assert last and last[-1].payload["what"] == "reading another user's audit entries"


def test_tail_auditor_reads_all(log, cli):
    rows = j(cli(["--json", "audit", "tail", "-n", "1000"], user="carol"))
    assert {"alice", "bob"} <= {r["user"] for r in rows}


def test_tail_bad_input(log, cli):
    r = cli(["audit", "tail", "--since", "last tuesday"])
    assert r.exit_code == 2 and r.output.startswith("Error: invalid time 'last tuesday'")
    r = cli(["audit", "tail", "-n", "0"])
    assert r.exit_code == 2 and r.output == "Error: -n must be between 1 and 100000\n"
    assert cli(["audit", "tail", "--severity", "loud"]).exit_code == 2


def test_verify_ok_and_broken(log, cli):
    r = cli(["audit", "verify"])
    assert r.exit_code == 0 and r.output.startswith("audit log OK: ")
    data = j(cli(["audit", "verify", "--json"]))
    assert data["ok"] and data["entries"] >= 15 and data["signers"] == ["alice", "bob", "carol"]
    member = j(cli(["--json", "audit", "verify"], user="bob"))
    assert member["ok"] and "signers" not in member
    log.db.execute("""UPDATE audit_log SET payload = '{"i":999}' WHERE seq = 10""")
    r = cli(["audit", "verify"])
    assert r.exit_code == 5 and r.output == "Error: audit entry 10: content does not match its hash\n"
    r = cli(["--json", "audit", "verify"])
    assert r.exit_code == 5
    out = json.loads(r.stdout)
    assert out == {
        "ok": False,
        "first_bad_seq": 10,
        "error": "audit entry 10: content does not match its hash",
    }


def test_verify_names_deletion(log, cli):
    log.db.execute("DELETE FROM audit_log WHERE seq = 7")
    r = cli(["audit", "verify"], user="carol")
    assert r.exit_code == 5 and r.output == "Error: audit entry 7: missing or out of order (found 8 next)\n"


def test_checkpoint_then_truncate(log, cli, tmp_path: Path):
    cp = tmp_path / "cp.json"
    r = cli(["audit", "checkpoint", "--out", str(cp)], user="carol")
    assert r.exit_code == 0 and r.output.startswith("Checkpoint of ")
    n = json.loads(cp.read_text())["statement"]["entries"]
    assert cli(["audit", "verify", "--checkpoint", str(cp)]).exit_code == 0
    r = cli(["audit", "checkpoint", "--out", str(cp)])
    assert r.exit_code == 1 and r.output == f"Error: {cp} already exists (use --force to replace it)\n"
    log.db.execute("DELETE FROM audit_log WHERE seq > ?", (n - 3,))
    # Every client that saw the lost entries catches the truncation on its next command...
    r = cli(["audit", "verify"])
    assert (
        r.exit_code == 5 and f"Error: audit entry {n - 2}: missing; the audit log was truncated" in r.output
    )
    # ...and a client that never saw them still has the checkpoint, which names what is gone.
    import shutil

    shutil.rmtree(log.vault_dir / "clients")
    from offline import config

    shutil.rmtree(config.home() / "seen")
    assert cli(["audit", "verify"]).exit_code == 0  # appends entry n-2
    r = cli(["audit", "verify", "--checkpoint", str(cp)])
    assert r.exit_code == 5
    assert r.output == (
        f"Error: audit entry {n - 1}: missing; the log was truncated "
        f"(checkpoint has {n} entries, the log only {n - 2})\n"
    )


def test_checkpoint_and_export_denied_for_members(log, cli, tmp_path: Path):
    r = cli(["audit", "checkpoint", "--out", str(tmp_path / "c.json")], user="bob")
    assert (
        r.exit_code == 4
        and r.output == "Error: access denied: writing an audit checkpoint needs role admin or auditor\n"
    )
    r = cli(["audit", "export", "--format", "csv", "--out", str(tmp_path / "e.csv")], user="bob")
    assert (
        r.exit_code == 4
        and r.output == "Error: access denied: exporting the audit log needs role admin or auditor\n"
    )
    assert not list(tmp_path.glob("c.json*")) and not list(tmp_path.glob("e.csv*"))


def test_export_cli(log, cli, tmp_path: Path):
    out = tmp_path / "q.cef"
    r = cli(
        ["audit", "export", "--format", "cef", "--out", str(out), "--user", "bob", "--action", "search"],
        user="carol",
    )
    assert r.exit_code == 0 and r.output.startswith("Exported ")
    manifest = json.loads(Path(str(out) + ".manifest").read_text())
    assert (
        manifest["filters"] == {"user": "bob", "action": "search"} and manifest["exporter"]["user"] == "carol"
    )
    assert all("suser=bob" in line for line in out.read_text().split("\n")[:-1])
    data = j(cli(["--json", "audit", "export", "--format", "jsonl", "--out", str(tmp_path / "all.jsonl")]))
    assert data["count"] == data["head_seq"] and data["paths"]["pub"].endswith("all.jsonl.pub.pem")
    r = cli(["audit", "export", "--format", "xml", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2
    r = cli(["audit", "export", "--format", "csv", "--out", str(tmp_path / "missing" / "x.csv")])
    assert r.exit_code == 2 and r.output == f"Error: folder does not exist: {tmp_path / 'missing'}\n"


def test_tampered_checkpoint_file_cli(log, cli, tmp_path: Path):
    cp = tmp_path / "cp.json"
    assert cli(["audit", "checkpoint", "--out", str(cp)]).exit_code == 0
    doc = json.loads(cp.read_text())
    doc["statement"]["entries"] = 3
    cp.write_text(json.dumps(doc))
    r = cli(["audit", "verify", "--checkpoint", str(cp)])
    assert (
        r.exit_code == 5
        and r.output == "Error: checkpoint cp.json: signature does not verify (the file was altered)\n"
    )
    (tmp_path / "junk.json").write_text("not json")
    r = cli(["audit", "verify", "--checkpoint", str(tmp_path / "junk.json")])
    assert r.exit_code == 1 and r.output == "Error: junk.json is not an offline audit checkpoint\n"
