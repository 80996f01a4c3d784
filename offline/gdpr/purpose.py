"""The purpose (and legal basis) for which a collection's personal data is processed (Art. 13-15, 30)."""

from __future__ import annotations

from typing import Any

from ..errors import NotFound, UsageError
from ..vault.core import Session

MAX_TEXT = 500


def _clean(kind: str, text: str | None) -> str | None:
    if text is None:
        return None
    value = " ".join(str(text).split())
    if not value:
        return None
    if len(value) > MAX_TEXT:
        raise UsageError(f"the {kind} is too long (at most {MAX_TEXT} characters)")
    return value


def set_purpose(
    session: Session, collection: str, purpose: str | None, legal_basis: str | None = None
) -> dict[str, Any]:
    """Record why a collection's data is processed, and on which legal basis (admin)."""
    session.require_role("admin", action="setting processing purposes")
    purpose, legal_basis = _clean("purpose", purpose), _clean("legal basis", legal_basis)
    with session.change(
        "gdpr.purpose.set", severity="notice", collection=collection, purpose=purpose, legal_basis=legal_basis
    ):
        cur = session.db.execute(
            "UPDATE collections SET purpose = ?, legal_basis = ? WHERE name = ?",
            (purpose, legal_basis, collection),
        )
        if cur.rowcount == 0:
            raise NotFound(f"no such collection: {collection!r}")
    return {"collection": collection, "purpose": purpose, "legal_basis": legal_basis}


def purpose_of(session: Session, collection: str) -> dict[str, Any]:
    row = session.db.execute(
        "SELECT purpose, legal_basis FROM collections WHERE name = ?", (collection,)
    ).fetchone()
    return {"purpose": row[0] if row else None, "legal_basis": row[1] if row else None}
