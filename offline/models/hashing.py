"""File and folder hashes for model integrity.

A folder's hash is the *tree hash*: sha256 over the sorted lines ``"<relative posix path>\\t<file
sha256>\\n"`` of every regular file below it, so it is independent of walk order and timestamps.
Hashes may be cached in memory by (path, inode, size, mtime) to keep repeated resolution cheap;
``verify`` always passes ``fresh=True`` and re-reads every byte.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_BLOCK = 1 << 20
_cache: dict[tuple[str, int, int, int], str] = {}


def _key(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)


def sha256_file(path: Path, *, fresh: bool = False) -> str:
    """sha256 hex digest of a file (memoised unless ``fresh``)."""
    key = _key(path)
    if not fresh and key in _cache:
        return _cache[key]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            digest.update(block)
    value = digest.hexdigest()
    _cache[key] = value
    return value


def tree_files(root: Path) -> list[Path]:
    """Every regular file under ``root`` (symlinks refused so a folder cannot point outside itself)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in filenames:
            p = Path(dirpath) / name
            if p.is_symlink() or not p.is_file():
                continue
            out.append(p)
    return sorted(out)


def tree_hash(root: Path, *, fresh: bool = False) -> str:
    """Deterministic hash of a folder of files (see module docstring)."""
    lines = sorted(
        f"{p.relative_to(root).as_posix()}\t{sha256_file(p, fresh=fresh)}\n" for p in tree_files(root)
    )
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def tree_size(root: Path) -> int:
    """Total bytes of the regular files under ``root``."""
    return sum(p.stat().st_size for p in tree_files(root))


def model_hash(path: Path, *, fresh: bool = False) -> str:
    """File hash for a file, tree hash for a folder."""
    return tree_hash(path, fresh=fresh) if path.is_dir() else sha256_file(path, fresh=fresh)


def model_size(path: Path) -> int:
    """Size in bytes of a model file or folder."""
    return tree_size(path) if path.is_dir() else path.stat().st_size
