"""A bound on slow headers and on connections per client address, in uvicorn's h11 protocol.

uvicorn bounds a request's header *size* (``h11_max_incomplete_event_size``) but not its *time*:
its keep-alive timer is cancelled by any byte received, so a client sending one header byte every
few seconds holds a connection for ever, and a few hundred of them reach ``limit_concurrency``
(everyone else gets 503). :class:`GuardedH11Protocol` gives every request :data:`HEADER_TIMEOUT_S`
from the connection's start (or the previous response's end) to complete its headers, whatever
trickles in, and refuses more than :data:`PER_CLIENT` open connections from one non-loopback
address. (Loopback is exempt: behind a local reverse proxy every client is 127.0.0.1.) Slow
bodies are bounded separately (408, :mod:`offline.server.app`).
"""

from __future__ import annotations

import ipaddress
import os
from collections import Counter
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = float(os.environ.get("OFFLINE_SERVER_HEADER_TIMEOUT_S", "5"))
PER_CLIENT = int(os.environ.get("OFFLINE_SERVER_PER_CLIENT", "64"))
_open: Counter[str] = Counter()  # client address -> open connections (the event loop's thread only)


def _limited(host: str | None) -> bool:
    if not host:
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a per-address connection bound."""

    _header_timer: Any = None
    _host: str | None = None

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._host = self.client[0] if self.client else None
        if _limited(self._host):
            _open[self._host] += 1
            if _open[self._host] > PER_CLIENT:
                transport.close()
                return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if _limited(self._host) and _open[self._host] > 0:
            _open[self._host] -= 1
            if not _open[self._host]:
                del _open[self._host]
            self._host = None
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()  # the next request on this connection gets its own deadline

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(HEADER_TIMEOUT_S, self._header_deadline)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline(self) -> None:
        self._header_timer = None
        # Still waiting for a request's headers (IDLE); a request being read or answered is not ours to cut.
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()
