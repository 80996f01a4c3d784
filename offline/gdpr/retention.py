"""Retention periods (per collection, per label) and applying them: expired documents are erased.

A document's period is the shortest that applies to it: its collection's ``retention_days`` and its
label's rule. It expires ``days`` after its own date when ingest found one (PDF/DOCX metadata, or
a CSV/JSON ``--date-field``), else after it was *first* ingested (kept when the same content is
ingested again or moved), so re-ingesting never resets the clock. Periods are written ``30d``,
``6m``, ``8y``. ``apply_retention`` erases what expired
through the same path as a subject erasure, so each run leaves a verifiable receipt.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from pathlib import Path
from typing import Any

from ..errors import AccessDenied, NotFound, ParameterError, UsageError
from ..vault.collections import open_collection
from ..vault.core import Session, check_name, utc_now
from .common import BACKUP_RETENTION_KEY, backup_retention_days, parse_ts, utc_now_dt, writable_collections
from .erase import erase_documents

MAX_DAYS = 365 * 100
_PERIOD = re.compile(r"^\s*(\d{1,6})\s*([dwmy]?)\s*$", re.IGNORECASE)
# Months and years are stored as days, rounded up (8y -> 2922 days): a legal minimum such as
# "keep records 8 years" is never cut short by a leap year.
_UNIT_DAYS = {"": 1.0, "d": 1.0, "w": 7.0, "m": 365.25 / 12, "y": 365.25}


def parse_period(text: str | int) -> int:
    """``30``, ``30d``, ``2w``, ``6m``, ``8y`` -> days; anything else raises :class:`UsageError`."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    m = _PERIOD.match(str(text))
    if not m:
        raise UsageError(f"not a retention period: {text!r} (use e.g. 30d, 6m, 8y)")
    return math.ceil(int(m.group(1)) * _UNIT_DAYS[m.group(2).lower()])


def _check_days(days: int | str | None) -> int | None:
    if days is None:
        return None
    if isinstance(days, str):
        days = parse_period(days)
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise UsageError(f"retention must be a whole number of days between 1 and {MAX_DAYS}")
    return days


def set_retention(
    session: Session, *, collection: str | None = None, label: str | None = None, days: int | None
) -> dict[str, Any]:
    """Set (or with ``days=None`` clear) the retention of a collection or of a label (admin)."""
    session.require_role("admin", action="setting retention")
    if (collection is None) == (label is None):
        raise ParameterError("give exactly one of {collection} or {label}", "collection", "label")
    days = _check_days(days)
    target = {"collection": collection} if collection is not None else {"label": label}
    if label is not None:
        check_name("label", label)
    with session.change("gdpr.retention.set", severity="notice", days=days, **target):
        if collection is not None:
            cur = session.db.execute(
                "UPDATE collections SET retention_days = ? WHERE name = ?", (days, collection)
            )
            if cur.rowcount == 0:
                raise NotFound(f"no such collection: {collection!r}")
        elif days is None:
            session.db.execute("DELETE FROM retention_labels WHERE label = ?", (label,))
        else:
            session.db.execute(
                "INSERT OR REPLACE INTO retention_labels(label, days, set_by, set_at) VALUES (?, ?, ?, ?)",
                (label, days, session.user, utc_now()),
            )
    return {**target, "days": days}


def set_backup_retention(session: Session, days: int | None) -> dict[str, Any]:
    """How long backups are kept (admin): erasure receipts say until when a backup still holds data."""
    session.require_role("admin", action="setting backup retention")
    days = _check_days(days)
    with session.change("gdpr.retention.set", severity="notice", backups=True, days=days):
        if days is None:
            session.db.execute("DELETE FROM gdpr_settings WHERE key = ?", (BACKUP_RETENTION_KEY,))
        else:
            session.db.execute(
                "INSERT OR REPLACE INTO gdpr_settings(key, value) VALUES (?, ?)",
                (BACKUP_RETENTION_KEY, str(days)),
            )
    return {"backups": True, "days": days}


def retention_policy(session: Session, collections: list[str] | None = None) -> dict[str, Any]:
    """Every retention rule in force (collections the caller may see, all label rules, backups).

    ``collections`` limits the collection rules shown (label and backup rules apply everywhere).
    """
    if session.role == "admin" or session.role == "auditor":
        rows = session.db.execute("SELECT name, retention_days FROM collections ORDER BY name").fetchall()
    else:
        rows = session.db.execute(
            "SELECT c.name, c.retention_days FROM collections c JOIN grants g ON g.collection_id = c.id"
            " WHERE g.user = ? ORDER BY c.name",
            (session.user,),
        ).fetchall()
    if collections:
        unknown = sorted(set(collections) - {n for n, _ in rows})
        if unknown:
            raise AccessDenied(f"access denied: collection {unknown[0]!r}")
        rows = [r for r in rows if r[0] in collections]
    labels = session.db.execute(
        "SELECT label, days, set_by, set_at FROM retention_labels ORDER BY label"
    ).fetchall()
    return {
        "collections": [{"collection": n, "days": d} for n, d in rows],
        "labels": [{"label": lb, "days": d, "set_by": by, "set_at": at} for lb, d, by, at in labels],
        "backups_days": backup_retention_days(session),
    }


def effective_days(policy: dict[str, Any], collection: str, label: str) -> int | None:
    """The shortest period applying to a document of ``label`` in ``collection`` (None: keep)."""
    found = [c["days"] for c in policy["collections"] if c["collection"] == collection and c["days"]]
    found += [r["days"] for r in policy["labels"] if r["label"] == label and label]
    return min(found) if found else None


def retention_start(doc: dict[str, Any]) -> str:
    """When a document's retention clock started: its own date (``meta.document_date``, found at
    ingest), else its first ingest (``meta.first_ingested_at``, kept across re-ingests), else
    ``ingested_at``. So re-ingesting unchanged content never resets the clock."""
    meta = doc.get("meta") if isinstance(doc.get("meta"), dict) else {}
    return str(meta.get("document_date") or meta.get("first_ingested_at") or doc["ingested_at"])


def expires_at(ingested_at: str, days: int | None) -> str | None:
    if days is None:
        return None
    return (parse_ts(ingested_at) + _dt.timedelta(days=days)).isoformat(timespec="seconds")


def expired_documents(
    session: Session, handle: Any, policy: dict[str, Any], now: _dt.datetime
) -> list[dict[str, Any]]:
    """Documents of an open collection whose retention period has run out at ``now``."""
    from .common import label_clause

    clause, params = label_clause(handle.labels)
    out = []
    import json

    for doc_id, sha, label, size, ingested, meta in handle.conn.execute(
        "SELECT d.id, d.sha256, d.label, d.size, d.ingested_at, d.meta FROM documents d WHERE 1"
        + clause
        + " ORDER BY d.id",
        params,
    ):
        days = effective_days(policy, handle.name, label)
        try:
            start = retention_start({"ingested_at": ingested, "meta": json.loads(meta or "{}")})
        except ValueError:
            start = ingested
        if days is not None and parse_ts(start) + _dt.timedelta(days=days) <= now:
            out.append(
                {
                    "doc_id": doc_id,
                    "sha256": sha,
                    "label": label,
                    "size": size,
                    "ingested_at": ingested,
                    "retention_days": days,
                }
            )
    return out


def apply_retention(
    session: Session,
    *,
    collections: list[str] | None = None,
    receipt_dir: Path | str | None = None,
    dry_run: bool = False,
    now: _dt.datetime | None = None,
) -> dict[str, Any]:
    """Erase every expired document in the collections the caller may write; one receipt per run.

    ``dry_run`` lists what would go without touching anything. Needs a write grant per collection
    (a label-limited grant covers only its labels); admins are told which collections were skipped.
    """
    session.require_role("admin", "member", action="applying retention")  # auditors never modify documents
    now = now or utc_now_dt()
    policy = retention_policy(session)
    names = list(dict.fromkeys(collections)) if collections else writable_collections(session)
    plan = []
    for name in names:
        handle = open_collection(session, name, "write")
        docs = expired_documents(session, handle, policy, now)
        if docs:
            plan.append((handle, docs))
    summary: dict[str, Any] = {
        "dry_run": dry_run,
        "at": now.isoformat(timespec="seconds"),
        "expired": [
            {"collection": h.name, "documents": len(d), "doc_ids": [x["doc_id"] for x in d]} for h, d in plan
        ],
    }
    if dry_run or not plan:
        session.audit(
            "gdpr.retention.apply", dry_run=dry_run, expired={h.name: len(d) for h, d in plan}, erased=0
        )
        summary["receipt"] = None
        return summary
    receipt = erase_documents(
        session,
        [(h, [d["doc_id"] for d in docs]) for h, docs in plan],
        kind="retention",
        reason="retention period expired",
        receipt_dir=receipt_dir,
        considered=names if collections is None else None,
    )
    session.audit(
        "gdpr.retention.apply",
        dry_run=False,
        expired={h.name: len(d) for h, d in plan},
        erased=receipt["totals"]["documents"],
        receipt_id=receipt["receipt_id"],
    )
    summary["receipt"] = receipt
    return summary
