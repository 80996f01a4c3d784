"""Re-ingest never relabels silently (issue 18), and both ingest producers go through the same checks.

Real vault, real embedder, real search: a relabel is judged by what a label-limited grant
retrieves afterwards, in every retrieval leg and backend, not by reading the label column alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from offline.errors import AccessDenied, UsageError

TEXTS = {
    "walrus.txt": "The walrus colony hauls out on the northern beach every spring.",
    "penguin.txt": "Emperor penguins huddle together through the polar winter.",
    "zeppelin.txt": "The zeppelin hangar at the airfield is now a museum.",
}


@pytest.fixture
def kb(admin_session, tmp_path):
    """Collection kb and a folder of three text files (not yet ingested)."""
    from offline.vault.collections import create_collection

    create_collection(admin_session, "kb")
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in TEXTS.items():
        (folder / name).write_text(text)
    return folder


def snapshot(session, name: str = "kb") -> dict:
    """Every row that carries a document's identity or label, plus the index version."""
    from offline.retrieval.index import index_version
    from offline.vault.collections import open_collection

    c = open_collection(session, name).conn
    c.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('integrity-check')")  # FTS still matches chunks
    has_vec = c.execute(
        "SELECT 1 FROM sqlite_master WHERE name = 'vec_chunks'"
    ).fetchone()  # made on first write
    return {
        "docs": c.execute(
            "SELECT id, source, label, sha256, ingested_at FROM documents ORDER BY id"
        ).fetchall(),
        "chunks": c.execute("SELECT id, doc_id, text FROM chunks ORDER BY id").fetchall(),
        "vec": c.execute("SELECT rowid, label, doc_id FROM vec_chunks ORDER BY rowid").fetchall()
        if has_vec
        else [],
        "version": index_version(c),
    }


def audit(session, action: str, user: str = "alice") -> list:
    from offline.audit import chain

    return list(chain.iter_entries(session.db, "action = ? AND user = ?", (action, user)))


def names_found(session, query: str, **kw) -> set[str]:
    from offline.retrieval import search

    return {h.doc_name for h in search(session, query, collections=["kb"], k=10, audit=False, **kw).hits}


# Every way a query reaches the chunks: fused, the vector leg alone (warm copy and sqlite-vec) and BM25.
LEGS = [
    dict(mode="hybrid"),
    dict(mode="dense", dense_backend="memory"),
    dict(mode="dense", dense_backend="sqlite"),
    dict(mode="bm25"),
]


def test_reingest_without_or_with_same_label_keeps_ids_and_says_unchanged(admin_session, kb, cli):
    r = cli(["--json", "ingest", str(kb), "-c", "kb", "--label", "internal"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["added"]) == 3
    before = snapshot(admin_session)
    for extra in (
        [],
        ["--label", "internal"],
    ):  # no --label keeps the stored labels; the same label is no change
        r = cli(["--json", "ingest", str(kb), "-c", "kb", *extra])
        assert r.exit_code == 0, r.output
        out = json.loads(r.stdout)
        assert (len(out["unchanged"]), out["added"], out["updated"], out["relabelled"]) == (3, [], [], [])
        assert snapshot(admin_session) == before  # same ids, same labels, not even a version bump
    r = cli(["ingest", str(kb), "-c", "kb"])
    assert r.stdout.startswith("Collection kb: 0 added, 0 updated, 3 unchanged, 0 skipped, 0 failed;")
    # Changed content with no --label: "updated" as before, and it keeps its label.
    (kb / "walrus.txt").write_text("The walrus colony moved to the southern rocks this year.")
    out = json.loads(cli(["--json", "ingest", str(kb), "-c", "kb"]).stdout)
    assert [Path(d["path"]).name for d in out["updated"]] == ["walrus.txt"] and out["relabelled"] == []
    assert {row[2] for row in snapshot(admin_session)["docs"]} == {"internal"}
    assert {row[1] for row in snapshot(admin_session)["vec"]} == {"internal"}


def test_different_label_is_refused_without_relabel_and_nothing_is_written(admin_session, kb, cli):
    assert cli(["ingest", str(kb), "-c", "kb", "--label", "internal"]).exit_code == 0
    (kb / "new.txt").write_text("A new document about lighthouses.")  # would be added, were the run allowed
    before, ingests = snapshot(admin_session), len(audit(admin_session, "ingest"))
    r = cli(["ingest", str(kb), "-c", "kb", "--label", "public"])
    assert r.exit_code == 2
    assert r.stderr.strip() == (
        f"Error: 3 document(s) already stored with another label (first: {(kb / 'penguin.txt').resolve()}: "
        "'internal' -> 'public'); nothing was ingested: add --relabel to move them, "
        "or leave out --label to keep their labels"
    )
    assert snapshot(admin_session) == before and len(audit(admin_session, "ingest")) == ingests
    # The empty label is a label too: moving documents to "no label" also needs --relabel.
    assert cli(["ingest", str(kb / "walrus.txt"), "-c", "kb", "--label", ""]).exit_code == 2
    r = cli(["ingest", str(kb), "-c", "kb", "--relabel"])
    assert (
        r.exit_code == 2
        and r.stderr.strip() == "Error: --relabel goes with --label (the label to move documents to)"
    )
    assert snapshot(admin_session) == before


def test_relabel_moves_reports_audits_and_grants_follow_at_once(admin_session, kb, cli, open_as):
    from offline.ingest.docs import list_documents
    from offline.vault.collections import grant

    assert cli(["ingest", str(kb), "-c", "kb", "--label", "internal"]).exit_code == 0
    grant(admin_session, "kb", "bob", "read", labels=["internal"])
    bob = open_as("bob")  # one session across the move: its warm in-memory index must not go stale
    for leg in LEGS:
        assert "walrus.txt" in names_found(bob, "walrus colony beach", **leg), leg
    ids = {row[1]: row[0] for row in snapshot(admin_session)["docs"]}
    (kb / "zeppelin.txt").write_text(
        "The zeppelin hangar was demolished last year."
    )  # content and label change

    r = cli(["--json", "ingest", str(kb), "-c", "kb", "--label", "public", "--relabel"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    moved = {Path(m["path"]).name: m for m in out["relabelled"]}
    assert sorted(moved) == ["penguin.txt", "walrus.txt", "zeppelin.txt"]
    assert all((m["from"], m["to"]) == ("internal", "public") for m in moved.values())
    walrus = str((kb / "walrus.txt").resolve())
    assert moved["walrus.txt"] == {
        "path": walrus,
        "doc_id": ids[walrus],
        "from": "internal",
        "to": "public",
        "content": "unchanged",
    }  # moved in place: same document id
    assert moved["zeppelin.txt"]["content"] == "updated"
    assert [Path(d["path"]).name for d in out["updated"]] == ["zeppelin.txt"] and out["unchanged"] == []
    after = snapshot(admin_session)
    assert {row[2] for row in after["docs"]} == {row[1] for row in after["vec"]} == {"public"}

    # The grant limited to the old label no longer reaches any of them, in any leg or backend.
    for leg in LEGS:
        assert names_found(bob, "walrus colony beach", **leg) == set(), leg
        assert names_found(bob, "zeppelin hangar", **leg) == set(), leg
    assert list_documents(bob) == []
    for leg in LEGS:
        assert "walrus.txt" in names_found(admin_session, "walrus colony beach", labels=["public"], **leg), (
            leg
        )
    grant(admin_session, "kb", "bob", "read", labels=["public"])
    bob = open_as("bob")
    for leg in LEGS:  # also warms bob's in-memory copy for the in-place move below
        assert "walrus.txt" in names_found(bob, "walrus colony beach", **leg), leg

    entry = audit(admin_session, "ingest")[-1]
    assert entry.severity == "notice"
    assert sorted((m["doc_id"], m["from"], m["to"]) for m in entry.payload["relabelled"]) == sorted(
        (m["doc_id"], "internal", "public") for m in moved.values()
    )
    assert entry.payload["labels"] == ["public"] and entry.payload["updated"] == [
        moved["zeppelin.txt"]["doc_id"]
    ]

    r = cli(["ingest", str(kb / "walrus.txt"), "-c", "kb", "--label", "internal", "--relabel"])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0].startswith(
        "Collection kb: 0 added, 0 updated, 1 relabelled, 0 unchanged,"
    )
    assert r.stdout.splitlines()[1] == f"  relabelled {walrus} (id {ids[walrus]}): public -> internal"
    for leg in LEGS:  # a move in place (no new chunks) reaches warm indexes at once, both ways
        assert "walrus.txt" not in names_found(bob, "walrus colony beach", **leg), leg
        assert "penguin.txt" in names_found(bob, "emperor penguins polar winter", **leg), leg
        assert "walrus.txt" in names_found(
            admin_session, "walrus colony beach", labels=["internal"], **leg
        ), leg


def test_label_limited_writer_cannot_move_or_overwrite_a_document_it_cannot_see(admin_session, kb, cli):
    from offline.vault.collections import grant

    assert cli(["ingest", str(kb / "walrus.txt"), "-c", "kb", "--label", "phi"]).exit_code == 0
    grant(admin_session, "kb", "bob", "write", labels=["public"])
    before = snapshot(admin_session)
    for extra in ([], ["--label", "public", "--relabel"], ["--label", "public"]):
        r = cli(["ingest", str(kb / "walrus.txt"), "-c", "kb", *extra], user="bob")
        assert r.exit_code == 4, (extra, r.output)
        assert "phi" not in r.output and r.stderr.startswith(
            "Error: access denied: your grant on collection 'kb'"
        )
    assert snapshot(admin_session) == before
    denied = audit(admin_session, "access.denied", user="bob")
    assert len(denied) == 3 and all(e.payload["doc_ids"] == [before["docs"][0][0]] for e in denied)
    assert "phi" not in json.dumps([e.payload for e in denied])  # bob may tail his own entries


def test_records_path_runs_every_check(admin_session, open_as, kb):
    from offline.ingest import TextRecord, ingest_records
    from offline.vault.collections import grant

    rec = TextRecord("note-1", "note-1.txt", "Ward rounds start at eight.", "phi")
    with pytest.raises(
        UsageError, match="exceed the embedding model"
    ):  # the chunk-size check records used to skip
        ingest_records(admin_session, [rec], "kb", chunk_tokens=100_000)
    assert snapshot(admin_session)["docs"] == []

    grant(admin_session, "kb", "bob", "write", labels=["public"])
    ok = TextRecord("notice", "notice.txt", "The canteen closes early on Friday.", "public")
    with pytest.raises(AccessDenied, match="does not cover label 'phi'"):  # was a quiet per-record failure
        ingest_records(open_as("bob"), [ok, rec], "kb")
    (entry,) = audit(admin_session, "access.denied", user="bob")
    assert entry.payload["labels"] == ["phi"] and entry.payload["reason"] == "label not granted"
    assert snapshot(admin_session)["docs"] == []  # refused before the first write: not even the public one

    first = ingest_records(admin_session, [rec, ok, TextRecord("note-1", "dup.txt", "a second copy")], "kb")
    assert len(first["added"]) == 2 and first["skipped"] == [
        {"path": "note-1", "reason": "the same source was given twice"}
    ]
    again = ingest_records(
        admin_session, [TextRecord("note-1", "note-1.txt", rec.text)], "kb"
    )  # no label: kept
    assert [d["path"] for d in again["unchanged"]] == ["note-1"]
    with pytest.raises(UsageError, match="already stored with another label"):
        ingest_records(admin_session, [TextRecord("note-1", "note-1.txt", rec.text, "public")], "kb")
    moved = ingest_records(
        admin_session, [TextRecord("note-1", "note-1.txt", rec.text, "public")], "kb", relabel=True
    )
    assert [(m["path"], m["from"], m["to"]) for m in moved["relabelled"]] == [("note-1", "phi", "public")]
    assert audit(admin_session, "ingest")[-1].payload["records"] is True


def test_relabel_taints_adapters_trained_on_the_moved_document(admin_session, kb, cli):
    """Readers of an adapter were decided by its sources' labels at training time; a move must not
    leave readers of the old label querying what it learnt."""
    from offline.finetune.store import AdapterTainted, check_adapter_use, save_adapter, show_adapter
    from offline.vault.collections import open_collection

    s = admin_session
    assert cli(["ingest", str(kb), "-c", "kb", "--label", "public"]).exit_code == 0
    c = open_collection(s, "kb")
    walrus = c.conn.execute("SELECT id FROM documents WHERE source LIKE '%walrus.txt'").fetchone()[0]
    penguin = c.conn.execute("SELECT id FROM documents WHERE source LIKE '%penguin.txt'").fetchone()[0]
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
    for name, doc in (("on-walrus", walrus), ("on-penguin", penguin)):
        save_adapter(
            s,
            name,
            b"GGUF lora bytes",
            source_doc_ids=[
                {"collection": "kb", "collection_id": c.id, "doc_ids": [doc], "labels": ["public"]}
            ],
            **meta,
        )
    (kb / "penguin.txt").unlink()
    (kb / "zeppelin.txt").unlink()
    r = cli(["--json", "ingest", str(kb), "-c", "kb", "--label", "restricted", "--relabel"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["tainted_adapters"] == ["on-walrus"]
    with pytest.raises(AdapterTainted):
        check_adapter_use(s, "on-walrus")
    assert show_adapter(s, "on-penguin")["tainted"] is False
    assert audit(s, "adapter.taint")[-1].payload["adapter"] == "on-walrus"
    s.sync()
