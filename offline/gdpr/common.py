"""Pieces every GDPR operation shares: subject ids, which collections to touch, private output files."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .. import config
from ..errors import UsageError
from ..vault.core import Session

SUBJECT_MAX = 128
BACKUP_RETENTION_KEY = "backup_retention_days"  # gdpr_settings key, in days


def check_subject(subject: str) -> str:
    """A subject id as ingest stores it: 1-128 printable characters, surrounding space removed."""
    s = str(subject or "").strip()
    if not s or len(s) > SUBJECT_MAX or any(ord(ch) < 32 for ch in s):
        raise UsageError(f"invalid subject id {subject!r}: 1-{SUBJECT_MAX} printable characters")
    return s


def subject_ref(session: Session, subject: str) -> str:
    """How the audit log names ``subject``: sealed to the admins' and auditors' audit seal key.

    The audit chain cannot be edited (so it cannot forget); it records that a subject was exported
    or erased without the identifier in clear. A hash would not do: any member who guesses the id
    could confirm it. Old entries may hold ``s1:`` hashes (see :func:`subject_ref_matches`).
    """
    from ..vault.core import seal_for_auditors

    return seal_for_auditors(session, subject)


def subject_ref_matches(session: Session, ref: str, subject: str) -> bool:
    """Whether a recorded reference names ``subject`` (admins and auditors open sealed ones)."""
    if ref.startswith("s1:"):
        data = f"offline/gdpr/subject/v1|{session.vault_id}|{subject}".encode()
        return ref == "s1:" + hashlib.sha256(data).hexdigest()
    from ..vault.core import unseal_for_auditors

    return unseal_for_auditors(session, ref) == subject


def writable_collections(session: Session) -> list[str]:
    """Names of collections the caller holds a write grant on."""
    if session.role == "auditor":
        return []
    return [
        r[0]
        for r in session.db.execute(
            "SELECT c.name FROM collections c JOIN grants g ON g.collection_id = c.id"
            " WHERE g.user = ? AND g.perm = 'write' ORDER BY c.name",
            (session.user,),
        )
    ]


def label_clause(labels: frozenset[str] | None, column: str = "d.label") -> tuple[str, list[str]]:
    """SQL restricting documents to a label-limited grant ('' clause when every label is allowed)."""
    if labels is None:
        return "", []
    if not labels:
        return " AND 0", []
    return f" AND {column} IN ({','.join('?' * len(labels))})", sorted(labels)


_DOC_COLUMNS = (
    "d.id, d.source, d.name, d.sha256, d.size, d.label, d.mime, d.ingested_at, d.ingested_by, d.meta"
)


def _doc_rows(rows: list[tuple]) -> list[dict[str, Any]]:
    return [
        {
            "doc_id": r[0],
            "source": r[1],
            "name": r[2],
            "sha256": r[3],
            "size": r[4],
            "label": r[5],
            "mime": r[6],
            "ingested_at": r[7],
            "ingested_by": r[8],
            "meta": _json_or_raw(r[9]),
        }
        for r in rows
    ]


def subject_documents(conn: Any, subject: str, labels: frozenset[str] | None) -> list[dict[str, Any]]:
    """Documents tagged with ``subject`` that a grant limited to ``labels`` may see."""
    clause, params = label_clause(labels)
    return _doc_rows(
        conn.execute(
            f"SELECT {_DOC_COLUMNS} FROM documents d JOIN doc_subjects s ON s.doc_id = d.id"
            " WHERE s.subject = ?" + clause + " ORDER BY d.id",
            [subject, *params],
        ).fetchall()
    )


def document_rows(conn: Any, doc_ids: list[int], labels: frozenset[str] | None) -> list[dict[str, Any]]:
    """The given documents (those a grant limited to ``labels`` may see), by id."""
    if not doc_ids:
        return []
    clause, params = label_clause(labels)
    marks = ",".join("?" * len(doc_ids))
    return _doc_rows(
        conn.execute(
            f"SELECT {_DOC_COLUMNS} FROM documents d WHERE d.id IN ({marks})" + clause + " ORDER BY d.id",
            [*doc_ids, *params],
        ).fetchall()
    )


def _json_or_raw(text: str | None) -> Any:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return text


def parse_ts(text: str) -> _dt.datetime:
    """An ISO timestamp from the vault (always UTC) as an aware datetime."""
    moment = _dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=_dt.UTC)


def parse_date(text: str) -> _dt.date | None:
    """A calendar date written as ISO (``2024-05-02``, also with a time) or day first (``02/05/2024``)."""
    t = str(text or "").strip()
    try:
        return _dt.datetime.fromisoformat(t.replace("Z", "+00:00")).date()
    except ValueError:
        pass
    for fmt in ("%d/%m/%Y", "%d.%m.%Y", "%d-%m-%Y", "%d %B %Y", "%d %b %Y"):
        try:
            return _dt.datetime.strptime(t, fmt).date()
        except ValueError:
            continue
    return None


def utc_now_dt() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def private_output_dir(path: Path | str | None, *, default: Path | None = None) -> Path:
    """``path`` (created 0700 when new) or ``default``; refuses a file where a folder is needed."""
    target = Path(path) if path is not None else (default or Path.cwd())
    if target.exists() and not target.is_dir():
        raise UsageError(f"{target} is a file, not a folder")
    if not target.exists():
        config.ensure_private_dir(target)
    return target


def write_private_json(path: Path, data: Any) -> None:
    config.write_private_file(
        path, (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    )


def write_private_text(path: Path, text: str) -> None:
    config.write_private_file(path, text.encode("utf-8"))


def new_file(folder: Path, name: str) -> Path:
    """``folder/name``, refusing to overwrite an existing file (exports and receipts are records)."""
    path = folder / name
    if path.exists() or os.path.islink(path):
        raise UsageError(f"{path} already exists; choose another folder")
    return path


def backup_retention_days(session: Session) -> int | None:
    """How long backups are kept (days, as the signed gdpr_settings hold it), or None if unset."""
    row = session.policy.row("gdpr_settings", BACKUP_RETENTION_KEY)
    return int(row["value"]) if row else None
