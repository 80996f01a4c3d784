"""The one place that opens a vault database.

Every SQLCipher connection in the kit comes from :func:`connect`: raw 256-bit key, sqlite-vec
loaded, FTS5 checked, WAL, ``secure_delete``, ``temp_store=MEMORY`` and a page cache big enough to
keep the vector index decrypted in memory (with SQLCipher's default cache every KNN re-decrypts every
page: ~10x slower at 100k x 384). Migrations are applied in one transaction on open.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import sqlcipher3
from sqlcipher3 import dbapi2

from ..errors import NotFound, VaultCorrupted
from .migrations import apply_migrations

Kind = Literal["vault", "collection"]
Connection = dbapi2.Connection
DatabaseError = dbapi2.DatabaseError
OperationalError = dbapi2.OperationalError

# Negative cache_size is KiB: ~400 MB at most, allocated only as pages are read.
CACHE_KIB = 400_000
BUSY_TIMEOUT_MS = 30_000
_fts5_checked = False


def _check_fts5(conn: Connection) -> None:
    global _fts5_checked
    if _fts5_checked:
        return
    try:
        conn.execute("CREATE VIRTUAL TABLE temp.__fts5_probe USING fts5(x)")
        conn.execute("DROP TABLE temp.__fts5_probe")
    except DatabaseError as exc:  # pragma: no cover - depends on the build
        raise VaultCorrupted(f"this SQLCipher build lacks FTS5: {exc}") from None
    _fts5_checked = True


def connect(
    path: Path,
    key: bytes,
    kind: Kind,
    *,
    create: bool = False,
    migrate: bool = True,
) -> Connection:
    """Open (or create) an encrypted database with ``key`` and bring its schema up to date.

    Raises :class:`NotFound` if the file is missing and ``create`` is false, and
    :class:`VaultCorrupted` if the key does not open it or its pages fail authentication.
    """
    path = Path(path)
    if not create and not path.is_file():
        raise NotFound(f"vault database missing: {path.name}")
    if create:
        # SQLCipher creates files with the process umask; make the file 0600 before any page lands.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(path, 0o600)
    conn = sqlcipher3.connect(
        str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    try:
        # SQLCipher would print its own multi-line errors to stderr; ours are one line.
        conn.execute("PRAGMA cipher_log_level = NONE")
        conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
        # The first read decrypts page 1: a wrong key or a damaged header fails here.
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL").fetchone()
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA secure_delete = ON")
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        conn.execute("PRAGMA foreign_keys = ON")
        _load_vec(conn)
        _check_fts5(conn)
        if migrate:
            apply_migrations(conn, kind)
    except DatabaseError as exc:
        conn.close()
        raise VaultCorrupted(f"{path.name}: cannot be opened or authenticated ({_short(exc)})") from None
    return conn


def _load_vec(conn: Connection) -> None:
    import sqlite_vec

    conn.enable_load_extension(True)
    try:
        sqlite_vec.load(conn)
    finally:
        conn.enable_load_extension(False)


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:120] if str(exc) else exc.__class__.__name__


@contextlib.contextmanager
def transaction(conn: Connection, *, retries: int = 50) -> Iterator[Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error.

    Taking the write lock up front means a busy database waits (busy_timeout) instead of failing
    half-way; a lock that still will not come is retried with backoff before giving up.
    """
    for attempt in range(retries):
        try:
            conn.execute("BEGIN IMMEDIATE")
            break
        except OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            time.sleep(min(0.05 * (attempt + 1), 1.0))
    else:
        conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


def integrity_check(conn: Connection) -> list[str]:
    """SQLCipher's HMAC check of every page plus SQLite's structural check; [] when healthy."""
    problems: list[str] = []
    try:
        problems += [r[0] for r in conn.execute("PRAGMA cipher_integrity_check").fetchall()]
        rows = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
        problems += [r for r in rows if r != "ok"]
    except DatabaseError as exc:
        problems.append(_short(exc))
    return problems
