"""The team server as a witness: what it saw of the vault, kept in its own home.

Every enrolled member holds the vault key and can rewrite any file in the vault folder: cut the
tail off the audit chain, put back a deleted token slot, restore an old ``header.json`` and the
database it names. None of that is signed, so nothing in the folder can prove it happened. The
server's home (``OFFLINE_HOME/seen/<vault-id>-<path hash>/``, which members must not be able to
write: see docs/server.md) can: it records

- ``server.head``: the furthest audit chain head any session of this server reached; a chain that
  no longer holds it was cut back (:func:`check_head`);
- ``server.header``: what ``header.json`` looked like each time the server read it (by a watcher
  as it changes, and at every token open): the database file it named, the database files it
  named before (a header naming one of those again is a rollback), and the token slots that
  disappeared (a revocation or a removal: such a slot put back stays dead).

``offline audit verify`` run with the server's home (on the server machine, as its user) checks
the chain against ``server.head`` too (:func:`witness_heads`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from .. import config
from ..errors import AuthenticationFailed, VaultCorrupted
from . import header as hdr
from .session import Session, check_seen

_lock = threading.Lock()  # the server's threads: observations are written one at a time, in order
MAX_LIST = 10_000  # ids and file names remembered (a bound on a file a member may make us grow)


def folder(vault_dir: Path, vault_id: str) -> Path:
    where = hashlib.sha256(os.path.abspath(vault_dir).encode()).hexdigest()[:16]
    return config.home() / "seen" / f"{vault_id}-{where}"


def _read(path: Path, what: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict):
            raise ValueError
        return doc
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise VaultCorrupted(f"{path}: the server's memory of {what} is damaged") from None


def _write(path: Path, doc: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        config.ensure_private_dir(path.parent)
        config.write_private_file(path, json.dumps(doc, sort_keys=True).encode())


# -- the chain head ----------------------------------------------------------------------------


def read_head(vault_dir: Path, vault_id: str) -> tuple[int, str] | None:
    doc = _read(folder(vault_dir, vault_id) / "server.head", "the audit head")
    if doc is None:
        return None
    try:
        return int(doc["seq"]), str(doc["hash"])
    except (KeyError, TypeError, ValueError):
        raise VaultCorrupted(
            f"{folder(vault_dir, vault_id)}/server.head: the server's memory of the audit head is damaged"
        ) from None


def note_head(session: Session) -> None:
    """Remember the furthest chain head any user's session of this server reached.

    Each user's client state remembers only what *that* user saw; the server checks every token
    against the furthest head it saw for anyone (:func:`check_head`).
    """
    path = folder(session.vault_dir, session.vault_id) / "server.head"
    with _lock:  # never overwrite a further head with an earlier one
        old = read_head(session.vault_dir, session.vault_id)
        if old is not None and old[0] >= session.verifier.seq:
            return
        _write(path, {"seq": session.verifier.seq, "hash": session.verifier.prev})


def check_head(session: Session) -> None:
    """The chain still holds the furthest head this server saw (a cut-back chain is refused)."""
    seen = read_head(session.vault_dir, session.vault_id)
    if seen is not None:
        check_seen(session.db, "the team server", *seen)


def witness_heads(vault_id: str) -> list[tuple[Path, int, str]]:
    """Every head a team server using this home saw for ``vault_id`` (any path), for ``audit verify``.

    A copy of the vault verified here is held to them too: a copy lacking entries the server
    saw *is* a cut-back log, whatever the reason.
    """
    out = []
    base = config.home() / "seen"
    for path in sorted(base.glob(f"{glob_safe(vault_id)}-*/server.head")):
        doc = _read(path, "the audit head")
        if doc is None:
            continue
        try:
            out.append((path, int(doc["seq"]), str(doc["hash"])))
        except (KeyError, TypeError, ValueError):
            raise VaultCorrupted(f"{path}: the server's memory of the audit head is damaged") from None
    return out


def glob_safe(text: str) -> str:
    return "".join(c for c in str(text) if c.isalnum() or c in "-_")


# -- header.json -------------------------------------------------------------------------------


def observe_header(vault_dir: Path) -> hdr.Header:
    """Read ``header.json`` now and fold what changed into the server's memory; returns it.

    The read happens under the lock, so observations are recorded in the order the file changed:
    a slot seen and then missing was deleted (revoked, or its user removed), a database file
    named and then replaced was retired (the vault key rotated). Raises like :func:`check_header`.
    """
    vault_dir = Path(vault_dir)
    with _lock:
        h = hdr.load(vault_dir)
        path = folder(vault_dir, h.vault_id) / "server.header"
        old = _read(path, "header.json") or {}
        retired = [str(x) for x in old.get("retired", [])]
        gone = [str(x) for x in old.get("gone", [])]
        present = set(str(x) for x in old.get("tokens", []))
        current = old.get("db_file")
        if h.db_file in retired:  # a rollback: leave the memory as it is, refuse below
            return _checked(h, retired, gone)
        if current and current != h.db_file and current not in retired:
            retired.append(current)
        now = set(h.tokens)
        gone += sorted((present - now) - set(gone))
        doc = {
            "db_file": h.db_file,
            "retired": retired[-MAX_LIST:],
            "gone": gone[-MAX_LIST:],
            "tokens": sorted(now - set(gone))[:MAX_LIST],
        }
        if doc != old:
            _write(path, doc)
        return _checked(h, retired, gone)


def _checked(h: hdr.Header, retired: list[str], gone: list[str]) -> hdr.Header:
    if h.db_file in retired:
        raise VaultCorrupted(
            f"header.json names {h.db_file}, a vault database this server saw replaced: the "
            "vault was rolled back under the server (a backup restored on purpose: see "
            "docs/server.md, 'restoring a backup under the server')"
        )
    return h


def check_token_alive(vault_dir: Path, vault_id: str, token_id: str) -> None:
    """Refuse a token whose slot this server once saw deleted (put back by hand: still revoked)."""
    doc = _read(folder(vault_dir, vault_id) / "server.header", "header.json") or {}
    if token_id in set(str(x) for x in doc.get("gone", [])):
        raise AuthenticationFailed("API token revoked")
