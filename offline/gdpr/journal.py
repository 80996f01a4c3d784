"""The erasure journal: what was erased, as keyed hashes, so it stays out and can be replayed.

Each erasure records, under the vault's identifier key (random, kept only inside the encrypted
vault database), the hashes of the subject's terms (id, name forms, aliases), of each removed
document's content hash and of each removed chunk's normalised text. Never clear text.

* **Ingest refuses erased data** (:class:`ErasureGuard`): a file whose content was erased, or whose
  text contains a journaled term (every run of 1-4 tokens is hashed and looked up, so this does not
  depend on the identifier detector having seen the name), is refused with one line unless
  ``--allow-erased --reason`` is given, which writes a ``high`` audit entry.
* **Backups** restored after an erasure do not hold its journal rows. Each erasure is therefore
  also appended to a journal file on this machine (``OFFLINE_HOME/erasures/<vault id>.jsonl``,
  0600, hashes only). Opening a vault that lacks some of those erasures warns
  (:func:`missing_erasures`), and ``offline gdpr reapply-erasures`` replays them
  (:func:`offline.gdpr.reapply.reapply`).
* Each receipt carries the sha256 of its journal rows (``journal_sha256``), so rows deleted with
  raw tools show up when the journal is checked against the signed chain (:func:`check_journal`).

Who can test a guess: every enrolled user holds the vault database key, so a member with raw tools
could hash "Maria Gonzalez" and look for it. A writer learns the same from a refused ingest; this is
stated in the README rather than hidden.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .. import config
from ..errors import InvalidInput, ParameterError, VaultCorrupted
from ..vault import db
from ..vault.core import Session, utc_now
from .terms import SubjectTerms, term_hash, terms_for_journal, tokens, window_terms

HOME_DIR = "erasures"


def identifier_key(session: Session) -> bytes:
    """The vault's key for keyed hashes of identifiers and journaled terms."""
    row = session.db.execute("SELECT key FROM identifier_key WHERE id = 1").fetchone()
    if row is None or len(row[0]) != 64:
        raise VaultCorrupted(f"{session.header.db_file}: the identifier key is missing")
    return bytes.fromhex(row[0])


def doc_hash(key: bytes, sha256: str) -> str:
    return term_hash(key, "document:" + sha256)


def chunk_hash(key: bytes, text: str) -> str:
    return term_hash(key, "chunk:" + " ".join(tokens(text)))


def entries_for(
    key: bytes, terms: SubjectTerms | None, doc_shas: Iterable[str], chunk_texts: Iterable[str]
) -> list[tuple[str, str]]:
    """``[(kind, hash)]`` for one erasure."""
    out = [("term", term_hash(key, t)) for t in (terms_for_journal(terms) if terms else [])]
    out += [("document", doc_hash(key, s)) for s in doc_shas]
    out += [("chunk", chunk_hash(key, t)) for t in chunk_texts]
    return sorted(set(out))


def digest(entries: list[tuple[str, str]]) -> str:
    return hashlib.sha256("".join(f"{k}:{h}\n" for k, h in sorted(entries)).encode()).hexdigest()


def _home_file(session: Session) -> Path:
    return config.home() / HOME_DIR / f"{session.vault_id}.jsonl"


def record(
    session: Session,
    receipt_id: str,
    entries: list[tuple[str, str]],
    erased_at: str | None = None,
    *,
    machine: bool = True,
) -> None:
    """Store one erasure's entries in the vault and (``machine``) append them to this machine's file.

    A replay (:func:`offline.gdpr.reapply.reapply`) is not a new erasure: it stays out of the machine file,
    or the vault it was replayed from would look as if it missed it.
    """
    at = erased_at or utc_now()
    with db.transaction(session.db):
        session.db.executemany(
            "INSERT OR IGNORE INTO erasure_journal(receipt_id, kind, hash, erased_at) VALUES (?, ?, ?, ?)",
            [(receipt_id, k, h, at) for k, h in entries],
        )
    if not entries or not machine:
        return
    path = _home_file(session)
    config.ensure_private_dir(path.parent)
    line = json.dumps({"receipt_id": receipt_id, "erased_at": at, "entries": entries}, separators=(",", ":"))
    import os

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _vault_receipts(session: Session) -> set[str]:
    return {r[0] for r in session.db.execute("SELECT DISTINCT receipt_id FROM erasure_journal")}


def missing_erasures(session: Session) -> list[dict[str, Any]]:
    """Erasures this machine made on this vault that the vault does not hold (a restored backup)."""
    path = _home_file(session)
    if not path.is_file():
        return []
    known = _vault_receipts(session)
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
            if rec["receipt_id"] not in known:
                out.append(
                    {
                        "receipt_id": str(rec["receipt_id"]),
                        "erased_at": str(rec["erased_at"]),
                        "entries": [(str(k), str(h)) for k, h in rec["entries"]],
                    }
                )
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line from a crash: the vault's own rows still hold that erasure
    return out


def backup_warning(session: Session) -> str | None:
    """One line for the CLI when the vault misses erasures made here (e.g. a backup restored)."""
    missing = missing_erasures(session)
    if not missing:
        return None
    return (
        f"Warning: this vault lacks {len(missing)} erasure(s) made on this machine after it was backed up "
        f"(first {missing[0]['erased_at']}); erased data may be back. "
        "Run `offline gdpr reapply-erasures`."
    )


class ErasureGuard:
    """Refuses, at ingest, content erased before (see the module notes). Build one per ingest run."""

    def __init__(self, session: Session, allow_reason: str | None = None):
        self.session = session
        self.allow_reason = allow_reason
        rows = session.db.execute("SELECT kind, hash, receipt_id FROM erasure_journal").fetchall()
        self.index: dict[tuple[str, str], str] = {(k, h): r for k, h, r in rows}
        self.key = identifier_key(session) if rows else b""
        self.allowed: list[dict[str, Any]] = []

    def check(self, name: str, sha256: str, texts: Iterable[str], subjects: Iterable[str] = ()) -> None:
        """Raise :class:`InvalidInput` if this document brings erased data back (unless allowed)."""
        if not self.index:
            return
        hit = self.index.get(("document", doc_hash(self.key, sha256)))
        why = "it was erased before"
        if hit is None:
            for text in [*texts, *subjects]:
                hit = self.index.get(("chunk", chunk_hash(self.key, text)))
                if hit is None:
                    hit = next(
                        (
                            self.index[("term", h)]
                            for h in (term_hash(self.key, w) for w in window_terms(text))
                            if ("term", h) in self.index
                        ),
                        None,
                    )
                if hit is not None:
                    why = "it mentions a subject erased before"
                    break
        if hit is None:
            return
        if self.allow_reason is None:
            raise InvalidInput.naming(
                "refused: {why} (receipt {hit}); pass {allow_erased} {reason} TEXT to ingest it anyway",
                "allow_erased",
                "reason",
                why=why,
                hit=hit,
            )
        from .common import subject_ref

        self.session.audit(
            "gdpr.erased.reingest",
            severity="high",
            receipt_id=hit,
            what=why,
            document=subject_ref(self.session, name),
            reason=self.allow_reason,
        )
        self.allowed.append({"name": name, "receipt_id": hit})


def check_allow(allow_erased: bool, reason: str | None) -> str | None:
    """The override reason for :class:`ErasureGuard`, or a usage error for a half-given override."""
    if allow_erased and not (reason and reason.strip()):
        raise ParameterError(
            "{allow_erased} needs {reason} TEXT (it is recorded in the audit log)", "allow_erased", "reason"
        )
    if reason and not allow_erased:
        raise ParameterError("{reason} goes with {allow_erased}", "reason", "allow_erased")
    return reason.strip() if allow_erased and reason else None


def check_journal(session: Session) -> list[str]:
    """Receipts whose journal rows in the vault no longer match their signed ``journal_sha256``."""
    from ..audit import chain

    problems = []
    for e in chain.iter_entries(session.db, "action = ?", ("gdpr.erase",)):
        want = e.payload.get("journal_sha256")
        rid = e.payload.get("receipt_id")
        if not want:
            continue
        rows = [
            (k, h)
            for k, h in session.db.execute(
                "SELECT kind, hash FROM erasure_journal WHERE receipt_id = ?", (rid,)
            )
        ]
        if digest(rows) != want:
            problems.append(f"receipt {rid}: erasure journal rows changed outside the kit")
    return problems
