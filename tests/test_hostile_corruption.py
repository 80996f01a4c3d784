"""Issue 12, corruption: flipped bytes, truncated files, a lost -wal, swapped collection files.

Every case goes through the real CLI. The contract: a damaged file gives exit 5 and one line
``Error: <file>: ...`` naming it; nothing damaged is ever returned as if valid. A command may still
succeed when it never reads the damaged page (SQLCipher authenticates every page it reads), but then
its output must be byte-for-byte what the intact vault gives.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import pytest
from hostile_helpers import Spawned, flip_byte, record, wait_for

from offline.vault import collections as C
from offline.vault.db import transaction

PAGE = 4096


def _build(session, n_docs: int = 40) -> None:
    """Two collections of plain-text chunks (FTS by trigger; no vectors, so no model is needed)."""
    for coll in ("legal", "hr"):
        C.create_collection(session, coll)
        h = C.open_collection(session, coll, "write")
        for i in range(n_docs):
            with transaction(h.conn):
                cur = h.conn.execute(
                    "INSERT INTO documents(source, name, sha256, size, ingested_at, ingested_by)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (f"/src/{coll}/{i}.txt", f"{i}.txt", "0" * 64, 900, "now", "alice"),
                )
                h.conn.execute(
                    "INSERT INTO chunks(doc_id, ord, text, token_count) VALUES (?, 0, ?, 150)",
                    (cur.lastrowid, f"{coll} clause {i}: the zebra register is audited. " * 20),
                )


@pytest.fixture
def pristine(admin_session, vault_dir, tmp_path, offline_home):
    """A closed, checkpointed vault (no -wal) kept aside; ``restore()`` puts a fresh copy in place.

    Putting an older copy back is a rollback the clients' own memory would report (and should):
    each restore here is an accepted one, so that memory, kept outside the vault, goes too.
    """
    _build(admin_session)
    admin_session.close()
    keep = tmp_path / "pristine"
    shutil.copytree(vault_dir, keep)

    def restore() -> None:
        shutil.rmtree(vault_dir)
        shutil.copytree(keep, vault_dir)
        shutil.rmtree(offline_home / "seen", ignore_errors=True)

    return restore


def _files(vault_dir: Path) -> dict[str, Path]:
    header = json.loads((vault_dir / "header.json").read_text())
    out = {"vault": vault_dir / header["db_file"]}
    for coll, f in _catalog(vault_dir).items():
        out[coll] = vault_dir / "collections" / f
    return out


def _catalog(vault_dir: Path) -> dict[str, str]:
    from conftest import PASSPHRASES

    from offline.vault import open_session

    s = open_session(vault_dir, "alice", PASSPHRASES["alice"])
    try:
        return dict(s.db.execute("SELECT name, file FROM collections").fetchall())
    finally:
        s.close()


def _stable(result) -> object:
    """The data a command printed, without timings (which differ run to run)."""
    data = json.loads(result.stdout)
    if isinstance(data, dict):
        data.pop("timings", None)
    return data


READS = [
    ["--json", "search", "zebra register", "-c", "legal", "-c", "hr", "-k", "60"],
    ["--json", "docs", "list"],
    ["--json", "audit", "verify"],
]


def _assert_integrity_error(result, name: str) -> None:
    assert result.exit_code == 5, (result.exit_code, result.output)
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    assert name in result.output, (name, result.output)


def _baseline(cli, restore) -> list[object]:
    restore()
    out = []
    for args in READS:
        r = cli(args)
        assert r.exit_code == 0, r.output
        out.append(_stable(r))
    return out


def _damaged_reads(cli, name: str, baseline: list[object]) -> int:
    """Each read either fails with exit 5 naming ``name`` or returns exactly the intact answer."""
    failed = 0
    for args, want in zip(READS, baseline):
        r = cli(args)
        if r.exit_code == 0:
            got = _stable(r)
            if args[1] == "audit":  # the count grows with the entries this very loop appended
                got, want = (
                    {k: v for k, v in got.items() if k not in ("entries", "head_hash")},
                    {k: v for k, v in want.items() if k not in ("entries", "head_hash")},
                )
            assert got == want, f"{args}: damaged vault returned different data"
        else:
            _assert_integrity_error(r, name)
            failed += 1
    return failed


def _flip_trials(cli, restore, vault_dir: Path, offsets_per_file: int, every_page: bool, seed: int) -> int:
    rng = random.Random(seed)
    baseline = _baseline(cli, restore)
    trials = 0
    for target in ("vault", "legal"):
        restore()
        size = _files(vault_dir)[target].stat().st_size
        pages = (
            range(size // PAGE) if every_page else sorted(rng.sample(range(size // PAGE), offsets_per_file))
        )
        for page in pages:
            restore()
            path = _files(vault_dir)[target]
            flip_byte(path, page * PAGE + rng.randrange(PAGE))
            r = cli(["vault", "check"])
            _assert_integrity_error(r, path.name)  # the check reads every page: always caught
            restore()
            flip_byte(path, page * PAGE + rng.randrange(PAGE))
            _damaged_reads(cli, path.name, baseline)
            trials += 2
    return trials


def test_flipped_bytes(cli, pristine, vault_dir):
    n = _flip_trials(cli, pristine, vault_dir, offsets_per_file=3, every_page=False, seed=1)
    record("corruption: flipped byte (vault db, collection db)", n, 0)


@pytest.mark.slow
def test_flipped_bytes_every_page(cli, pristine, vault_dir):
    n = _flip_trials(cli, pristine, vault_dir, offsets_per_file=0, every_page=True, seed=2)
    record("corruption: flipped byte (vault db, collection db)", n, 0)


def _truncate_trials(cli, restore, vault_dir: Path, sizes_for) -> int:
    baseline = _baseline(cli, restore)
    trials = 0
    for target in ("vault", "legal"):
        restore()
        full = _files(vault_dir)[target].stat().st_size
        for size in sizes_for(full):
            restore()
            path = _files(vault_dir)[target]
            os.truncate(path, size)
            r = cli(["vault", "check"])
            _assert_integrity_error(r, path.name)
            _damaged_reads(cli, path.name, baseline)
            trials += 1
    return trials


def test_truncated_files(cli, pristine, vault_dir):
    # Empty (SQLite would take it for a new database), inside page 1, page boundaries, mid-page.
    n = _truncate_trials(cli, pristine, vault_dir, lambda full: [0, 1, 100, 3 * PAGE, full // 2 + 123])
    record("corruption: truncated file", n, 0)


@pytest.mark.slow
def test_truncated_files_every_page(cli, pristine, vault_dir):
    n = _truncate_trials(
        cli,
        pristine,
        vault_dir,
        lambda full: [0, 1, 17, 100, *range(PAGE, full, PAGE), *range(PAGE + 999, full, PAGE * 3)],
    )
    record("corruption: truncated file", n, 0)


def _wal_trial(cli, restore, vault_dir: Path, tmp_path: Path, which: str, i: int) -> None:
    """Kill a writer so -wal files exist, delete one -wal: the next command must refuse that file."""
    restore()
    ack = tmp_path / f"writer-{which}-{i}.ack"
    child = Spawned("writer", vault_dir, ack, i, {"collection": "legal"})
    wait_for(ack, lambda a: len(a.acked) >= 3, 120, "three committed writes", child.alive)
    time.sleep(random.Random(i).uniform(0, 0.3))
    child.kill()
    path = _files_from_disk(vault_dir)[which]
    wal = Path(f"{path}-wal")
    assert wal.exists() and Path(f"{path}-shm").exists(), "a killed writer leaves its -wal and -shm"
    wal.unlink()
    reads = READS if which == "vault" else READS[:2]  # audit verify never opens a collection
    for args in (["vault", "check"], *reads):
        r = cli(args)
        _assert_integrity_error(r, path.name)
        assert "-wal" in r.output


def _files_from_disk(vault_dir: Path) -> dict[str, Path]:
    # Without opening the vault (opening would refuse once the -wal is gone): the collection file
    # is the one a writer touched last.
    header = json.loads((vault_dir / "header.json").read_text())
    colls = sorted((vault_dir / "collections").glob("*.db"), key=lambda p: Path(f"{p}-wal").exists())
    return {"vault": vault_dir / header["db_file"], "legal": colls[-1]}


@pytest.mark.parametrize("which", ["legal", "vault"])
def test_missing_wal_after_a_crash(cli, pristine, vault_dir, tmp_path, which):
    _wal_trial(cli, pristine, vault_dir, tmp_path, which, 0)
    record("corruption: -wal deleted after kill -9 of a writer", 1, 0)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["legal", "vault"])
def test_missing_wal_after_a_crash_many(cli, pristine, vault_dir, tmp_path, which):
    for i in range(10):
        _wal_trial(cli, pristine, vault_dir, tmp_path, which, i + 1)
    record("corruption: -wal deleted after kill -9 of a writer", 10, 0)


def test_swapped_collection_files(cli, pristine, vault_dir):
    pristine()
    files = _files(vault_dir)
    a, b = files["legal"], files["hr"]
    tmp = a.with_name("swap.tmp")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    r = cli(["--json", "search", "zebra", "-c", "legal"])
    _assert_integrity_error(r, a.name)  # legal's key on hr's bytes: authentication fails
    r = cli(["--json", "docs", "list", "-c", "hr"])
    _assert_integrity_error(r, b.name)
    r = cli(["vault", "check"])
    assert r.exit_code == 5 and r.output.count("\n") == 1 and (a.name in r.output or b.name in r.output)
    record("corruption: two collection files swapped", 3, 0)


def test_header_damage_is_an_integrity_error(cli, pristine, vault_dir):
    pristine()
    head = vault_dir / "header.json"
    flip_byte(head, 0)  # the opening brace: no longer JSON
    r = cli(["users", "list"])
    _assert_integrity_error(r, "header.json")
    pristine()
    os.truncate(vault_dir / "header.json", 100)
    r = cli(["users", "list"])
    _assert_integrity_error(r, "header.json")
    record("corruption: header.json flipped or truncated", 2, 0)
