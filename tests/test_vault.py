"""Issue 3: the encrypted vault — keyslots, integrity, rekey, backup, nothing in clear."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import PASSPHRASES

from offline.errors import (
    AuthenticationFailed,
    InvalidInput,
    NotFound,
    OfflineError,
    UsageError,
    VaultCorrupted,
)
from offline.vault import change_passphrase, crypto, open_session
from offline.vault import collections as C
from offline.vault import maintenance as M
from offline.vault.migrations import VAULT_MIGRATIONS

CANARY = "CANARY-7f3e-PATIENT-Zebulon-Quixote"


def _put(session, coll: str, text: str) -> None:
    h = C.open_collection(session, coll, "write")
    from offline.vault.db import transaction

    with transaction(h.conn):
        cur = h.conn.execute(
            "INSERT INTO documents(source, name, sha256, size, ingested_at, ingested_by)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (f"/src/{random.random()}", "doc.txt", "0" * 64, len(text), "now", session.user),
        )
        h.conn.execute(
            "INSERT INTO chunks(doc_id, ord, text, token_count) VALUES (?, 0, ?, 1)", (cur.lastrowid, text)
        )


def _texts(session, coll: str) -> list[str]:
    return [
        r[0] for r in C.open_collection(session, coll).conn.execute("SELECT text FROM chunks ORDER BY id")
    ]


def test_round_trip_users_and_keys(admin_session, open_as, vault_dir):
    C.create_collection(admin_session, "legal")
    C.grant(admin_session, "legal", "bob", "read")
    _put(admin_session, "legal", "the retainer is 5000 EUR")
    bob = open_as("bob")
    assert bob.role == "member"
    assert _texts(bob, "legal") == ["the retainer is 5000 EUR"]
    header = json.loads((vault_dir / "header.json").read_text())
    assert set(header["slots"]) == {"alice", "bob", "carol"}
    for slot in header["slots"].values():
        assert slot["kdf"]["alg"] == "argon2id"
        assert slot["kdf"]["memory_kib"] >= 19 * 1024 and slot["kdf"]["iterations"] >= 2
    raw = (vault_dir / "header.json").read_text()
    for secret in PASSPHRASES.values():
        assert secret not in raw


def test_wrong_passphrase_and_unknown_user_cost_the_same(admin_session, vault_dir, monkeypatch):
    calls = []
    real = crypto.derive_kek
    monkeypatch.setattr(crypto, "derive_kek", lambda p, params: calls.append(params) or real(p, params))
    for user, pw in [("bob", "wrong-passphrase"), ("nobody", "whatever-pass")]:
        with pytest.raises(AuthenticationFailed) as exc:
            open_session(vault_dir, user, pw)
        assert str(exc.value) == f"authentication failed for user {user!r}: unknown user or wrong passphrase"
    assert len(calls) == 2
    # The unknown user paid for a real slot's parameters, not a cheaper dummy.
    assert calls[1].memory_kib == calls[0].memory_kib and calls[1].iterations == calls[0].iterations


def test_failed_unlock_is_audited_without_the_passphrase(admin_session, vault_dir, open_as):
    with pytest.raises(AuthenticationFailed):
        open_session(vault_dir, "bob", "not-the-pass-xyz")
    alice = open_as("alice")
    from offline.audit.chain import iter_entries

    entries = [e for e in iter_entries(alice.db) if e.action == "unlock.failed"]
    assert entries and entries[-1].payload["attempted_user"] == "bob"
    assert "not-the-pass-xyz" not in json.dumps([e.to_dict() for e in entries])
    assert not (vault_dir / "unlock-failures.jsonl").exists()


def test_passwd_rewraps_only_own_slot(admin_session, vault_dir):
    before = json.loads((vault_dir / "header.json").read_text())["slots"]
    change_passphrase(admin_session, "a-brand-new-passphrase")
    after = json.loads((vault_dir / "header.json").read_text())["slots"]
    assert after["bob"] == before["bob"] and after["carol"] == before["carol"]
    assert after["alice"]["sealed_keys"] != before["alice"]["sealed_keys"]
    with pytest.raises(AuthenticationFailed):
        open_session(vault_dir, "alice", PASSPHRASES["alice"])
    open_session(vault_dir, "alice", "a-brand-new-passphrase").close()


def test_bad_paths(tmp_path):
    with pytest.raises(NotFound, match="no vault at"):
        open_session(tmp_path / "missing", "alice", "x")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UsageError, match="is a file, not a vault folder"):
        open_session(f, "alice", "x")
    other = tmp_path / "other"
    other.mkdir()
    (other / "header.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(InvalidInput, match="is not an offline vault"):
        open_session(other, "alice", "x")


def test_newer_format_and_newer_migration_refused(admin_session, vault_dir):
    header = json.loads((vault_dir / "header.json").read_text())
    header["version"] = 99
    (vault_dir / "header.json").write_text(json.dumps(header))
    with pytest.raises(OfflineError, match="format version 99 is newer than this kit supports"):
        open_session(vault_dir, "alice", PASSPHRASES["alice"])
    header["version"] = 1
    (vault_dir / "header.json").write_text(json.dumps(header))
    admin_session.db.execute("INSERT INTO schema_migrations VALUES ('9999_from_the_future', 'now')")
    with pytest.raises(VaultCorrupted, match="newer version of offline"):
        open_session(vault_dir, "alice", PASSPHRASES["alice"])


def test_migrations_are_recorded(admin_session):
    names = [r[0] for r in admin_session.db.execute("SELECT name FROM schema_migrations ORDER BY name")]
    assert names == sorted(n for n, _ in VAULT_MIGRATIONS)


def test_permissions(admin_session, vault_dir):
    C.create_collection(admin_session, "legal")
    _put(admin_session, "legal", "x")
    assert stat.S_IMODE(vault_dir.stat().st_mode) == 0o700
    for p in vault_dir.rglob("*"):
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o700 if p.is_dir() else 0o600), (p, oct(mode))


def _all_files_bytes(root: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in root.rglob("*") if p.is_file()]


def _tmp_files() -> set[Path]:
    """Files under the system temp dir; other processes come and go, so vanishing entries are fine."""
    out: set[Path] = set()
    for root, _dirs, files in os.walk(tempfile.gettempdir(), onerror=lambda e: None):
        out.update(Path(root) / f for f in files)
    return out


def test_canary_never_in_clear(admin_session, vault_dir):
    tmp_before = _tmp_files()
    C.create_collection(admin_session, "phi")
    for i in range(50):
        _put(admin_session, "phi", f"{CANARY} note {i} " + "x" * 500)
    # Search it through FTS so temp structures are exercised too.
    h = C.open_collection(admin_session, "phi")
    assert (
        h.conn.execute("SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH 'zebulon'").fetchone()[0] == 50
    )
    admin_session.audit("test.note", text=CANARY)  # the audit log is encrypted too
    needle = CANARY.encode()
    for path, data in _all_files_bytes(vault_dir):  # while open: includes -wal and -shm
        assert needle not in data, path
        assert not data.startswith(b"SQLite format 3"), path
    for p in _tmp_files() - tmp_before:
        if not str(p).startswith(str(vault_dir)):
            try:
                data = p.read_bytes()
            except OSError:
                continue
            assert needle not in data, p


@pytest.mark.parametrize("target", ["vault", "collection"])
def test_byte_flip_is_caught(admin_session, vault_dir, target, cli):
    C.create_collection(admin_session, "legal")
    for i in range(30):
        _put(admin_session, "legal", f"paragraph {i} " + "y" * 900)
    header = json.loads((vault_dir / "header.json").read_text())
    admin_session.close()
    path = (
        vault_dir / header["db_file"] if target == "vault" else next((vault_dir / "collections").glob("*.db"))
    )
    data = bytearray(path.read_bytes())
    offset = 4096 * 2 + 100 if len(data) > 4096 * 3 else len(data) // 2
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    result = cli(["vault", "check"])
    assert result.exit_code == 5, result.output
    assert path.name in result.output
    assert result.output.startswith("Error: ")
    assert result.output.count("\n") == 1


def test_flip_on_first_page_fails_open(admin_session, vault_dir, cli):
    header = json.loads((vault_dir / "header.json").read_text())
    admin_session.close()
    path = vault_dir / header["db_file"]
    data = bytearray(path.read_bytes())
    data[200] ^= 0xFF
    path.write_bytes(bytes(data))
    result = cli(["users", "list"])
    assert result.exit_code == 5
    assert (
        result.output
        == f"Error: {header['db_file']}: cannot be opened or authenticated (file is not a database)\n"
    )


def test_rekey_rotates_everything(admin_session, vault_dir, open_as):
    C.create_collection(admin_session, "legal")
    C.grant(admin_session, "legal", "bob", "read")
    _put(admin_session, "legal", "before rekey")
    old_header = json.loads((vault_dir / "header.json").read_text())
    old_coll = next((vault_dir / "collections").glob("*.db")).name
    M.rekey_vault(admin_session)
    new_header = json.loads((vault_dir / "header.json").read_text())
    assert new_header["db_file"] != old_header["db_file"]
    assert not (vault_dir / old_header["db_file"]).exists()
    assert not (vault_dir / "collections" / old_coll).exists()
    assert _texts(open_as("bob"), "legal") == ["before rekey"]
    from offline.audit.chain import verify

    assert verify(admin_session.db).entries > 5


REKEY_CHILD = """
import sys
from offline.vault import open_session
from offline.vault.maintenance import rekey_vault
s = open_session(sys.argv[1], "alice", sys.argv[2])
print("ready", flush=True)
while True:
    rekey_vault(s)
"""


def _rekey_kill_trials(admin_session, vault_dir, trials: int, seed: int) -> None:
    C.create_collection(admin_session, "legal")
    C.grant(admin_session, "legal", "bob", "read")
    for i in range(20):
        _put(admin_session, "legal", f"fact {i}")
    admin_session.close()
    rng = random.Random(seed)
    env = {**os.environ, "OFFLINE_KDF_TARGET_S": "0"}
    for _ in range(trials):
        child = subprocess.Popen(
            [sys.executable, "-c", REKEY_CHILD, str(vault_dir), PASSPHRASES["alice"]],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.0, 0.6))
        child.send_signal(signal.SIGKILL)
        child.wait()
        for user in ("alice", "bob"):
            s = open_session(vault_dir, user, PASSPHRASES[user])
            try:
                assert _texts(s, "legal") == [f"fact {i}" for i in range(20)]
            finally:
                s.close()
        s = open_session(vault_dir, "alice", PASSPHRASES["alice"])
        try:
            M.check_vault(s)
            live = {json.loads((vault_dir / "header.json").read_text())["db_file"]}
            assert {p.name for p in vault_dir.glob("vault-*.db")} == live  # orphans cleaned up
        finally:
            s.close()


def test_rekey_killed_at_random_points_still_opens(admin_session, vault_dir):
    _rekey_kill_trials(admin_session, vault_dir, trials=3, seed=1)


@pytest.mark.slow
def test_rekey_killed_many_times(admin_session, vault_dir):
    _rekey_kill_trials(admin_session, vault_dir, trials=60, seed=2)


def test_backup_during_concurrent_writes(admin_session, vault_dir, tmp_path):
    C.create_collection(admin_session, "legal")
    writer = open_session(vault_dir, "alice", PASSPHRASES["alice"])
    stop = threading.Event()
    written: list[int] = []

    def write_loop():
        i = 0
        while not stop.is_set():
            _put(writer, "legal", f"row {i}")
            written.append(i)
            i += 1

    t = threading.Thread(target=write_loop)
    t.start()
    time.sleep(0.3)
    try:
        M.backup_vault(admin_session, tmp_path / "backup")
    finally:
        stop.set()
        t.join()
        writer.close()
    b = open_session(tmp_path / "backup", "alice", PASSPHRASES["alice"])
    try:
        rows = _texts(b, "legal")
        # A consistent prefix of what was written: no gaps, no torn rows.
        assert rows == [f"row {i}" for i in range(len(rows))]
        assert 0 < len(rows) <= len(written)
        M.check_vault(b)
    finally:
        b.close()


def test_backup_refuses_non_empty_destination(admin_session, tmp_path):
    dest = tmp_path / "full"
    dest.mkdir()
    (dest / "x").write_text("x")
    with pytest.raises(UsageError, match="must be a new or empty folder"):
        M.backup_vault(admin_session, dest)


def test_cli_init_and_errors(tmp_path, cli, vault_dir):
    r = cli(["init"], env={"OFFLINE_NEW_PASSPHRASE": PASSPHRASES["alice"]})
    assert r.exit_code == 0, r.output
    r = cli(["init"], env={"OFFLINE_NEW_PASSPHRASE": PASSPHRASES["alice"]})
    assert r.exit_code == 1 and r.output == f"Error: a vault already exists at {vault_dir}\n"
    r = cli(["users", "list"], env={"OFFLINE_PASSPHRASE": "nope-nope-nope"})
    assert (
        r.exit_code == 3
        and r.output == "Error: authentication failed for user 'alice': unknown user or wrong passphrase\n"
    )
    r = cli(["--vault", str(tmp_path / "nowhere"), "users", "list"])
    assert (
        r.exit_code == 1
        and r.output == f"Error: no vault at {tmp_path / 'nowhere'} (create one with `offline init`)\n"
    )
