"""What the server saw but could not sign yet: failed token attempts and 429s, in its own memory.

A request whose token opens nothing has no key to sign with, and a 429 is answered before any
session is opened (refusing must stay cheap). The vault folder is no place to keep them until a
session can sign them: every member can write there, delete the park file before it is flushed or
plant records in it. The server's memory is out of their reach, so these reports wait here and
are signed by the next request that holds a valid session (:meth:`Reports.flush`), each marked
``reported_by: server``.

Bounded, so a flood cannot grow memory or the log without limit: reports are aggregated per
(kind, who, client address, endpoint) with a count, first and last time; at most
:data:`MAX_KEYS` distinct ones are held (more are only counted, and that count is signed as one
``server.reports_dropped`` entry); one flush signs at most :data:`PER_FLUSH` entries.
"""

from __future__ import annotations

import datetime as _dt
import threading
from typing import Any

from ..vault.session import Session

MAX_KEYS = 4096
PER_FLUSH = 64


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


class Reports:
    """Failed token attempts (``failed``) and rate-limited requests (``busy``), aggregated."""

    def __init__(self, max_keys: int = MAX_KEYS, per_flush: int = PER_FLUSH):
        self.max_keys, self.per_flush = int(max_keys), int(per_flush)
        self._recs: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self._dropped: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, kind: str, who: str, client: str, endpoint: str = "") -> None:
        key = (kind, str(who)[:80], str(client)[:80], str(endpoint)[:80])
        now = _now()
        with self._lock:
            rec = self._recs.get(key)
            if rec is None:
                if len(self._recs) >= self.max_keys:
                    self._dropped[kind] = self._dropped.get(kind, 0) + 1
                    return
                rec = self._recs[key] = {"count": 0, "first": now}
            rec["count"] += 1
            rec["last"] = now

    def pending(self) -> bool:
        with self._lock:
            return bool(self._recs or self._dropped)

    def _take(
        self, token_id: str
    ) -> tuple[list[tuple[tuple[str, str, str, str], dict[str, Any]]], dict[str, int]]:
        """Up to ``per_flush`` reports, this token's own 429s first."""
        with self._lock:
            keys = sorted(
                self._recs, key=lambda k: (not (k[0] == "busy" and k[1] == token_id), self._recs[k]["first"])
            )
            taken = [(k, self._recs.pop(k)) for k in keys[: self.per_flush]]
            dropped, self._dropped = self._dropped, {}
        return taken, dropped

    def _put_back(self, items: list[tuple[tuple[str, str, str, str], dict[str, Any]]]) -> None:
        with self._lock:
            for k, rec in items:
                old = self._recs.get(k)
                if old is None:
                    self._recs[k] = rec
                else:
                    old["count"] += rec["count"]
                    old["first"] = min(old["first"], rec["first"])

    def flush(self, session: Session, token_id: str) -> None:
        """Sign the pending reports under ``session`` (a valid token's, ``token_id``).

        A 429 of this very token becomes the ``server.request`` entry it would have had
        (``status: 429``); anything else is a report about others: ``unlock.failed`` for a token
        that opened nothing, ``server.request`` with ``token_id: "unproven"`` for a 429 of a token
        the server has not seen open yet. Reports that cannot be signed now wait for the next one.
        """
        if not self.pending():
            return
        taken, dropped = self._take(token_id)
        done = 0
        try:
            for (kind, who, client, endpoint), rec in taken:
                common = {
                    "client": client,
                    "count": rec["count"],
                    "first": rec["first"],
                    "last": rec["last"],
                    "reported_by": "server",
                }
                if kind == "busy":
                    session.audit(
                        "server.request",
                        severity="warning",
                        endpoint=endpoint,
                        status=429,
                        token_id=who,
                        **common,
                    )
                else:
                    session.audit(
                        "unlock.failed",
                        severity="warning",
                        attempted_user=who,
                        at=rec["first"],
                        via=client,
                        endpoint=endpoint,
                        **{k: v for k, v in common.items() if k != "client"},
                    )
                done += 1
            if dropped:
                session.audit(
                    "server.reports_dropped",
                    severity="warning",
                    counts=dropped,
                    reported_by="server",
                    why=f"more than {self.max_keys} distinct reports waiting",
                )
                dropped = {}
        finally:
            self._put_back(taken[done:])
            if dropped:
                with self._lock:
                    for k, n in dropped.items():
                        self._dropped[k] = self._dropped.get(k, 0) + n
