"""Which files an ``offline ingest PATH...`` means: folders walked, links judged, the rest skipped.

Only names and file types are looked at here; nothing is opened or read. Inside a folder,
symlinks that resolve outside it, broken links and link loops are skipped; hidden entries,
unsupported types and anything inside the vault folder are skipped with a note, so a user sees
why a file they expected was left out.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from . import loaders


def discover(
    paths: Iterable[str | os.PathLike[str]], *, exclude: str | os.PathLike[str] | None = None
) -> tuple[list[Path], list[dict[str, str]], list[dict[str, str]]]:
    """Expand files and folders (recursively) into resolved file paths to ingest.

    Returns (files, skipped, failed): files in walk order, each once however it was reached;
    skipped and failed as {"path", "reason"}. Files under ``exclude`` (the vault folder: its own
    encrypted files are never a document) are skipped.
    """
    files: list[Path] = []
    seen: set[Path] = set()
    skipped: list[dict[str, str]] = []
    failed: list[dict[str, str]] = []
    fence = Path(exclude).resolve() if exclude is not None else None

    def add(path: Path, shown: str) -> None:
        if loaders.kind_of(path) is None:
            skipped.append({"path": shown, "reason": f"unsupported file type {path.suffix or '(none)'!r}"})
        elif path not in seen:
            seen.add(path)
            files.append(path)

    for raw in paths:
        p = Path(raw).expanduser()
        try:
            resolved = p.resolve(strict=True)
        except (OSError, RuntimeError):
            failed.append({"path": str(p), "reason": "no such file or folder (or a broken link)"})
            continue
        if resolved.is_dir():
            _walk(resolved, add, skipped, failed)
        elif resolved.is_file():
            add(resolved, str(resolved))
        else:
            skipped.append({"path": str(p), "reason": "not a regular file"})
    if fence is not None:
        skipped += [
            {"path": str(f), "reason": "inside the vault folder"} for f in files if f.is_relative_to(fence)
        ]
        files = [f for f in files if not f.is_relative_to(fence)]
    return files, skipped, failed


def _walk(
    root: Path, add: Callable[[Path, str], None], skipped: list[dict[str, str]], failed: list[dict[str, str]]
) -> None:
    visited = {root}
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            failed.append({"path": str(folder), "reason": f"unreadable folder ({exc.__class__.__name__})"})
            continue
        dirs = []
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith("."):
                skipped.append({"path": str(path), "reason": "hidden"})
                continue
            if entry.is_symlink():
                try:
                    target = path.resolve(strict=True)
                except (OSError, RuntimeError):
                    skipped.append({"path": str(path), "reason": "broken or looping symlink"})
                    continue
                if not target.is_relative_to(root):
                    skipped.append(
                        {"path": str(path), "reason": "symlink points outside the ingested folder"}
                    )
                elif target.is_dir():
                    if target in visited:
                        skipped.append({"path": str(path), "reason": "symlink loop"})
                    else:
                        visited.add(target)
                        dirs.append(target)
                elif target.is_file():
                    add(target, str(path))
                else:
                    skipped.append({"path": str(path), "reason": "not a regular file"})
            elif entry.is_dir(follow_symlinks=False):
                target = path.resolve()
                if target not in visited:
                    visited.add(target)
                    dirs.append(target)
            elif entry.is_file(follow_symlinks=False):
                add(path.resolve(), str(path))
            else:
                skipped.append({"path": str(path), "reason": "not a regular file"})
        stack.extend(reversed(dirs))
