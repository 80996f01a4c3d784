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
from typing import Any, Literal

import sqlcipher3
from sqlcipher3 import dbapi2

from ..errors import NotFound, OfflineError, VaultCorrupted
from ..memwipe import wipe as crypto_wipe
from .migrations import VEC_DDL, VEC_TABLE, apply_migrations

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


# SQLite result texts that mean the file itself is damaged (SQLITE_CORRUPT, SQLITE_NOTADB) or the
# disk gave out (SQLITE_FULL, SQLITE_IOERR). Anything else (constraints, busy, syntax) passes through.
_DAMAGED = ("malformed", "not a database", "corrupt")
_DISK = ("disk is full", "disk i/o error")


def _translate(path: Path, exc: Exception) -> Exception:
    """A page that fails SQLCipher's HMAC mid-query becomes an integrity error naming the file."""
    text = str(exc).lower()
    # The plain DatabaseError class is what SQLITE_CORRUPT (and its variants, e.g. a damaged FTS5
    # or vec0 shadow table: "vtable constructor failed") and SQLITE_NOTADB map to.
    if type(exc) is DatabaseError or (isinstance(exc, DatabaseError) and any(m in text for m in _DAMAGED)):
        err = VaultCorrupted(f"{path.name}: damaged or tampered ({_short(exc)})")
        err.sqlite_message = _short(exc)  # type: ignore[attr-defined]
        return err
    if isinstance(exc, DatabaseError) and any(m in text for m in _DISK):
        return OfflineError(f"{path.name}: cannot write ({_short(exc)}); free some space and retry")
    return exc


class _Cursor(dbapi2.Cursor):
    """Rows are read lazily: damage can surface on any step, not only in ``execute``."""

    def execute(self, *args):  # type: ignore[override]
        try:
            return super().execute(*args)
        except DatabaseError as exc:
            raise _translate(self.connection._path, exc) from None

    def executemany(self, *args):  # type: ignore[override]
        try:
            return super().executemany(*args)
        except DatabaseError as exc:
            raise _translate(self.connection._path, exc) from None

    def __next__(self):
        try:
            return super().__next__()
        except DatabaseError as exc:
            raise _translate(self.connection._path, exc) from None

    def fetchone(self):
        try:
            return super().fetchone()
        except DatabaseError as exc:
            raise _translate(self.connection._path, exc) from None

    def fetchmany(self, *args):
        try:
            return super().fetchmany(*args)
        except DatabaseError as exc:
            raise _translate(self.connection._path, exc) from None

    def fetchall(self):
        try:
            return super().fetchall()
        except DatabaseError as exc:
            raise _translate(self.connection._path, exc) from None


class _Connection(dbapi2.Connection):
    """A connection whose cursors report file damage as :class:`VaultCorrupted` naming the file."""

    _path: Path = Path("?")

    def cursor(self, factory=_Cursor):  # type: ignore[override]
        return super().cursor(factory)

    def execute(self, *args):  # type: ignore[override]
        return self.cursor().execute(*args)

    def executemany(self, *args):  # type: ignore[override]
        return self.cursor().executemany(*args)


def _check_wal(path: Path) -> None:
    """Refuse a database whose -wal vanished after a crash: its committed tail would be lost silently.

    SQLite creates -wal before -shm and deletes -shm before -wal, so a -shm with no -wal never occurs
    in normal use; it means the write-ahead log (holding committed transactions) was removed.
    """
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    for _ in range(3):
        if wal.exists() or not shm.exists():
            return
        time.sleep(0.02)
    raise VaultCorrupted(
        f"{path.name}: its write-ahead log {wal.name} is missing (committed writes"
        " would be lost); restore the file or the vault from a backup"
    )


def enable_memory_security() -> None:
    """Have SQLCipher wipe every allocation it frees, for the rest of this process.

    SQLCipher always wipes its own key schedule; this also covers SQLite's copies of statement text
    (``PRAGMA key = "x'...'"``) and pages, which a long-lived process that drops keys must not leave
    in freed memory. It costs some speed (every free is a memset), so the team server turns it on,
    not every CLI command.
    """
    conn = sqlcipher3.connect(":memory:")
    try:
        conn.execute("PRAGMA cipher_memory_security = ON")
    finally:
        conn.close()


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
    if not create:
        # SQLCipher takes a file shorter than its 16-byte salt for a new, empty database: a vault
        # file truncated that far would silently reopen empty (and be re-migrated) instead of
        # failing. No real database is shorter than one page (512 bytes at the least).
        size = path.stat().st_size
        if size < 512:
            raise VaultCorrupted(f"{path.name}: truncated to {size} bytes; restore it from a backup")
        _check_wal(path)
    conn = sqlcipher3.connect(
        str(path),
        timeout=BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,
        check_same_thread=False,
        factory=_Connection,
    )
    conn._path = path
    conn._file_id = _file_id(path)
    try:
        # SQLCipher would print its own multi-line errors to stderr; ours are one line.
        conn.execute("PRAGMA cipher_log_level = NONE")
        hexkey = key.hex()
        stmt = f"PRAGMA key = \"x'{hexkey}'\""
        conn.execute(stmt)
        crypto_wipe(hexkey)
        crypto_wipe(stmt)
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
    except (DatabaseError, OfflineError) as exc:
        conn.close()
        if not isinstance(exc, (DatabaseError, VaultCorrupted)):
            raise
        why = getattr(exc, "sqlite_message", None) or _short(exc)
        raise VaultCorrupted(f"{path.name}: cannot be opened or authenticated ({why})") from None
    if migrate:
        try:
            check_schema(conn, kind, path.name)
        except BaseException:
            conn.close()
            raise
    return conn


_EXPECTED: dict[tuple[str, int | None], set[tuple[str, str, str, str | None]]] = {}


def _schema(conn: Any) -> set[tuple[str, str, str, str | None]]:
    rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    return {
        (str(t), str(n), str(tb), None if q is None else " ".join(str(q).split())) for t, n, tb, q in rows
    }


def expected_schema(kind: Kind, vec_dim: int | None = None) -> set[tuple[str, str, str, str | None]]:
    """The schema the kit's migrations (and, for a collection, its vector table) produce, built once
    in memory from the same SQL by the same SQLite."""
    key = (kind, vec_dim)
    if key not in _EXPECTED:
        mem = sqlcipher3.connect(":memory:", isolation_level=None, factory=_Connection)
        try:
            _load_vec(mem)
            apply_migrations(mem, kind)
            if vec_dim is not None:
                mem.execute(VEC_DDL.format(dim=int(vec_dim)))
            _EXPECTED[key] = _schema(mem)
        finally:
            mem.close()
    return _EXPECTED[key]


def check_schema(conn: Connection, kind: Kind, label: str) -> None:
    """Refuse a database whose schema is not exactly the kit's: no planted trigger, view or index.

    Every member holds the vault key, and every reader a collection's key, so either can run
    ``CREATE TRIGGER``. A trigger on ``grants`` would fire inside an admin's own signed change; one
    on ``documents`` could keep a copy of what an erasure deletes. Checked at every open, and
    around every authorization change.
    """
    dim = None
    if kind == "collection":
        has_vec = conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (VEC_TABLE,)).fetchone()
        row = conn.execute("SELECT value FROM meta WHERE key = 'embed_dim'").fetchone() if has_vec else None
        try:
            dim = int(row[0]) if row else (0 if has_vec else None)
        except (TypeError, ValueError):
            dim = 0
    have = _schema(conn)
    try:
        want = expected_schema(kind, dim or None) if dim != 0 else None
    except DatabaseError:
        want = None
    if want is None:
        raise VaultCorrupted(f"{label}: its vector table does not match its recorded dimension")
    extra = sorted(have - want, key=lambda r: (r[0], r[1]))
    missing = sorted(want - have, key=lambda r: (r[0], r[1]))
    if extra:
        raise VaultCorrupted(
            f"{label}: {extra[0][0]} {extra[0][1]!r} is not part of this kit's schema (added outside the kit)"
        )
    if missing:
        raise VaultCorrupted(
            f"{label}: {missing[0][0]} {missing[0][1]!r} of this kit's schema is missing or changed"
        )


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def write_locked(path: Path, key: bytes, kind: Kind) -> Iterator[None]:
    """Hold ``path``'s write lock (``BEGIN IMMEDIATE``) for a rotation: nobody commits to the old
    file while it is copied and retired; writers waiting then find it replaced (see transaction)."""
    conn = connect(path, key, kind, migrate=False)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
    finally:
        with contextlib.suppress(Exception):
            conn.execute("ROLLBACK")
        conn.close()


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
    path, opened = getattr(conn, "_path", None), getattr(conn, "_file_id", None)
    if path is not None and opened is not None and _file_id(path) != opened:
        # A key rotation held this lock, copied the file under a new key and removed this one:
        # whatever we wrote now would land in a deleted file and be lost.
        conn.execute("ROLLBACK")
        raise OfflineError(
            f"{Path(path).name} was re-keyed while this command ran; nothing was written, run it again"
        )
    try:
        yield conn
    except BaseException:
        # SQLite may already have rolled back (SQLITE_FULL, SQLITE_IOERR): a second ROLLBACK would
        # raise "no transaction is active" and hide the real error.
        if conn.in_transaction:
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
    except (DatabaseError, VaultCorrupted) as exc:
        problems.append(getattr(exc, "sqlite_message", None) or _short(exc))
    return problems
