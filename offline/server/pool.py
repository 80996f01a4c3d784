"""Unlocked sessions of the team server, one per presented token, with a bounded fair queue.

A request's token opens its user's keys (:func:`offline.vault.tokens.open_token_session`); the
session is kept, keyed by the token's sha256 (and lane), so the next request skips the chain verification,
and is dropped (keys zeroed) after ``idle_s`` without use. Before every use it is refreshed
(header, chain, protected tables: a removal or revocation signed meanwhile counts at once) and
the token checked again.

Admission is decided on the event loop before any work: at most ``queue_size`` requests wait or
run in all, and at most ``per_user`` per user (a flood from one user is answered 429 while the
others are still served). One user's requests run one at a time on their own session; different
users run in parallel threads, so retrieval and embeddings proceed while another user's answer is
generated (the llama.cpp engine serialises generation itself); within one user, searches and
embeddings run on a second session beside that user's generation (see :meth:`SessionPool.run`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AuthenticationFailed, OfflineError, VaultLocked
from ..vault import tokens as T
from ..vault import witness
from ..vault.session import Session
from ..vault.users import flush_failed_unlocks
from .reports import Reports
from .watch import HeaderWatch


class Busy(OfflineError):
    """The queue (or this user's share of it) is full: HTTP 429."""


@dataclass
class _Slot:
    lock: threading.Lock = field(default_factory=threading.Lock)
    session: Session | None = None
    token_id: str = ""
    last_use: float = field(default_factory=time.monotonic)
    access: str = ""  # what the signed policy said about this user's access when handles were cached


# What decides whether a cached collection handle may still be used: the user's own row (role,
# keys), the collections (names, files, break-glass), the user's grants and key wraps, settings.
# A server.request entry changes none of it, so handles live as long as the policy says so.
def _access_state(session: Session) -> str:
    image, me = session.policy.image, session.user

    def mine(table: str) -> dict[str, Any]:
        return {k: r for k, r in image.get(table, {}).items() if json.loads(k)[-1] == me}

    doc = json.dumps(
        {
            "user": session.policy.user(me),
            "collections": image.get("collections", {}),
            "grants": mine("grants"),
            "collection_keys": mine("collection_keys"),
            "settings": image.get("settings", {}),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(doc.encode()).hexdigest()


class SessionPool:
    """Token -> unlocked session, with admission control and idle expiry."""

    def __init__(self, vault_dir: Path, *, idle_s: float = 300.0, queue_size: int = 64, per_user: int = 8):
        self.vault_dir = Path(vault_dir)
        self.idle_s, self.queue_size, self.per_user = float(idle_s), int(queue_size), int(per_user)
        self._slots: dict[str, _Slot] = {}
        self._user_of: dict[str, str] = {}  # token digest -> user, once the token proved itself
        self._tid_of: dict[str, str] = {}  # token digest -> token id, once the token proved itself
        self.reports = Reports()
        self.watch = HeaderWatch(self.vault_dir)
        self._pending: dict[str, int] = {}
        self._total = 0
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="idle-sessions", daemon=True)
        self._reaper.start()

    # -- admission (event loop) ------------------------------------------------------------
    @contextlib.contextmanager
    def admit(self, token: str, client: str = "-", endpoint: str = ""):
        """Count one request in, or raise :class:`Busy` (reported, to be signed by the next session)."""
        digest = T.token_digest(token)
        with self._guard:
            who = self._user_of.get(digest, digest)
            busy = None
            if self._total >= self.queue_size:
                busy = Busy(f"server busy: {self._total} requests queued; retry shortly")
            elif self._pending.get(who, 0) >= self.per_user:
                busy = Busy(
                    f"too many requests in flight for this user (limit {self.per_user}); retry shortly"
                )
            if busy is not None:
                self.reports.add("busy", self._tid_of.get(digest, "unproven"), client, endpoint)
                raise busy
            self._total += 1
            self._pending[who] = self._pending.get(who, 0) + 1
        try:
            yield
        finally:
            with self._guard:
                self._total -= 1
                self._pending[who] -= 1
                if not self._pending[who]:
                    del self._pending[who]

    def report_failure(self, who: str, client: str, endpoint: str = "") -> None:
        """A request refused before any session could sign its entry (kept in this process)."""
        self.reports.add("failed", who, client, endpoint)

    def stats(self) -> dict[str, Any]:
        with self._guard:
            return {"queued": self._total, "sessions": sum(1 for s in self._slots.values() if s.session)}

    # -- work (worker threads) ---------------------------------------------------------------
    def run(
        self,
        token: str,
        client: str,
        work: Callable[[Session, str], Any],
        lane: str = "generate",
        endpoint: str = "",
    ) -> Any:
        """``work(session, token_id)`` on the token's session for ``lane``, opened or refreshed first.

        Two lanes per token, each with its own session: ``generate`` (chat completions) and
        ``retrieve`` (search, embeddings, models), so a user's searches do not queue behind their
        own answer being generated.

        Every request decides on the signed policy as it is now: the cached session is refreshed
        (header, chain, protected tables), its token checked again, and its open collections
        closed if the user's access changed since they were opened (a revoked grant stops at once).
        """
        digest = T.token_digest(token) + ":" + lane
        while True:
            with self._guard:
                slot = self._slots.setdefault(digest, _Slot())
            slot.lock.acquire()
            with self._guard:
                if self._slots.get(digest) is slot:
                    break
            slot.lock.release()  # dropped while we waited: take the fresh one
        try:
            slot.last_use = time.monotonic()
            try:
                if slot.session is None:
                    slot.session, slot.token_id = T.open_token_session(
                        self.vault_dir,
                        token,
                        via=client,
                        witness_header=True,
                        report=lambda who: self.report_failure(who, client, endpoint),
                    )
                else:
                    witness.observe_header(self.vault_dir)
                    try:
                        slot.session.refresh()
                        T.check_token(slot.session, slot.token_id)
                    except (VaultLocked, AuthenticationFailed) as exc:
                        # The first refusal after a revocation or removal: signed now by the
                        # session that is about to go if its user is still enrolled (a revoked
                        # token), else remembered for the next valid session (a removed user).
                        self._audit_refusal(slot, client, endpoint, exc)
                        raise
            except (VaultLocked, OfflineError) as exc:
                self._drop(digest, slot)
                if isinstance(exc, VaultLocked) and not isinstance(exc, AuthenticationFailed):
                    raise AuthenticationFailed("API token of a removed user") from None
                raise
            session = slot.session
            access = _access_state(session)
            if access != slot.access:
                session.forget_handles()  # opened under another policy: open (and check) again
                slot.access = access
            with self._guard:
                self._user_of[T.token_digest(token)] = session.user
                self._tid_of[T.token_digest(token)] = slot.token_id
            try:
                return work(session, slot.token_id)
            finally:
                slot.last_use = time.monotonic()
                with contextlib.suppress(OfflineError):
                    self.reports.flush(session, slot.token_id)  # refused requests reach the signed log
                if (self.vault_dir / "unlock-failures.jsonl").exists():
                    with contextlib.suppress(OfflineError):
                        flush_failed_unlocks(session)  # the CLI's parked failures (marked as such)
                with contextlib.suppress(OfflineError):
                    T.note_head(session)  # the head after this request's own entries
        finally:
            slot.lock.release()

    def _audit_refusal(self, slot: _Slot, client: str, endpoint: str, exc: Exception) -> None:
        try:
            slot.session.audit(
                "server.request",
                severity="warning",
                endpoint=endpoint,
                status=401,
                client=client,
                token_id=slot.token_id,
                refused=str(exc)[:200],
            )
        except Exception:  # noqa: BLE001  (removed user, damaged chain: the server's memory keeps it)
            self.report_failure(f"token:{slot.token_id}", client, endpoint)

    def _drop(self, digest: str, slot: _Slot) -> None:
        if slot.session is not None:
            with contextlib.suppress(Exception):
                slot.session.close()
        slot.session = None
        with self._guard:
            if self._slots.get(digest) is slot:
                del self._slots[digest]

    def _reap(self) -> None:
        tick = max(0.05, min(5.0, self.idle_s / 4))
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._guard:
                idle = [(d, s) for d, s in self._slots.items() if now - s.last_use >= self.idle_s]
            for digest, slot in idle:
                if slot.lock.acquire(blocking=False):  # in use: not idle
                    try:
                        if time.monotonic() - slot.last_use >= self.idle_s:
                            self._drop(digest, slot)
                    finally:
                        slot.lock.release()

    def close(self) -> None:
        """Drop every session's keys (shutdown)."""
        self._stop.set()
        self.watch.close()
        with self._guard:
            items = list(self._slots.items())
        for digest, slot in items:
            with slot.lock:
                self._drop(digest, slot)
