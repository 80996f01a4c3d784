"""Vault-wide maintenance: integrity check, online backup, full re-key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UsageError, VaultCorrupted
from . import db
from .core import Session


def check_vault(session: Session) -> dict[str, Any]:
    """Run SQLCipher's and SQLite's integrity checks on every database; raise on any damage."""
    files = []
    problems = db.integrity_check(session.db)
    if problems:
        raise VaultCorrupted(f"{session.header.db_file}: {problems[0]}")
    files.append(session.header.db_file)
    raise_if_bad = []
    for name in [r[0] for r in session.db.execute("SELECT name FROM collections ORDER BY name")]:
        from .collections import collection_key_for_admin

        if session.role != "admin":
            continue
        _, file, key = collection_key_for_admin(session, name)
        conn = db.connect(session.vault_dir / "collections" / file, key, "collection", migrate=False)
        try:
            bad = db.integrity_check(conn)
        finally:
            conn.close()
        if bad:
            raise_if_bad.append(f"collections/{file}: {bad[0]}")
        files.append(f"collections/{file}")
    if raise_if_bad:
        raise VaultCorrupted(raise_if_bad[0])
    return {"ok": True, "files": files}


def backup_vault(session: Session, dest: Path) -> dict[str, Any]:
    raise UsageError("vault backup is not available yet")


def rekey_vault(session: Session) -> dict[str, Any]:
    raise UsageError("vault rekey is not available yet")
