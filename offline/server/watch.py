"""Watch ``header.json`` while the server runs, so its memory sees every change as it happens.

A revocation deletes the token's slot; a member who then cuts the signed ``token.revoke`` off the
chain and puts the slot back leaves nothing in the vault to show it. The server notices the slot
going at the moment it goes (:func:`offline.vault.witness.observe_header`), whether or not the
token was in use, and keeps it dead. Linux inotify wakes the watcher within a millisecond of the
header being replaced; elsewhere (or if inotify is unavailable) it polls every
:data:`POLL_S` seconds. A member who restores the slot faster than the watcher reads the file
wins the race: docs/server.md says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import select
import threading
from pathlib import Path

from ..errors import OfflineError
from ..vault import witness

POLL_S = 0.05
FALLBACK_S = 0.25  # with inotify, a stat() this often all the same (a file system that sends no events)
_IN_CLOSE_WRITE, _IN_MOVED_TO, _IN_CREATE = 0x008, 0x080, 0x100


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _inotify(folder: Path) -> int | None:
    """An inotify descriptor on ``folder`` (file replaced or written), or None where there is none."""
    name = ctypes.util.find_library("c")
    if not name or not hasattr(os, "O_NONBLOCK"):
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return None
        if libc.inotify_add_watch(fd, str(folder).encode(), _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE) < 0:
            os.close(fd)
            return None
        return fd
    except (OSError, AttributeError):
        return None


class HeaderWatch:
    """A daemon thread folding each new ``header.json`` into the server's memory."""

    def __init__(self, vault_dir: Path):
        self.vault_dir = Path(vault_dir)
        self._stop = threading.Event()
        self._fd = _inotify(self.vault_dir)
        self._last: tuple[int, int, int] | None = None
        self.look()
        self._thread = threading.Thread(target=self._run, name="header-watch", daemon=True)
        self._thread.start()

    def look(self) -> None:
        """Fold the header in if it changed since the last look (errors: the next request reports them)."""
        now = _stat(self.vault_dir / "header.json")
        if now is None or now == self._last:
            return
        self._last = now
        with contextlib.suppress(OfflineError, OSError, ValueError):
            witness.observe_header(self.vault_dir)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._fd is not None:
                with contextlib.suppress(OSError, ValueError):
                    ready, _, _ = select.select([self._fd], [], [], FALLBACK_S)
                    if ready:
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._fd, 65536)  # drain; which file changed does not matter
            else:
                self._stop.wait(POLL_S)
            self.look()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
