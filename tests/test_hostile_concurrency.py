"""Issue 12, concurrency: processes ingesting and searching/asking at once lose nothing, never fail busy.

Two real processes ingest into the same collection (as two users) while a third searches, lists
documents and finally asks the real model; every write appends audit entries to the shared vault
database too. Afterwards: no process saw an error (in particular no "database is locked"), every
acknowledged document is there whole, and the vault checks and verifies.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hostile_helpers import check_vault_healthy, child_env, read_acks, record, zygote

from offline.vault import collections as C


def _round(vault_dir: Path, tmp_path: Path, r: int, ops: int, ask: bool, words: int) -> dict[str, int]:
    z = zygote()
    stop = tmp_path / f"stop-{r}"
    acks = {name: tmp_path / f"{name}-{r}.ack" for name in ("a", "b", "s")}
    writers = [
        z.fork(
            "ingest",
            vault_dir,
            acks["a"],
            100 + r,
            {
                "collection": "kb",
                "src": str(tmp_path / "src-a"),
                "tag": f"a{r}",
                "ops": ops,
                "only_add": True,
                "max_words": words,
            },
        ),
        z.fork(
            "ingest",
            vault_dir,
            acks["b"],
            200 + r,
            {
                "collection": "kb",
                "src": str(tmp_path / "src-b"),
                "tag": f"b{r}",
                "ops": ops,
                "only_add": True,
                "user": "bob",
                "max_words": words,
            },
        ),
    ]
    reader = z.fork(
        "search", vault_dir, acks["s"], 300 + r, {"collection": "kb", "stop": str(stop), "ask": ask}
    )
    for w in writers:
        rc = w.wait(900)
        log = Path(f"{w.ack}.log").read_text()
        assert rc == 0, log[-3000:]
    stop.write_text("")
    assert reader.wait(900) == 0, Path(f"{reader.ack}.log").read_text()[-3000:]
    got = {name: read_acks(path) for name, path in acks.items()}
    for name, a in got.items():
        assert not a.errors, (name, a.errors)
        log = Path(f"{acks[name]}.log").read_text()
        assert "locked" not in log and "busy" not in log, log[-2000:]
    docs = [d for name in ("a", "b") for op in got[name].acked for d in op["docs"]]
    searches = sum(1 for op in got["s"].acked if op["op"] == "search")
    assert searches >= 3
    if ask:
        assert any(op["op"] == "ask" for op in got["s"].acked)
    return {"docs": len(docs), "searches": searches, "sources": [d["source"] for d in docs]}


def _concurrent(
    admin_session, vault_dir: Path, tmp_path: Path, rounds: int, ops: int, ask: bool, words: int
) -> None:
    C.create_collection(admin_session, "kb")
    C.grant(admin_session, "kb", "bob", "write")
    admin_session.close()
    expected: set[str] = set()
    total_searches = 0
    for r in range(rounds):
        out = _round(vault_dir, tmp_path, r, ops, ask=ask and r == rounds - 1, words=words)
        total_searches += out["searches"]
        expected.update(out["sources"])
        from conftest import PASSPHRASES

        from offline.vault import open_session

        s = open_session(vault_dir, "alice", PASSPHRASES["alice"])
        try:
            stored = {
                row[0] for row in C.open_collection(s, "kb").conn.execute("SELECT source FROM documents")
            }
            ingests = [e for e in s.db.execute("SELECT user, payload FROM audit_log WHERE action = 'ingest'")]
        finally:
            s.close()
        assert stored == expected, f"lost writes: {sorted(expected - stored)[:5]}"
        assert {u for u, _ in ingests} == {"alice", "bob"}
        assert sum(len(json.loads(p)["added"]) for _, p in ingests) == len(expected)
        check_vault_healthy(vault_dir, ("alice", "bob"))
    record(
        "concurrency: 2 ingesting + 1 searching (and asking) process",
        rounds,
        0,
        asked=ask,
        documents=len(expected),
        searches=total_searches,
    )


def test_two_ingesters_and_a_searcher(admin_session, vault_dir, tmp_path):
    _concurrent(admin_session, vault_dir, tmp_path, rounds=1, ops=3, ask=False, words=150)


@pytest.mark.slow
def test_two_ingesters_and_a_searcher_many_rounds(admin_session, vault_dir, tmp_path):
    _concurrent(admin_session, vault_dir, tmp_path, rounds=6, ops=25, ask=True, words=900)


@pytest.mark.slow
def test_two_cli_ingests_and_a_cli_search_at_once(admin_session, vault_dir, tmp_path):
    """The real command line, three processes at once: both ingests exit 0, nothing says 'locked'."""
    from conftest import PASSPHRASES
    from hostile_helpers import doc_text

    C.create_collection(admin_session, "kb")
    admin_session.close()
    folders = []
    for name in ("x", "y"):
        f = tmp_path / name
        f.mkdir()
        for i in range(40):
            (f / f"{name}{i}.txt").write_text(doc_text(f"{name}{i}", 1, 300))
        folders.append(f)
    env = child_env(
        OFFLINE_VAULT=str(vault_dir), OFFLINE_USER="alice", OFFLINE_PASSPHRASE=PASSPHRASES["alice"]
    )
    exe = [str(Path(sys.executable).parent / "offline")]
    procs = [
        subprocess.Popen(
            [*exe, "ingest", str(f), "-c", "kb"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for f in folders
    ]
    searches = 0
    while any(p.poll() is None for p in procs):
        s = subprocess.run(
            [*exe, "search", "retention schedule", "-c", "kb"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert s.returncode == 0 and "locked" not in s.stderr, s.stderr
        searches += 1
    for p in procs:
        out, err = p.communicate()
        assert p.returncode == 0 and "locked" not in err, (out, err)
    check_vault_healthy(vault_dir, ("alice",))
    from offline.vault import open_session

    s = open_session(vault_dir, "alice", PASSPHRASES["alice"])
    try:
        assert C.open_collection(s, "kb").conn.execute("SELECT count(*) FROM documents").fetchone()[0] == 80
    finally:
        s.close()
    record("concurrency: 2 `offline ingest` + `offline search` CLI processes", 1, 0, searches=searches)
