"""Audit exports round-trip and verify with stock tools, exactly as docs/audit-review.md tells a reviewer."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from offline.audit import chain, formats
from offline.audit.export import export_log, export_paths
from offline.errors import AccessDenied, AlreadyExists, AuditChainBroken, UsageError

DOC = REPO / "docs" / "audit-review.md"
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")

NASTY = [
    "pipe | pipe || end|",
    "equals = a=b ==",
    "back\\slash \\\\ \\n \\| \\= \\]",
    "new\nline\r\ncrlf\rcr",
    "double \"quotes\" and 'single'",
    "close ] bracket ]] and [open",
    "unicode: café ☕ 日本語 🚀 Ωμέγα",
    "line sep \u2028 para \u2029 nel \u0085",
    "tab\there\x00nul\x1bescape",
    "CEF:0|fake|header|1|2|3|4|k=v",
    '<13>1 - - - - [x@1 a="b"] fake syslog',
    " leading and trailing spaces ",
    "key=value suser=mallory act=x",
]
ODD_ACTIONS = ["odd|action\\name=x", 'with space ]"', "ünïcode.action"]


@pytest.fixture
def populated(admin_session, open_as):
    """alice's session over a log with nasty payloads and odd action names from three users."""
    bob, carol = open_as("bob"), open_as("carol")
    for i, text in enumerate(NASTY):
        s = (admin_session, bob, carol)[i % 3]
        s.audit(
            "search", severity=chain.SEVERITIES[i % 4], question=text, nested={'k=|]\\"': [text, i, 0.125]}
        )
    for action in ODD_ACTIONS:
        admin_session.audit(action, severity="notice", note=action)
    return admin_session


@pytest.fixture
def exp(tmp_path: Path) -> Path:
    """An empty folder for exports (the vault lives beside it in tmp_path)."""
    d = tmp_path / "exports"
    d.mkdir()
    return d


def entries_of(session) -> dict[int, dict]:
    return {e.seq: e.to_dict() for e in chain.iter_entries(session.db)}


def rehash(rec: dict) -> str:
    body = {k: rec[k] for k in ("seq", "ts", "user", "action", "severity", "payload")}
    return chain.entry_hash(rec["prev_hash"], body)


# -- small independent parsers, written from the specs ----------------------------------------


def parse_cef(line: str) -> tuple[list[str], dict[str, str]]:
    """ArcSight CEF: 7 header fields split on unescaped pipes, then key=value extension."""
    header_unescape = {"\\": "\\", "|": "|", "n": "\n", "r": "\r"}
    fields, buf, i = [], "", 0
    while len(fields) < 7:
        c = line[i]
        if c == "\\":
            buf += header_unescape[line[i + 1]]
            i += 2
        elif c == "|":
            fields.append(buf)
            buf, i = "", i + 1
        else:
            buf += c
            i += 1
    ext = line[i:]
    # unescaped '=' delimit keys; a key is the word right before one
    eq = []
    j = 0
    while j < len(ext):
        if ext[j] == "\\":
            j += 2
            continue
        if ext[j] == "=":
            eq.append(j)
        j += 1
    value_unescape = {"\\": "\\", "=": "=", "n": "\n", "r": "\r"}
    out: dict[str, str] = {}
    starts = [ext.rfind(" ", 0, p) + 1 for p in eq]
    for n, p in enumerate(eq):
        key = ext[starts[n] : p]
        raw = ext[p + 1 : starts[n + 1] - 1] if n + 1 < len(eq) else ext[p + 1 :]
        val, k = "", 0
        while k < len(raw):
            if raw[k] == "\\":
                val += value_unescape[raw[k + 1]]
                k += 2
            else:
                val += raw[k]
                k += 1
        out[key] = val
    return fields, out


SYSLOG_HEAD = re.compile(r"^<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) ")


def parse_syslog(line: str) -> tuple[dict[str, str], str, dict[str, str]]:
    """RFC 5424 with one SD-ELEMENT; PARAM-VALUE escapes \\" \\\\ \\]."""
    m = SYSLOG_HEAD.match(line)
    assert m, line
    head = dict(zip(["pri", "timestamp", "hostname", "app", "procid", "msgid"], m.groups()))
    i = m.end()
    assert line[i] == "["
    j = line.index(" ", i)
    sd_id = line[i + 1 : j]
    params: dict[str, str] = {}
    i = j
    while line[i] != "]":
        assert line[i] == " "
        eq = line.index("=", i)
        name = line[i + 1 : eq]
        assert line[eq + 1] == '"'
        k, val = eq + 2, ""
        while line[k] != '"':
            if line[k] == "\\" and line[k + 1] in '"\\]':
                val += line[k + 1]
                k += 2
            else:
                assert line[k] not in '"]', "unescaped special character in PARAM-VALUE"
                val += line[k]
                k += 1
        params[name] = val
        i = k + 1
    msg = line[i + 2 :]
    assert line[i + 1] == " " and msg.startswith(formats.BOM)
    return {**head, "sd_id": sd_id}, msg[1:], params


# -- round trips ------------------------------------------------------------------------------


def test_jsonl_round_trip_and_reverify(populated, exp: Path):
    out = exp / "audit.jsonl"
    man = export_log(populated, "jsonl", out)
    truth = entries_of(populated)
    lines = out.read_bytes().split(b"\n")
    assert lines[-1] == b""
    recs = [json.loads(line) for line in lines[:-1]]
    assert len(recs) == man["count"] == man["head_seq"] == len(truth) - 1  # minus the audit.export entry
    for rec in recs:
        assert rec == truth[rec["seq"]]
        assert rehash(rec) == rec["hash"]
    # the records alone re-verify as a chain (same code path as the vault)
    report = chain.verify_entries(chain.Entry(**r) for r in recs)
    assert report.head_hash == man["head_hash"] == man["last_entry_hash"]
    assert any("\u2028" in json.dumps(r["payload"], ensure_ascii=False) for r in recs)


def test_csv_round_trip(populated, exp: Path):
    out = exp / "audit.csv"
    export_log(populated, "csv", out)
    truth = entries_of(populated)
    raw = out.read_bytes()
    assert raw.startswith(b"seq,ts,user,action,severity,payload,prev_hash,hash,sig\r\n")
    rows = list(csv.DictReader(out.open(encoding="utf-8", newline="")))
    assert len(rows) == len(truth) - 1
    for r in rows:
        rec = {**r, "seq": int(r["seq"]), "payload": json.loads(r["payload"])}
        assert rec == truth[rec["seq"]]
        assert not r["payload"].startswith(("=", "+", "-", "@"))  # no spreadsheet formulas


def test_cef_round_trip(populated, exp: Path):
    out = exp / "audit.cef"
    export_log(populated, "cef", out)
    truth = entries_of(populated)
    lines = out.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""
    assert len(lines) - 1 == len(truth) - 1
    seen_odd = set()
    for line in lines[:-1]:
        header, ext = parse_cef(line)
        assert header[:4] == ["CEF:0", "offline", "offline-audit", header[3]]
        seq = int(ext["externalId"])
        e = truth[seq]
        assert header[4] == header[5] == ext["act"] == e["action"]
        assert int(header[6]) == formats.CEF_SEVERITY[e["severity"]]
        labels = {ext[f"cs{n}Label"]: ext[f"cs{n}"] for n in range(1, 7)}
        rec = {
            "seq": seq,
            "ts": labels["ts"],
            "user": ext["suser"],
            "action": ext["act"],
            "severity": e["severity"],
            "payload": json.loads(labels["payload"]),
            "prev_hash": labels["prev_hash"],
            "hash": labels["hash"],
            "sig": labels["sig"],
        }
        assert rec == e
        assert rehash(rec) == rec["hash"]
        assert labels["vault_id"] == populated.vault_id
        assert (
            abs(int(ext["rt"]) / 1000 - __import__("datetime").datetime.fromisoformat(e["ts"]).timestamp())
            < 0.002
        )
        seen_odd |= {e["action"]} & set(ODD_ACTIONS)
    assert seen_odd == set(ODD_ACTIONS)


def test_syslog_round_trip(populated, exp: Path):
    out = exp / "audit.syslog"
    export_log(populated, "syslog", out)
    truth = entries_of(populated)
    data = out.read_bytes()
    data.decode("utf-8")  # strict UTF-8
    lines = data.decode().split("\n")
    assert len(lines) - 1 == len(truth) - 1
    for line in lines[:-1]:
        head, msg, p = parse_syslog(line)
        e = truth[int(p["seq"])]
        assert int(head["pri"]) == 13 * 8 + formats.SYSLOG_SEVERITY[e["severity"]]
        assert head["timestamp"] == e["ts"].replace("+00:00", "Z")
        assert head["app"] == "offline" and head["sd_id"] == "audit@32473" and len(head["msgid"]) <= 32
        assert head["msgid"] in (e["action"], "-")
        rec = {
            "seq": int(p["seq"]),
            "ts": p["ts"],
            "user": p["user"],
            "action": p["action"],
            "severity": p["severity"],
            "payload": json.loads(p["payload"]),
            "prev_hash": p["prev_hash"],
            "hash": p["hash"],
            "sig": p["sig"],
        }
        assert rec == e
        assert msg == f"{e['user']} {e['action']} seq={e['seq']}"
        assert p["vault"] == populated.vault_id


def test_escapers_directly():
    assert formats.cef_header_escape("a|b\\c") == "a\\|b\\\\c"
    assert formats.cef_value_escape("a=b\\c\nd\re|f") == "a\\=b\\\\c\\nd\\re|f"
    assert formats.sd_escape('a"b\\c]d') == 'a\\"b\\\\c\\]d'
    _, ext = parse_cef("CEF:0|v|p|1|a|n|3|k1=" + formats.cef_value_escape("x = y \\ z\nw") + " k2=plain")
    assert ext == {"k1": "x = y \\ z\nw", "k2": "plain"}


# -- the manifest, the signature and the reviewer's own steps --------------------------------


def _doc_python() -> str:
    m = re.search(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    assert m, "docs/audit-review.md lost its verification script"
    return m.group(1)


def _doc_command(prefix: str) -> str:
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith(prefix):
            return line.split("#")[0].strip()
    raise AssertionError(f"no `{prefix}` line in {DOC}")


def run_doc_openssl(out: Path) -> subprocess.CompletedProcess:
    """The reviewer's openssl command from the docs, with the example file name replaced."""
    cmd = _doc_command("openssl pkeyutl -verify").replace("audit.jsonl", out.name)
    return subprocess.run(["bash", "-c", cmd], cwd=out.parent, capture_output=True, text=True, check=False)


def run_doc_script(out: Path, exp: Path, env: dict | None = None, *extra: str) -> subprocess.CompletedProcess:
    script = exp / "verify_audit_export.py"
    script.write_text(_doc_python(), encoding="utf-8")
    import os

    return subprocess.run(
        [sys.executable, str(script), str(out), *extra],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_reviewer_compares_the_recorded_fingerprint(populated, exp: Path):
    out = exp / "audit.jsonl"
    export_log(populated, "jsonl", out)
    recorded = populated.fingerprint  # what `offline init` printed
    ok = run_doc_script(out, exp, None, recorded)
    assert ok.returncode == 0 and recorded in ok.stdout, ok.stdout + ok.stderr
    other = "0000 1111 2222 3333 4444 5555 6666 7777"
    bad = run_doc_script(out, exp, None, other)
    assert bad.returncode != 0 and "not the vault whose fingerprint you recorded" in bad.stderr
    cmd = next(
        line
        for line in DOC.read_text(encoding="utf-8").splitlines()
        if line.startswith("python3 -c 'import hashlib")
    )
    r = subprocess.run(
        ["bash", "-c", cmd.replace("audit.jsonl", out.name)], cwd=exp, capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stdout.strip() == f"{recorded} OK", r.stdout + r.stderr


def test_manifest_contents(populated, exp: Path):
    out = exp / "audit.jsonl"
    result = export_log(populated, "jsonl", out)
    paths = export_paths(out)
    assert {p.name for p in exp.iterdir()} == {
        "audit.jsonl",
        "audit.jsonl.manifest",
        "audit.jsonl.manifest.sig",
        "audit.jsonl.pub.pem",
    }
    manifest_bytes = paths["manifest"].read_bytes()
    m = json.loads(manifest_bytes)
    assert m["vault_id"] == populated.vault_id and m["format"] == "jsonl"
    assert m["file_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert m["file_bytes"] == out.stat().st_size
    assert (m["first_seq"], m["count"]) == (1, m["last_seq"])
    assert m["exporter"]["user"] == "alice" and m["created"]
    assert set(m["signers"]) == {"alice", "bob", "carol"}
    sig = paths["sig"].read_bytes()
    assert len(sig) == 64
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    pub = load_pem_public_key(paths["pub"].read_bytes())
    pub.verify(sig, manifest_bytes)
    assert pub.public_bytes_raw().hex() == populated.setting("audit_public_key") == m["audit_public_key"]
    assert result["file_sha256"] == m["file_sha256"]
    # exporting is itself audited, pinning the manifest
    last = next(iter(chain.iter_entries(populated.db, descending=True, limit=1)))
    assert last.action == "audit.export" and last.payload["file_sha256"] == m["file_sha256"]
    assert last.payload["manifest_sha256"] == hashlib.sha256(manifest_bytes).hexdigest()
    assert last.seq == m["head_seq"] + 1


@needs_openssl
@pytest.mark.parametrize("fmt", formats.FORMATS)
def test_reviewer_openssl_and_sha256sum(populated, exp: Path, fmt: str):
    out = exp / f"audit.{fmt}"
    export_log(populated, fmt, out)
    r = run_doc_openssl(out)
    assert r.returncode == 0 and "Signature Verified Successfully" in r.stdout, r.stdout + r.stderr
    sha = subprocess.run(
        ["bash", "-c", _doc_command("sha256sum audit.jsonl").replace("audit.jsonl", out.name)],
        cwd=exp,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()[0]
    assert sha == json.loads(export_paths(out)["manifest"].read_text())["file_sha256"]
    fp = subprocess.run(
        ["bash", "-c", _doc_command("openssl pkey -pubin").replace("audit.jsonl", out.name)],
        cwd=exp,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()[0]
    assert "sha256:" + fp == json.loads(export_paths(out)["manifest"].read_text())["audit_key_fingerprint"]


@needs_openssl
def test_openssl_rejects_tampered_manifest_and_signature(populated, exp: Path):
    out = exp / "audit.cef"
    export_log(populated, "cef", out)
    paths = export_paths(out)
    good_manifest, good_sig = paths["manifest"].read_bytes(), paths["sig"].read_bytes()
    # a forger edits the file and updates the manifest's hash to match
    out.write_bytes(out.read_bytes().replace(b"suser=bob", b"suser=eve", 1))
    m = json.loads(good_manifest)
    m["file_sha256"] = hashlib.sha256(out.read_bytes()).hexdigest()
    paths["manifest"].write_text(json.dumps(m, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    r = run_doc_openssl(out)
    assert r.returncode != 0 and "Signature Verification Failure" in r.stdout + r.stderr
    # a one-byte change to the signature
    paths["manifest"].write_bytes(good_manifest)
    paths["sig"].write_bytes(bytes([good_sig[0] ^ 1]) + good_sig[1:])
    assert run_doc_openssl(out).returncode != 0
    # another key entirely
    paths["sig"].write_bytes(good_sig)
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(exp / "k.pem")], check=True)
    subprocess.run(
        ["openssl", "pkey", "-in", str(exp / "k.pem"), "-pubout", "-out", str(paths["pub"])], check=True
    )
    assert run_doc_openssl(out).returncode != 0


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_doc_script_reverifies_export(populated, exp: Path, fmt: str):
    out = exp / f"audit.{fmt}"
    export_log(populated, fmt, out)
    r = run_doc_script(out, exp)
    assert r.returncode == 0 and r.stdout.startswith("OK: "), r.stdout + r.stderr


def test_doc_script_catches_tampering(populated, exp: Path):
    out = exp / "audit.jsonl"
    export_log(populated, "jsonl", out)
    lines = out.read_text(encoding="utf-8").split("\n")
    rec = json.loads(lines[5])
    rec["payload"] = {"tampered": True}
    lines[5] = chain.canonical_json(rec).decode()
    out.write_text("\n".join(lines), encoding="utf-8")
    r = run_doc_script(out, exp)
    assert r.returncode != 0 and "file does not match file_sha256" in r.stderr
    # the forger also fixes the (now unsigned) manifest hash: the entry itself gives it away
    mp = export_paths(out)["manifest"]
    m = json.loads(mp.read_text())
    m["file_sha256"] = hashlib.sha256(out.read_bytes()).hexdigest()
    mp.write_text(json.dumps(m))
    r = run_doc_script(out, exp)
    assert r.returncode != 0 and f"entry {rec['seq']}: content does not match its hash" in r.stderr
    # dropping a line from a full export
    lines = [line for i, line in enumerate(out.read_text().split("\n")) if i != 7]
    del lines[5]
    out.write_text("\n".join(lines))
    m["file_sha256"] = hashlib.sha256(out.read_bytes()).hexdigest()
    mp.write_text(json.dumps(m))
    assert run_doc_script(out, exp).returncode != 0


@needs_openssl
def test_doc_script_openssl_path_on_filtered_export(populated, exp: Path):
    out = exp / "carol.jsonl"
    m = export_log(populated, "jsonl", out, user="carol")
    assert m["count"] >= 3 and m["filters"] == {"user": "carol"}
    r = run_doc_script(out, exp, env={"REVIEW_USE_OPENSSL": "1"})
    assert r.returncode == 0, r.stdout + r.stderr


# -- filters, roles, failure modes ----------------------------------------------------------


def test_filters(populated, exp: Path):
    truth = entries_of(populated)
    m = export_log(populated, "jsonl", exp / "a.jsonl", action="search")
    recs = [json.loads(x) for x in (exp / "a.jsonl").read_text(encoding="utf-8").split("\n")[:-1]]
    assert {r["action"] for r in recs} == {"search"} and len(recs) == len(NASTY) == m["count"]
    assert (m["first_seq"], m["last_seq"], m["last_entry_hash"]) == (
        recs[0]["seq"],
        recs[-1]["seq"],
        recs[-1]["hash"],
    )
    mid = truth[10]["ts"]
    m2 = export_log(populated, "csv", exp / "b.csv", since=mid)
    assert m2["first_seq"] == 10
    m3 = export_log(populated, "csv", exp / "c.csv", until=mid)
    assert (m3["first_seq"], m3["last_seq"]) == (1, 9)
    m4 = export_log(populated, "cef", exp / "d.cef", since="2000-01-01", until="2000-01-02")
    assert m4["count"] == 0 and m4["first_seq"] is None and (exp / "d.cef").read_bytes() == b""
    with pytest.raises(UsageError, match="invalid time"):
        export_log(populated, "csv", exp / "e.csv", since="yesterday-ish")
    assert not (exp / "e.csv").exists()


def test_member_cannot_export(populated, open_as, exp: Path):
    with pytest.raises(
        AccessDenied, match="^access denied: exporting the audit log needs role admin or auditor$"
    ):
        export_log(open_as("bob"), "jsonl", exp / "x.jsonl")
    assert list(exp.glob("x.jsonl*")) == []
    export_log(open_as("carol"), "jsonl", exp / "y.jsonl")  # auditors may


def test_refuses_to_overwrite_and_leaves_nothing_half_written(populated, exp: Path):
    out = exp / "audit.jsonl"
    export_log(populated, "jsonl", out)
    before = {p.name: p.read_bytes() for p in exp.iterdir()}
    with pytest.raises(AlreadyExists):
        export_log(populated, "csv", out)
    assert {p.name: p.read_bytes() for p in exp.iterdir()} == before
    export_log(populated, "csv", out, force=True)
    assert out.read_bytes().startswith(b"seq,")
    # a broken log is never exported: exit 5 and no files at all
    populated.db.execute("UPDATE audit_log SET ts = 'x' WHERE seq = 4")
    with pytest.raises(AuditChainBroken, match="^audit entry 4: content does not match its hash$"):
        export_log(populated, "jsonl", exp / "broken.jsonl")
    assert list(exp.glob("broken*")) == [] and list(exp.glob(".*tmp")) == []
    with pytest.raises(UsageError, match="unknown format"):
        export_log(populated, "xml", exp / "z.xml")
