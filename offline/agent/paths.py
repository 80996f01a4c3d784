"""Where an agent's socket lives: a 0700 folder under the runtime dir, named by vault and user."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from .. import config

SOCKET_NAME = "sock"
LOCK_NAME = "lock"
# sockaddr_un.sun_path holds 108 bytes on Linux; longer paths go through /proc/self/fd.
_SUN_MAX = 100


def agent_key(vault: Path, user: str) -> str:
    """Stable id of (resolved vault path, vault user): the folder name, no names in clear."""
    resolved = Path(vault).expanduser().resolve()
    return hashlib.sha256(f"{resolved}\0{user}".encode()).hexdigest()[:24]


def agent_dir(vault: Path, user: str) -> Path:
    return config.runtime_dir() / f"agent-{agent_key(vault, user)}"


def socket_path(folder: Path) -> Path:
    """The agent's socket inside its private folder (client and server both ask here)."""
    return folder / SOCKET_NAME


def is_private_dir(path: Path) -> bool:
    """True if ``path`` is a real folder owned by us with no group/other permissions."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def make_private_dir(path: Path) -> Path:
    """Create the runtime folder and ``path`` with mode 0700; refuse one we do not own."""
    config.ensure_private_dir(path.parent)
    config.ensure_private_dir(path)
    if not is_private_dir(path):
        from ..errors import OfflineError

        raise OfflineError(f"agent folder {path} is not a private folder of this user")
    return path


@contextlib.contextmanager
def sun_path(path: Path) -> Iterator[str]:
    """An address for bind()/connect(): the path itself, or a short /proc/self/fd alias if too long."""
    text = str(path)
    if len(text.encode()) <= _SUN_MAX:
        yield text
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)
