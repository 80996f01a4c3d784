"""Plaintext that must exist as a file for a native library, yet never have a name.

``memfd_create`` gives an anonymous file that lives in memory only: it appears in no directory
(not /dev/shm, not the vault), is freed by the kernel when its last descriptor closes (so a
process killed with SIGKILL leaves nothing behind), and is reached by path only through
``/proc/self/fd/N``, which resolves in this process alone. Used for decrypted LoRA adapters
that llama.cpp loads by path (:func:`offline.finetune.store.open_adapter`) and for the adapter
the gguf writer exports after training (:func:`scratch_path`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

_SEALS = ("F_SEAL_WRITE", "F_SEAL_GROW", "F_SEAL_SHRINK", "F_SEAL_SEAL")


def supported() -> bool:
    """Whether this platform offers ``memfd_create`` at all (Linux 3.17+, Python 3.8+)."""
    return hasattr(os, "memfd_create")


def anonymous_copy(data: bytes, label: str = "offline") -> int | None:
    """A close-on-exec descriptor of a sealed 0600 memory file holding ``data``; None when memfd
    is unavailable (no such call, an old kernel, a seccomp profile that forbids it)."""
    if not supported():
        return None
    flags = os.MFD_CLOEXEC | getattr(os, "MFD_ALLOW_SEALING", 0)
    try:
        fd = os.memfd_create(label, flags)
    except OSError:
        return None
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
        # The bytes were hash-checked: freeze them so nothing can change what the library reads.
        seals = sum(getattr(fcntl, n, 0) for n in _SEALS)
        if seals and hasattr(fcntl, "F_ADD_SEALS"):
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except BaseException:
        os.close(fd)
        raise
    return fd


def fd_path(fd: int) -> Path:
    """The path by which this process (and only it) opens descriptor ``fd``."""
    return Path(f"/proc/self/fd/{fd}")


@contextlib.contextmanager
def scratch_path(fallback_dir: Callable[[], Path], name: str = "scratch") -> Iterator[Path]:
    """A path a library may write plaintext to and the caller read back, with no name on disk.

    An empty anonymous memory file reached as ``/proc/self/fd/N`` (opening it for writing
    truncates it, as a new file would be); where memfd is unavailable, a file in a fresh 0700
    folder under ``fallback_dir()``, removed with it on exit.
    """
    fd = None
    if supported():
        with contextlib.suppress(OSError):
            fd = os.memfd_create(name, os.MFD_CLOEXEC)
    if fd is not None:
        try:
            os.fchmod(fd, 0o600)
            yield fd_path(fd)
        finally:
            os.close(fd)
        return
    folder = Path(tempfile.mkdtemp(prefix="offline-scratch-", dir=fallback_dir()))
    try:
        os.chmod(folder, 0o700)
        yield folder / name
    finally:
        shutil.rmtree(folder, ignore_errors=True)
