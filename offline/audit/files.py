"""Writing review artefacts: all-or-nothing, owner-only, never over an existing file by accident."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import AlreadyExists, UsageError


def check_targets(paths: list[Path], force: bool) -> None:
    """Refuse before any work if a target exists (unless ``force``) or its folder is missing."""
    for p in paths:
        if not p.parent.is_dir():
            raise UsageError(f"folder does not exist: {p.parent}")
        if p.is_dir():
            raise UsageError(f"{p} is a folder")
        if p.exists() and not force:
            raise AlreadyExists.naming("{path} already exists (use {force} to replace it)", "force", path=p)


@contextlib.contextmanager
def staged(paths: list[Path]) -> Iterator[list[Path]]:
    """Yield temporary siblings of ``paths``; on success move them into place, on error remove them.

    Each move is atomic; the manifest (last in ``paths``) lands last, so an interrupted export
    never leaves a manifest that vouches for a half-written file.
    """
    temps = [p.with_name(f".{p.name}.{os.getpid()}.tmp") for p in paths]
    try:
        for t in temps:
            fd = os.open(t, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        yield temps
        for t in temps:
            with open(t, "rb+") as fh:
                os.fsync(fh.fileno())
        for t, p in zip(temps, paths):
            os.replace(t, p)
    finally:
        for t in temps:
            with contextlib.suppress(FileNotFoundError):
                t.unlink()
