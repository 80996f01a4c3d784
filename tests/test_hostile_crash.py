"""Issue 12, crash safety: kill -9 at random points during audit appends, grant changes, rekey, ingest.

Each trial starts a real child process working on the vault, waits a random time, sends SIGKILL,
then checks from this process: the vault opens (alice and bob), ``check_vault`` passes, the audit
chain verifies (with its cross-checks against the header), every write the child acknowledged is
there, the one operation in flight is either wholly there or wholly absent, and no half document
exists (every document has its chunks, every chunk its vector and FTS row). Trials run back to back
on the same vault, so each one also starts from whatever the previous kill left behind.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
from conftest import PASSPHRASES
from hostile_helpers import check_vault_healthy, read_acks, record, wait_for, zygote

from offline.errors import AccessDenied
from offline.vault import collections as C
from offline.vault import open_session
from offline.vault.db import transaction

DEFAULT = {"audit": 2, "grants": 2, "rekey": 1, "ingest": 2}
SLOW = {"audit": 60, "grants": 60, "rekey": 40, "ingest": 50}


def _kill_at_random(child, ack: Path, rng: random.Random, max_delay: float) -> None:
    wait_for(ack, lambda a: a.ready, 120, "the child to be ready", child.alive)
    if rng.random() < 0.5:  # half the trials: kill well inside the write loop, not during warm-up
        wait_for(ack, lambda a: len(a.acked) >= 1, 300, "a first acknowledged write", child.alive)
    time.sleep(rng.uniform(0.0, max_delay))
    assert child.alive(), f"child exited on its own: {Path(f'{ack}.log').read_text()[-2000:]}"
    child.kill()


# -- audit appends --------------------------------------------------------------------------------


def _audit_trials(admin_session, vault_dir: Path, tmp_path: Path, trials: int, seed: int) -> None:
    admin_session.close()
    rng = random.Random(seed)
    total_acked = 0
    for t in range(trials):
        ack = tmp_path / f"audit-{t}.ack"
        child = zygote(heavy=False).fork("audit", vault_dir, ack, seed * 1000 + t, {"tag": f"t{t}"})
        _kill_at_random(child, ack, rng, 0.8)
        acks = read_acks(ack)
        assert not acks.errors, acks.errors
        s = open_session(vault_dir, "alice", PASSPHRASES["alice"])
        try:
            rows = {
                r[0]: (r[1], r[2])
                for r in s.db.execute(
                    "SELECT seq, payload, hash FROM audit_log WHERE action = 'hostile.append'"
                )
            }
            mine = {seq: json.loads(p) for seq, (p, _) in rows.items() if json.loads(p)["tag"] == f"t{t}"}
            for a in acks.acked:  # every acknowledged entry is there, unchanged
                assert a["seq"] in mine and mine[a["seq"]]["n"] == a["n"] and rows[a["seq"]][1] == a["hash"]
            extra = len(mine) - len(acks.acked)
            assert extra in ((0, 1) if acks.inflight else (0,)), (len(mine), len(acks.acked), acks.inflight)
        finally:
            s.close()
        check_vault_healthy(vault_dir, ("alice", "bob", "carol"))
        total_acked += len(acks.acked)
    record("crash: kill -9 during audit appends", trials, 0, acked=total_acked)


def test_kill_during_audit_appends(admin_session, vault_dir, tmp_path):
    _audit_trials(admin_session, vault_dir, tmp_path, DEFAULT["audit"], seed=11)


@pytest.mark.slow
def test_kill_during_audit_appends_many(admin_session, vault_dir, tmp_path):
    _audit_trials(admin_session, vault_dir, tmp_path, SLOW["audit"], seed=12)


# -- grants, revokes (key rotation) and collection writes ----------------------------------------

POOL = ["g0", "g1", "g2"]


def _grant_state(vault_dir: Path) -> dict[str, object]:
    """{collection: bob's perm or None} and {collection: set of rows}, read as alice."""
    s = open_session(vault_dir, "alice", PASSPHRASES["alice"])
    try:
        perms = {c: None for c in POOL}
        for name, perm in s.db.execute(
            "SELECT c.name, g.perm FROM grants g JOIN collections c"
            " ON c.id = g.collection_id WHERE g.user = 'bob'"
        ):
            perms[name] = perm
        rows = {
            c: {
                r[0]
                for r in C.open_collection(s, c).conn.execute("SELECT value FROM meta WHERE key LIKE 'row:%'")
            }
            for c in POOL
        }
    finally:
        s.close()
    return {"perms": perms, "rows": rows}


def _apply(state: dict, op: dict) -> dict:
    perms, rows = dict(state["perms"]), {c: set(v) for c, v in state["rows"].items()}
    c = op["collection"]
    if op["op"] == "put":
        rows[c].add(op["text"])
    elif op["op"] == "grant":
        perms[c] = op["perm"]
    else:
        perms[c] = None
    return {"perms": perms, "rows": rows}


def _bob_sees(vault_dir: Path, state: dict) -> None:
    """Bob can open exactly the collections he holds a grant on, and reads every row there."""
    s = open_session(vault_dir, "bob", PASSPHRASES["bob"])
    try:
        for c in POOL:
            if state["perms"][c] is None:
                with pytest.raises(AccessDenied):
                    C.open_collection(s, c)
            else:
                got = {
                    r[0]
                    for r in C.open_collection(s, c).conn.execute(
                        "SELECT value FROM meta WHERE key LIKE 'row:%'"
                    )
                }
                assert got == state["rows"][c]
    finally:
        s.close()


def _grant_trials(admin_session, vault_dir: Path, tmp_path: Path, trials: int, seed: int) -> None:
    for c in POOL:
        C.create_collection(admin_session, c)
        h = C.open_collection(admin_session, c, "write")
        with transaction(h.conn):
            h.conn.execute("INSERT INTO meta(key, value) VALUES ('row:base', 'base')")
    admin_session.close()
    rng = random.Random(seed)
    state = _grant_state(vault_dir)
    acked_total = 0
    for t in range(trials):
        ack = tmp_path / f"grants-{t}.ack"
        child = zygote(heavy=False).fork(
            "grants", vault_dir, ack, seed * 1000 + t, {"tag": f"t{t}", "collections": POOL}
        )
        _kill_at_random(child, ack, rng, 1.5)
        acks = read_acks(ack)
        assert not acks.errors, acks.errors
        for op in acks.acked:
            state = _apply(state, op)
        actual = _grant_state(vault_dir)
        if actual != state:
            assert acks.inflight is not None, (actual, state)
            assert actual == _apply(state, acks.inflight), (actual, state, acks.inflight)
        state = actual
        _bob_sees(vault_dir, state)
        check_vault_healthy(vault_dir, ("alice", "bob", "carol"))
        acked_total += len(acks.acked)
    record("crash: kill -9 during grant/revoke (key rotation) and writes", trials, 0, acked=acked_total)


def test_kill_during_grant_changes(admin_session, vault_dir, tmp_path):
    _grant_trials(admin_session, vault_dir, tmp_path, DEFAULT["grants"], seed=21)


@pytest.mark.slow
def test_kill_during_grant_changes_many(admin_session, vault_dir, tmp_path):
    _grant_trials(admin_session, vault_dir, tmp_path, SLOW["grants"], seed=22)


# -- whole-vault rekey ----------------------------------------------------------------------------


def _rekey_trials(admin_session, vault_dir: Path, tmp_path: Path, trials: int, seed: int) -> None:
    for c in ("legal", "hr"):
        C.create_collection(admin_session, c)
        C.grant(admin_session, c, "bob", "read")
        h = C.open_collection(admin_session, c, "write")
        with transaction(h.conn):
            for i in range(50):
                h.conn.execute("INSERT INTO meta(key, value) VALUES (?, ?)", (f"row:{i}", f"{c} fact {i}"))
    admin_session.close()
    expected = {c: {f"{c} fact {i}" for i in range(50)} for c in ("legal", "hr")}
    rng = random.Random(seed)
    acked_total = 0
    for t in range(trials):
        ack = tmp_path / f"rekey-{t}.ack"
        child = zygote(heavy=False).fork("rekey", vault_dir, ack, seed * 1000 + t)
        _kill_at_random(child, ack, rng, 2.0)
        acks = read_acks(ack)
        assert not acks.errors, acks.errors
        live = json.loads((vault_dir / "header.json").read_text())["db_file"]
        if acks.acked and acks.inflight is None:
            assert live == acks.acked[-1]["db_file"]
        for user in ("alice", "bob"):
            s = open_session(vault_dir, user, PASSPHRASES[user])
            try:
                for c, rows in expected.items():
                    got = {
                        r[0]
                        for r in C.open_collection(s, c).conn.execute(
                            "SELECT value FROM meta WHERE key LIKE 'row:%'"
                        )
                    }
                    assert got == rows
            finally:
                s.close()
        check_vault_healthy(vault_dir, ("alice", "bob", "carol"))
        acked_total += len(acks.acked)
    record("crash: kill -9 during whole-vault rekey", trials, 0, acked=acked_total)


def test_kill_during_rekey(admin_session, vault_dir, tmp_path):
    _rekey_trials(admin_session, vault_dir, tmp_path, DEFAULT["rekey"], seed=31)


@pytest.mark.slow
def test_kill_during_rekey_many(admin_session, vault_dir, tmp_path):
    _rekey_trials(admin_session, vault_dir, tmp_path, SLOW["rekey"], seed=32)


# -- ingest (add, update, remove) -----------------------------------------------------------------


def _documents(vault_dir: Path) -> dict[str, str]:
    s = open_session(vault_dir, "alice", PASSPHRASES["alice"])
    try:
        return dict(
            C.open_collection(s, "docs").conn.execute("SELECT source, sha256 FROM documents").fetchall()
        )
    finally:
        s.close()


def _apply_docs(docs: dict[str, str], op: dict) -> dict[str, str]:
    out = dict(docs)
    for d in op["docs"]:
        if op["op"] == "remove":
            out.pop(d["source"], None)
        else:
            out[d["source"]] = d["sha256"]
    return out


def _markers_found(vault_dir: Path, acked: list[dict]) -> None:
    """Each acknowledged add/update is findable by its own marker word (FTS) in that document."""
    s = open_session(vault_dir, "alice", PASSPHRASES["alice"])
    try:
        conn = C.open_collection(s, "docs").conn
        for op in acked:
            for d in op["docs"]:
                if "marker" not in d:
                    continue
                row = conn.execute(
                    "SELECT d.source, d.sha256 FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.rowid"
                    " JOIN documents d ON d.id = c.doc_id WHERE chunks_fts MATCH ? LIMIT 1",
                    (f'"{d["marker"]}"',),
                ).fetchone()
                current = conn.execute(
                    "SELECT sha256 FROM documents WHERE source = ?", (d["source"],)
                ).fetchone()
                if current is not None and current[0] == d["sha256"]:  # not replaced or removed since
                    assert row == (d["source"], d["sha256"]), (d, row)
    finally:
        s.close()


def _ingest_trials(admin_session, vault_dir: Path, tmp_path: Path, trials: int, seed: int) -> None:
    C.create_collection(admin_session, "docs")
    admin_session.close()
    z = zygote()
    rng = random.Random(seed)
    src = tmp_path / "src"
    docs = _documents(vault_dir)
    acked_total = 0
    for t in range(trials):
        ack = tmp_path / f"ingest-{t}.ack"
        child = z.fork(
            "ingest", vault_dir, ack, seed * 1000 + t, {"collection": "docs", "src": str(src), "tag": f"t{t}"}
        )
        _kill_at_random(child, ack, rng, 4.0)
        acks = read_acks(ack)
        assert not acks.errors, (acks.errors, Path(f"{ack}.log").read_text()[-2000:])
        for op in acks.acked:
            docs = _apply_docs(docs, op)
        actual = _documents(vault_dir)
        if actual != docs:
            assert acks.inflight is not None, (actual, docs)
            # The operation in flight may have committed for any prefix of its documents (one
            # transaction each), but each document is wholly old or wholly new.
            for source in set(actual) | set(docs):
                if actual.get(source) != docs.get(source):
                    assert source in {d["source"] for d in acks.inflight["docs"]}, source
                    assert actual.get(source) == _apply_docs(docs, acks.inflight).get(source), source
        docs = actual
        _markers_found(vault_dir, acks.acked)
        check_vault_healthy(vault_dir, ("alice",))
        acked_total += len(acks.acked)
    record(
        "crash: kill -9 during ingest (add/update/remove)", trials, 0, acked=acked_total, documents=len(docs)
    )


def test_kill_during_ingest(admin_session, vault_dir, tmp_path):
    _ingest_trials(admin_session, vault_dir, tmp_path, DEFAULT["ingest"], seed=41)


@pytest.mark.slow
def test_kill_during_ingest_many(admin_session, vault_dir, tmp_path):
    _ingest_trials(admin_session, vault_dir, tmp_path, SLOW["ingest"], seed=42)
