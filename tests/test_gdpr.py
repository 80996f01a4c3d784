"""GDPR and HIPAA operations (issue 9): export, erasure with receipt, record, retention, break-glass.

Real components throughout: SQLCipher files, sqlite-vec vectors from the real embedding model,
FTS5, the audit chain, the adapter registry. The erasure test also decrypts every page of the
collection file itself (this SQLCipher build has no ``sqlite_dbpage``) and scans free space too.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import stat
from pathlib import Path

import pytest

CANARY = "qjzcanary7731xz"
# FTS5 stores terms prefix-compressed against the previous term: scan for a suffix, which every
# stored form of the term contains, as does the chunk text.
NEEDLE = CANARY[3:].encode()
OTHER = "keepsakemarker9"

DOCS = [
    (
        "a",
        "visit-a.txt",
        f"Patient record. During the visit the patient said {CANARY} twice. Blood pressure normal.",
        "phi",
        ("p7",),
    ),
    (
        "b",
        "visit-b.txt",
        "Follow-up notes for the same patient: knee pain improving with physiotherapy.",
        "notes",
        ("p7",),
    ),
    (
        "c",
        "other.txt",
        f"Unrelated patient {OTHER} has diabetes type 2 and takes metformin daily.",
        "notes",
        ("p9",),
    ),
]


def _populate(session, collection: str = "clinic") -> dict[str, int]:
    from offline.ingest.pipeline import TextRecord, ingest_records
    from offline.vault.collections import create_collection

    create_collection(session, collection)
    report = ingest_records(
        session,
        [TextRecord(src, name, text, label, subj) for src, name, text, label, subj in DOCS],
        collection,
    )
    assert not report["failed"], report["failed"]
    return {d["path"]: d["doc_id"] for d in report["added"]}


def _collection_file(session, name: str = "clinic") -> tuple[Path, bytes]:
    from offline.vault.collections import collection_key_for_admin

    _, file, key = collection_key_for_admin(session, name)
    return session.vault_dir / "collections" / file, key


PAGE, RESERVE = 4096, 80  # SQLCipher 4 defaults: 16-byte IV + 64-byte HMAC-SHA512 reserved per page


def _decrypt_page(page: bytes, key: bytes, first: bool) -> bytes:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    iv = page[PAGE - RESERVE : PAGE - RESERVE + 16]
    dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    return (
        dec.update(page[16 if first else 0 : PAGE - RESERVE]) + dec.finalize()
    )  # page 1 starts with the salt


def _decrypted_pages(path: Path, key: bytes) -> list[bytes]:
    """Every page of a SQLCipher 4 file and of its WAL, decrypted by hand (AES-256-CBC).

    Free pages, the unused space inside pages and WAL frames are all included: this is what an
    attacker holding the key and the files would see, not what SQL returns.
    """
    data = path.read_bytes()
    assert len(data) % PAGE == 0
    pages = [_decrypt_page(data[off : off + PAGE], key, off == 0) for off in range(0, len(data), PAGE)]
    assert pages[0][:2] == b"\x10\x00", "page 1 did not decrypt to a SQLite header (page size 4096)"
    wal = Path(f"{path}-wal")
    if wal.exists():
        raw = wal.read_bytes()
        for off in range(
            32, len(raw) - 24 - PAGE + 1, 24 + PAGE
        ):  # 32-byte WAL header, 24-byte frame headers
            pgno = int.from_bytes(raw[off : off + 4], "big")
            pages.append(_decrypt_page(raw[off + 24 : off + 24 + PAGE], key, pgno == 1))
    return pages


def _raw_scan(session, needle: bytes) -> bool:
    path, key = _collection_file(session)
    return any(needle in p.lower() for p in _decrypted_pages(path, key))


def _table_dump_contains(conn, needle: bytes) -> list[str]:
    """Tables (FTS and vec0 shadow tables included) holding ``needle`` in any cell."""
    hits = []
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
        for row in conn.execute(f'SELECT * FROM "{name}"'):
            for v in row:
                raw = v if isinstance(v, bytes) else str(v).encode()
                if needle in raw.lower():
                    hits.append(name)
                    break
            else:
                continue
            break
    return hits


def _fts(conn, term: str) -> list[int]:
    return [r[0] for r in conn.execute("SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ?", (term,))]


def _knn(conn, text: str) -> list[tuple[int, float]]:
    from offline.retrieval import get_embedder
    from offline.retrieval.index import Filter, knn_sqlite

    return knn_sqlite(conn, get_embedder().encode_query(text), 10, Filter())


def _chunk_text(conn, doc_id: int) -> str:
    return conn.execute("SELECT text FROM chunks WHERE doc_id = ? ORDER BY ord", (doc_id,)).fetchone()[0]


def test_erase_leaves_no_trace_and_receipt_verifies(admin_session, tmp_path):
    from offline.audit import chain
    from offline.finetune.store import AdapterTainted, open_adapter, override_taint, save_adapter
    from offline.gdpr.erase import erase_subject, verify_receipt
    from offline.gdpr.export import collect_subject_data
    from offline.gdpr.retention import set_backup_retention
    from offline.retrieval import search
    from offline.vault.collections import open_collection
    from offline.vault.maintenance import backup_vault

    s = admin_session
    ids = _populate(s)
    handle = open_collection(s, "clinic", "read")
    cid = handle.id
    canary_text = _chunk_text(handle.conn, ids["a"])
    canary_chunk = handle.conn.execute("SELECT id FROM chunks WHERE doc_id = ?", (ids["a"],)).fetchone()[0]
    # An adapter trained on the canary document, and one trained on the unrelated document.
    meta = dict(
        base_model="m",
        base_sha256="0" * 64,
        base_arch="llama",
        dataset_sha256="1" * 64,
        hyperparameters={},
        loss_curve=[],
        eval_loss_before=None,
        eval_loss_after=None,
    )
    save_adapter(
        s,
        "tuned-a",
        b"GGUF lora bytes a",
        source_doc_ids=[{"collection": "clinic", "collection_id": cid, "doc_ids": [ids["a"]]}],
        **meta,
    )
    save_adapter(
        s,
        "tuned-c",
        b"GGUF lora bytes c",
        source_doc_ids=[{"collection": "clinic", "collection_id": cid, "doc_ids": [ids["c"]]}],
        **meta,
    )
    set_backup_retention(s, 30)
    backup_vault(s, tmp_path / "backup-1")

    # Positive controls: each probe sees the canary before the erasure.
    assert _fts(handle.conn, CANARY) == [canary_chunk]
    assert _knn(handle.conn, canary_text)[0][0] == canary_chunk
    assert "chunks_fts_data" in _table_dump_contains(handle.conn, NEEDLE)
    assert _raw_scan(s, NEEDLE)
    assert collect_subject_data(s, "p7")["totals"]["documents"] == 2

    receipt = erase_subject(s, "p7", receipt_dir=tmp_path / "receipts")

    handle = open_collection(s, "clinic", "read")
    conn = handle.conn
    assert _fts(conn, CANARY) == []
    assert all(cid_ != canary_chunk and score < 0.99 for cid_, score in _knn(conn, canary_text))
    assert not [h for h in search(s, CANARY, collections=["clinic"], k=10).hits if CANARY in h.text]
    assert collect_subject_data(s, "p7")["totals"]["documents"] == 0
    assert _table_dump_contains(conn, NEEDLE) == []
    assert not _raw_scan(s, NEEDLE)
    assert conn.execute("SELECT count(*) FROM doc_subjects WHERE subject = 'p7'").fetchone()[0] == 0

    # The unrelated document is intact and still found by every path.
    other_chunk = conn.execute("SELECT id FROM chunks WHERE doc_id = ?", (ids["c"],)).fetchone()[0]
    assert _fts(conn, OTHER) == [other_chunk]
    assert _knn(conn, _chunk_text(conn, ids["c"]))[0][0] == other_chunk
    assert _raw_scan(s, OTHER.encode())
    assert collect_subject_data(s, "p9")["totals"]["documents"] == 1

    # Receipt: counts and hashes, in a 0600 file and in the (verifying) audit chain.
    assert receipt["totals"] == {"documents": 2, "documents_in_part": 0, "chunks": 2, "vectors": 2}
    removed = {d["sha256"] for c in receipt["collections"] for d in c["documents"]}
    import hashlib

    assert removed == {
        hashlib.sha256(DOCS[0][2].encode()).hexdigest(),
        hashlib.sha256(DOCS[1][2].encode()).hexdigest(),
    }
    assert (
        receipt["collections"][0]["scrub"]["vacuum"] and receipt["collections"][0]["scrub"]["wal_truncated"]
    )
    path = Path(receipt["file"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert CANARY not in path.read_text()
    entry = next(chain.iter_entries(s.db, "seq = ?", (receipt["audit"]["seq"],)))
    assert entry.action == "gdpr.erase" and entry.payload == json.loads(path.read_text())["receipt"]
    assert "p7" not in json.dumps(entry.payload)  # the chain keeps only the subject's hash
    chain.verify(s.db)
    assert verify_receipt(s, path)["ok"]
    assert [b["dest"] for b in receipt["backups_still_holding_data"]] == [
        str((tmp_path / "backup-1").resolve())
    ]
    assert receipt["backups_still_holding_data"][0]["expires_at"]

    # A doctored receipt no longer matches its entry.
    from offline.errors import IntegrityError

    doctored = json.loads(path.read_text())
    doctored["receipt"]["totals"]["documents"] = 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doctored))
    with pytest.raises(IntegrityError):
        verify_receipt(s, bad)

    # Only the adapter whose lineage includes an erased document is tainted, and it is refused.
    assert receipt["adapters_tainted"] == ["tuned-a"]
    with pytest.raises(AdapterTainted, match="tainted"):
        with open_adapter(s, "tuned-a"):
            pass
    with open_adapter(s, "tuned-c") as (p, info):
        assert p.read_bytes() == b"GGUF lora bytes c"
    override_taint(s, "tuned-a", "retrained copy pending; legal approved interim use")
    with open_adapter(s, "tuned-a"):
        pass


def test_erase_cli_exit_codes_and_grants(admin_session, cli, tmp_path):
    from offline.vault.collections import grant

    _populate(admin_session)
    grant(admin_session, "clinic", "bob", "read")
    r = cli(["gdpr", "erase", "--subject", "p7", "-c", "clinic", "--yes"], user="bob")
    assert r.exit_code == 4 and r.output.strip().endswith("Error: access denied: collection 'clinic'")
    r = cli(["gdpr", "erase", "--subject", "p7", "-c", "nope", "--yes"], user="bob")
    assert r.exit_code == 4 and "Error: access denied: collection 'nope'" in r.output
    r = cli(["gdpr", "erase", "--subject", "p7", "--yes"], user="carol")
    assert r.exit_code == 4
    r = cli(["gdpr", "erase", "--subject", "  ", "--yes"])
    assert r.exit_code == 2 and "Error: invalid subject id" in r.output
    r = cli(["--json", "gdpr", "erase", "--subject", "p7", "--receipt-dir", str(tmp_path / "rc")])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["totals"]["documents"] == 2 and Path(out["file"]).parent == tmp_path / "rc"
    r = cli(["gdpr", "verify-receipt", out["file"]], user="carol")
    assert r.exit_code == 0 and "matches audit entry" in r.output
    r = cli(["audit", "tail", "--action", "gdpr.erase", "--json"], user="carol")
    assert r.exit_code == 0 and "gdpr.erase" in r.output


def test_export_respects_labels_lists_recipients_purpose_retention(admin_session, open_as, cli, tmp_path):
    from offline.gdpr.export import export_subject
    from offline.gdpr.purpose import set_purpose
    from offline.gdpr.retention import set_retention
    from offline.retrieval import search
    from offline.vault.collections import grant

    s = admin_session
    _populate(s)
    set_purpose(s, "clinic", "treatment of patients", legal_basis="Art. 9(2)(h) GDPR")
    set_retention(s, label="phi", days=3650)
    grant(s, "clinic", "bob", "read", ["notes"])
    bob = open_as("bob")
    hits = search(bob, "knee pain physiotherapy", collections=["clinic"], k=1, mode="dense").hits
    assert hits and "knee" in hits[0].text

    result = export_subject(s, "p7", tmp_path / "alice-export")
    assert result["documents"] == 2 and result["chunks"] == 2
    data = json.loads((tmp_path / "alice-export" / "subject-export.json").read_text())
    coll = data["collections"][0]
    assert coll["purpose"] == "treatment of patients" and coll["legal_basis"] == "Art. 9(2)(h) GDPR"
    by_name = {d["name"]: d for d in coll["documents"]}
    assert [r["user"] for r in by_name["visit-b.txt"]["recipients"]] == ["bob"]
    assert (
        by_name["visit-a.txt"]["retention"]["days"] == 3650
        and by_name["visit-a.txt"]["retention"]["expires_at"]
    )
    assert CANARY in by_name["visit-a.txt"]["chunks"][0]["text"]
    for f in result["files"]:
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    md = (tmp_path / "alice-export" / "subject-export.md").read_text()
    assert "treatment of patients" in md and "| bob | 1 |" in md
    assert stat.S_IMODE((tmp_path / "alice-export").stat().st_mode) == 0o700

    # Bob's grant covers label "notes" only: his export never shows the phi document.
    r = cli(
        ["--json", "gdpr", "export", "--subject", "p7", "--out", str(tmp_path / "bob-export")], user="bob"
    )
    assert r.exit_code == 0, r.output
    bob_data = json.loads((tmp_path / "bob-export" / "subject-export.json").read_text())
    assert [d["name"] for c in bob_data["collections"] for d in c["documents"]] == ["visit-b.txt"]
    assert CANARY not in (tmp_path / "bob-export" / "subject-export.json").read_text()
    # Exports never overwrite; auditors read no documents.
    r = cli(["gdpr", "export", "--subject", "p7", "--out", str(tmp_path / "bob-export")], user="bob")
    assert r.exit_code == 2 and "already exists" in r.output
    assert (
        cli(["gdpr", "export", "--subject", "p7", "--out", str(tmp_path / "c")], user="carol").exit_code == 4
    )
    tail = cli(["audit", "tail", "--action", "gdpr.export", "--json"], user="carol")
    assert tail.exit_code == 0 and "p7" not in tail.output and "subject_ref" in tail.output


def test_retention_apply_erases_expired_with_receipt(admin_session, cli, tmp_path):
    from offline.gdpr.retention import apply_retention, set_retention
    from offline.vault import db
    from offline.vault.collections import open_collection

    s = admin_session
    ids = _populate(s)
    set_retention(s, label="phi", days=30)
    r = cli(["gdpr", "retention", "set", "--collection", "clinic", "--days", "365"])
    assert r.exit_code == 0, r.output
    assert cli(["gdpr", "retention", "set", "--label", "phi"]).exit_code == 2
    assert cli(["gdpr", "retention", "set", "--label", "phi", "--days", "0"]).exit_code == 2
    assert cli(["gdpr", "retention", "set", "--label", "phi", "--days", "9"], user="bob").exit_code == 4
    shown = json.loads(cli(["--json", "gdpr", "retention"]).output)
    assert {"label": "phi", "days": 30} == {k: shown["labels"][0][k] for k in ("label", "days")}

    # Nothing has expired yet.
    assert apply_retention(s, receipt_dir=tmp_path)["expired"] == []
    # Backdate the phi document by 40 days: only it has run out.
    conn = open_collection(s, "clinic", "write").conn
    old = (_dt.datetime.now(_dt.UTC) - _dt.timedelta(days=40)).isoformat(timespec="seconds")
    with db.transaction(conn):
        conn.execute("UPDATE documents SET ingested_at = ? WHERE id = ?", (old, ids["a"]))
    dry = json.loads(cli(["--json", "gdpr", "retention", "--apply", "--dry-run"]).output)
    assert (
        dry["expired"] == [{"collection": "clinic", "documents": 1, "doc_ids": [ids["a"]]}]
        and not dry["receipt"]
    )
    r = cli(["--json", "gdpr", "retention", "--apply", "--receipt-dir", str(tmp_path / "rc")])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["receipt"]["kind"] == "retention" and out["receipt"]["totals"]["documents"] == 1
    assert Path(out["receipt"]["file"]).is_file()
    conn = open_collection(s, "clinic", "read").conn
    assert sorted(r[0] for r in conn.execute("SELECT id FROM documents")) == [ids["b"], ids["c"]]
    assert _fts(conn, CANARY) == []
    # Later, the collection's 365 days run out for the rest.
    later = _dt.datetime.now(_dt.UTC) + _dt.timedelta(days=400)
    res = apply_retention(s, receipt_dir=tmp_path / "rc2", now=later)
    assert res["receipt"]["totals"]["documents"] == 2


def test_record_of_processing(admin_session, cli, tmp_path):
    from offline.gdpr.purpose import set_purpose
    from offline.vault.maintenance import check_vault

    s = admin_session
    _populate(s)
    set_purpose(s, "clinic", "treatment")
    check_vault(s)
    assert cli(["audit", "verify"]).exit_code == 0
    r = cli(["gdpr", "record", "--out", str(tmp_path / "rop")])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "rop" / "record-of-processing.json").read_text())
    cipher = rec["security_measures"]["encryption_at_rest"]["vault_database"]
    assert cipher["cipher_version"].startswith("4.") and cipher["secure_delete"] and cipher["use_hmac"]
    kdf = rec["security_measures"]["key_management"]["kdf"]
    assert kdf and kdf[0]["alg"] == "argon2id" and kdf[0]["memory_kib"] >= 19456
    assert rec["security_measures"]["audit"]["questions_logged_as"] == "sealed"
    assert rec["last_verification"]["vault.check"]["result"]["ok"] is True
    assert rec["last_verification"]["audit.verify"]["result"]["ok"] is True
    assert {lb["label"] for lb in rec["categories_of_data"]["labels"]} == {"phi", "notes"}
    assert {u["name"]: u["role"] for u in rec["users"]} == {
        "alice": "admin",
        "bob": "member",
        "carol": "auditor",
    }
    assert rec["collections"][0]["purpose"] == "treatment"
    md = (tmp_path / "rop" / "record-of-processing.md").read_text()
    assert "Record of processing" in md and "argon2id" in md and "SQLCipher 4." in md
    r = cli(["gdpr", "record"], user="carol")
    assert r.exit_code == 0 and "## Security measures in force" in r.output
    assert cli(["gdpr", "record"], user="bob").exit_code == 4


def test_break_glass(admin_session, open_as, cli):
    from offline.errors import AccessDenied, UsageError
    from offline.gdpr.breakglass import open_break_glass, set_break_glass
    from offline.retrieval import search
    from offline.vault.collections import open_collection

    s = admin_session
    _populate(s)
    bob = open_as("bob")
    # Without a reason: refused before anything else.
    with pytest.raises(UsageError):
        open_collection(bob, "clinic", "read", break_glass_reason="  ")
    with pytest.raises(UsageError):
        open_break_glass(bob, ["clinic"], None)
    # Off by default: even with a reason, denied.
    with pytest.raises(AccessDenied):
        open_collection(bob, "clinic", "read", break_glass_reason="patient unconscious in ER")

    r = cli(["collections", "break-glass", "clinic", "on"], user="bob")
    assert r.exit_code == 4
    result = set_break_glass(s, "clinic", True)
    assert set(result["provisioned"]) == {"alice", "bob"}
    code = result["emergency_code"]
    bob2 = open_as("bob")
    # The wrap alone opens nothing: the emergency code from the envelope is needed too.
    with pytest.raises(UsageError, match="emergency code"):
        open_break_glass(bob2, ["clinic"], "patient unconscious in ER")
    wrong = "AAAA-AAAA-AAAA-AAAA-AAAA" if code != "AAAA-AAAA-AAAA-AAAA-AAAA" else "BBBB-BBBB-BBBB-BBBB-BBBB"
    with pytest.raises(AccessDenied):
        open_break_glass(bob2, ["clinic"], "patient unconscious in ER", lambda: wrong)
    names = open_break_glass(bob2, ["clinic"], "patient unconscious in ER", lambda: code)
    hits = search(bob2, "knee pain", collections=names, k=3).hits
    assert hits
    r = cli(["--json", "audit", "tail", "--severity", "high"], user="carol")
    entries = [e for e in json.loads(r.output) if e["action"] == "break_glass.read"]
    assert (
        entries
        and entries[-1]["user"] == "bob"
        and entries[-1]["payload"]["reason"] == "patient unconscious in ER"
    )
    assert entries[-1]["severity"] == "high"
    # Auditors never read documents, break-glass or not.
    with pytest.raises(AccessDenied):
        open_break_glass(open_as("carol"), ["clinic"], "curious", lambda: code)

    # Off again: wraps gone, key rotated, so the emergency path is closed.
    r = cli(["collections", "break-glass", "clinic", "off"])
    assert r.exit_code == 0 and "rotated" in r.output
    assert (
        s.db.execute("SELECT count(*) FROM vault_keys WHERE purpose LIKE 'break-glass:%'").fetchone()[0] == 0
    )
    with pytest.raises(AccessDenied):
        open_break_glass(open_as("bob"), ["clinic"], "patient unconscious in ER", lambda: code)


def test_break_glass_cli_flags(admin_session, cli):
    from offline.gdpr.breakglass import set_break_glass

    _populate(admin_session)
    r = cli(["search", "knee", "-c", "clinic", "--break-glass"], user="bob")
    assert r.exit_code == 2 and "Error: break-glass needs a reason: --reason TEXT" in r.output
    r = cli(["ask", "knee?", "-c", "clinic", "--break-glass"], user="bob")
    assert r.exit_code == 2 and "Error: break-glass needs a reason: --reason TEXT" in r.output
    r = cli(["search", "knee", "-c", "clinic", "--break-glass", "--reason", "ER"], user="bob")
    assert r.exit_code == 4 and "Error: access denied: collection 'clinic'" in r.output
    code = set_break_glass(admin_session, "clinic", True)["emergency_code"]
    r = cli(["search", "knee", "-c", "clinic", "--break-glass", "--reason", "ER"], user="bob")
    assert r.exit_code == 2 and "Error: break-glass needs the emergency code" in r.output
    env = {"OFFLINE_BREAK_GLASS_CODE": code}
    r = cli(
        ["--json", "search", "knee pain", "-c", "clinic", "--break-glass", "--reason", "ER"],
        user="bob",
        env=env,
    )
    assert r.exit_code == 0, r.output
    assert "knee" in r.output
    # ask: a min-score no passage reaches refuses before any model loads, but the read happened.
    r = cli(
        [
            "--json",
            "ask",
            "knee pain?",
            "-c",
            "clinic",
            "--break-glass",
            "--reason",
            "ER",
            "--min-score",
            "1.5",
        ],
        user="bob",
        env=env,
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["refused"] is True
    reads = admin_session.db.execute(
        "SELECT count(*) FROM audit_log WHERE action = 'break_glass.read'"
        " AND severity = 'high' AND user = 'bob'"
    ).fetchone()[0]
    assert reads == 2


def test_subject_field_rows_are_erased_individually(admin_session, cli, tmp_path):
    from offline.errors import InvalidInput, UsageError
    from offline.gdpr.erase import erase_subject
    from offline.gdpr.subjects import ingest_with_subject_field
    from offline.vault.collections import create_collection, open_collection

    s = admin_session
    create_collection(s, "registry")
    csv_file = tmp_path / "patients.csv"
    csv_file.write_text(f"patient_id,name,note\nP1,Ann,{CANARY} allergy\nP2,Ben,asthma\nP3,Cy,{OTHER}\n")
    jsonl = tmp_path / "visits.jsonl"
    jsonl.write_text(
        json.dumps({"patient": {"id": "P1"}, "visit": "x-ray"})
        + "\n"
        + json.dumps({"patient": {"id": "P2"}, "visit": "blood test"})
        + "\n"
    )
    with pytest.raises(UsageError, match="no column"):
        ingest_with_subject_field(s, [csv_file], "registry", "pid")
    (tmp_path / "bad.csv").write_text("patient_id,note\nP1,x\n,untagged\n")
    with pytest.raises(InvalidInput, match="no value in subject field"):
        ingest_with_subject_field(s, [tmp_path / "bad.csv"], "registry", "patient_id")
    rep = ingest_with_subject_field(s, [csv_file], "registry", "patient_id", label="phi")
    assert rep["rows"] == 3 and len(rep["added"]) == 3
    r = cli(["--json", "ingest", str(jsonl), "-c", "registry", "--subject-field", "patient.id"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.output)["added"]) == 2
    conn = open_collection(s, "registry", "read").conn
    subjects = dict(
        conn.execute("SELECT d.name, s.subject FROM documents d JOIN doc_subjects s ON s.doc_id = d.id")
    )
    assert subjects == {
        "patients.csv#row-1": "P1",
        "patients.csv#row-2": "P2",
        "patients.csv#row-3": "P3",
        "visits.jsonl#row-1": "P1",
        "visits.jsonl#row-2": "P2",
    }
    receipt = erase_subject(s, "P1", collections=["registry"], receipt_dir=tmp_path / "rc")
    assert receipt["totals"]["documents"] == 2
    conn = open_collection(s, "registry", "read").conn
    assert conn.execute("SELECT count(*) FROM documents").fetchone()[0] == 3
    assert _fts(conn, CANARY) == [] and _fts(conn, OTHER)
