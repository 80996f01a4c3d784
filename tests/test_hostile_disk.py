"""Issue 12, full disk: ingest into a vault on a tiny tmpfs fails cleanly and the vault survives.

The test mounts a 16 MiB tmpfs (room for the vault and a write-ahead log
that may grow to 4 MiB before SQLite checkpoints it) (we run as root; skipped with the reason when
mounting is not permitted), puts a vault on it, fills most of the rest with a filler file, then
ingests more than fits through the real CLI. It must stop with a one-line error and a non-zero exit,
and after the filler is deleted the vault must open, check, verify, hold only whole documents, and
take a new ingest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import PASSPHRASES
from hostile_helpers import check_vault_healthy, doc_text, record


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt: Path, leave_kib: int) -> Path:
    """A filler file taking all but ``leave_kib`` of the free space."""
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize
    filler = mnt / "filler.bin"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave_kib * 1024))
    return filler


def _disk_full_round(cli, tmp_path: Path, mnt: Path, r: int, leave_kib: int, n_docs: int) -> dict[str, int]:
    vault = mnt / "vault"
    env = {"OFFLINE_VAULT": str(vault)}
    src = tmp_path / f"src-{r}"
    src.mkdir()
    for i in range(n_docs):
        (src / f"d{r}-{i}.txt").write_text(doc_text(f"d{r}x{i}", 1, 700))
    filler = _fill(mnt, leave_kib)
    res = cli(["--json", "ingest", str(src), "-c", "kb"], env=env)
    assert res.exit_code != 0, "the disk never filled up: lower leave_kib"
    assert res.stderr.startswith("Error: ") and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.output
    added = 0
    if res.stdout.strip():  # the report came out before the error line: failures are per file, one line each
        report = json.loads(res.stdout)
        added = len(report["added"])
        assert report["failed"], report
        for f in report["failed"]:
            assert "\n" not in f["reason"] and ("full" in f["reason"] or "space" in f["reason"]), f
    filler.unlink()  # space comes back
    info = check_vault_healthy(vault, ("alice", "bob"))
    assert info["kb"]["documents"] >= added
    res = cli(["--json", "ingest", str(src), "-c", "kb"], env=env)  # the same files, now with room
    assert res.exit_code == 0, res.output
    info = check_vault_healthy(vault, ("alice", "bob"))
    assert info["kb"]["documents"] >= n_docs * (r + 1)
    res = cli(["--json", "search", f"markerd{r}x0v1", "-c", "kb"], env=env)
    assert res.exit_code == 0 and json.loads(res.stdout)["hits"], res.output
    return {"added_before_full": added}


def _disk_full(cli, tmp_path: Path, mnt: Path, rounds: list[int]) -> None:
    from offline.vault import add_user, create_vault
    from offline.vault.collections import create_collection, grant

    s = create_vault(mnt / "vault", "alice", PASSPHRASES["alice"])
    add_user(s, "bob", "member", PASSPHRASES["bob"])
    create_collection(s, "kb")
    grant(s, "kb", "bob", "read")
    s.close()
    for r, leave in enumerate(rounds):
        _disk_full_round(cli, tmp_path, mnt, r, leave, n_docs=12)
    record("full disk: ingest on a small tmpfs filled up, then space freed", len(rounds), 0)


def test_ingest_on_a_full_disk_fails_cleanly(cli, tmp_path, small_fs):
    _disk_full(cli, tmp_path, small_fs, [96])


@pytest.mark.slow
def test_ingest_on_a_full_disk_many_fill_levels(cli, tmp_path, small_fs):
    # Different amounts of free space make the disk run out at different points of the write path
    # (chunk rows, vectors, FTS, WAL growth, the audit append at the end).
    _disk_full(cli, tmp_path, small_fs, [8, 24, 48, 64, 96, 128, 160, 200, 256, 320])
    shutil.rmtree(tmp_path / "src-0", ignore_errors=True)
