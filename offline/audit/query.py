"""Reading the audit log: filters, time parsing and ``audit tail``, with the role rules applied here.

Admins and auditors read every entry. Members read only entries they wrote themselves; asking for
someone else's is refused (and the refusal is itself audited).
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import AccessDenied, ParameterError, UsageError
from . import chain

if TYPE_CHECKING:
    from ..vault.core import Session

READ_ALL_ROLES = ("admin", "auditor")
_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
MAX_TAIL = 100_000


def parse_time(text: str, *, now: _dt.datetime | None = None) -> str:
    """``--since``/``--until`` values -> the stored timestamp format (UTC, microseconds).

    Accepts ISO 8601 dates or date-times (``2025-01-31``, ``2025-01-31T09:30``, ``...Z``,
    ``...+02:00``; no offset means UTC) or a relative age: ``90s``, ``15m``, ``2h``, ``7d``, ``1w``.
    """
    value = text.strip()
    m = _RELATIVE.match(value)
    if m:
        now = now or _dt.datetime.now(_dt.UTC)
        moment = now - _dt.timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    else:
        try:
            moment = _dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise UsageError(
                f"invalid time {text!r}: use ISO 8601 (2025-01-31, 2025-01-31T09:30Z) "
                "or an age like 15m, 2h, 7d"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=_dt.UTC)
    # Same shape as chain._utc_now(), so string comparison in SQL is time order.
    return moment.astimezone(_dt.UTC).isoformat(timespec="microseconds")


@dataclass
class Filters:
    """Which entries to read. ``since`` is inclusive, ``until`` exclusive; ``severity`` is a minimum."""

    user: str | None = None
    action: str | None = None
    since: str | None = None
    until: str | None = None
    severity: str | None = None

    @classmethod
    def parse(
        cls,
        *,
        user: str | None = None,
        action: str | None = None,
        since: str | None = None,
        until: str | None = None,
        severity: str | None = None,
    ) -> Filters:
        if severity is not None and severity not in chain.SEVERITIES:
            raise UsageError(f"unknown severity {severity!r} (one of: {', '.join(chain.SEVERITIES)})")
        return cls(
            user=user or None,
            action=action or None,
            since=parse_time(since) if since else None,
            until=parse_time(until) if until else None,
            severity=severity,
        )

    def sql(self) -> tuple[str, list[Any]]:
        """A WHERE clause (bound parameters only) for :func:`chain.iter_entries`."""
        clauses: list[str] = []
        params: list[Any] = []
        if self.user is not None:
            clauses.append("user = ?")
            params.append(self.user)
        if self.action is not None:
            # "grant" matches grant.add and grant.revoke; "grant.add" matches only itself.
            clauses.append("(action = ? OR action LIKE ? ESCAPE '\\')")
            params += [self.action, _like_prefix(self.action) + ".%"]
        if self.since is not None:
            clauses.append("ts >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append("ts < ?")
            params.append(self.until)
        if self.severity is not None:
            allowed = chain.SEVERITIES[chain.SEVERITIES.index(self.severity) :]
            clauses.append(f"severity IN ({', '.join('?' * len(allowed))})")
            params += list(allowed)
        return " AND ".join(clauses), params

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def scoped_filters(session: Session, filters: Filters) -> Filters:
    """Apply the role rule: members are pinned to their own entries."""
    if session.role in READ_ALL_ROLES:
        return filters
    if filters.user is not None and filters.user != session.user:
        session.audit(
            "access.denied",
            severity="warning",
            what="reading another user's audit entries",
            reason=f"role {session.role}",
        )
        raise AccessDenied("access denied: members can read only their own audit entries")
    return Filters(**{**filters.__dict__, "user": session.user})


def select_entries(
    session: Session, filters: Filters, *, limit: int | None = None, newest_first: bool = False
) -> list[chain.Entry]:
    """Entries matching ``filters`` that the caller may read (role rule applied)."""
    where, params = scoped_filters(session, filters).sql()
    return list(chain.iter_entries(session.db, where, params, descending=newest_first, limit=limit))


def tail(session: Session, n: int = 20, **filters: str | None) -> list[dict[str, Any]]:
    """The last ``n`` matching entries, oldest first, as dicts (``audit tail``)."""
    if n < 1 or n > MAX_TAIL:
        raise ParameterError(f"{{n}} must be between 1 and {MAX_TAIL}", "n")
    f = Filters.parse(**filters)
    entries = select_entries(session, f, limit=n, newest_first=True)
    entries.reverse()
    history = session.verifier.key_history
    for e in entries:  # what is shown is checked, even below the head the client verified
        chain.check_entry(e, history.get(e.user, []))
    session.audit("audit.tail", count=len(entries), filters=f.to_dict())
    return [e.to_dict() for e in entries]
