"""Who received a subject's data: read back from the audit log's ``search`` and ``ask`` entries.

Retrieval writes chunk ids as ``"<collection>/<chunk rowid>"`` (``search``: ``hits``; ``ask``:
``retrieved`` and ``used``), so a chunk is matched exactly, with no need to keep query text.
"""

from __future__ import annotations

from typing import Any

from ..audit import chain
from ..vault.core import Session

RETRIEVAL_ACTIONS = ("search", "ask")


def _chunk_ids(action: str, payload: dict[str, Any]) -> set[str]:
    ids: set[str] = set()
    for key in ("hits", "retrieved"):
        for item in payload.get(key) or []:
            if isinstance(item, dict) and item.get("chunk_id") is not None:
                ids.add(str(item["chunk_id"]))
    for cid in payload.get("used") or []:
        ids.add(str(cid))
    return ids


def recipients(session: Session, chunk_keys: set[str]) -> dict[str, list[dict[str, Any]]]:
    """For each ``"<collection>/<id>"`` in ``chunk_keys``: the retrievals that returned it.

    Returns ``{chunk_key: [{user, action, ts, seq}]}``. Reads the log directly (not through
    ``audit tail``), because answering a subject's access request needs every retrieval.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    if not chunk_keys:
        return out
    marks = ",".join("?" * len(RETRIEVAL_ACTIONS))
    for e in chain.iter_entries(session.db, f"action IN ({marks})", RETRIEVAL_ACTIONS):
        hit = _chunk_ids(e.action, e.payload) & chunk_keys
        for key in hit:
            out.setdefault(key, []).append({"user": e.user, "action": e.action, "ts": e.ts, "seq": e.seq})
    return out


def summarise(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per user: how many retrievals, first and last time (oldest first by first time)."""
    by_user: dict[str, dict[str, Any]] = {}
    for ev in events:
        u = by_user.setdefault(
            ev["user"],
            {"user": ev["user"], "retrievals": 0, "first": ev["ts"], "last": ev["ts"], "actions": set()},
        )
        u["retrievals"] += 1
        u["first"] = min(u["first"], ev["ts"])
        u["last"] = max(u["last"], ev["ts"])
        u["actions"].add(ev["action"])
    rows = sorted(by_user.values(), key=lambda r: (r["first"], r["user"]))
    for r in rows:
        r["actions"] = sorted(r["actions"])
    return rows
