"""Checks on the vault folder: ciphertext only, no plaintext canary, private permissions, KDF cost,
audit chain.

The folder scans need no key (they read raw bytes); the canary and the audit chain need an unlocked
session. Files are scanned in full, so a plaintext copy anywhere (temp file, stray export, a WAL
written by a non-SQLCipher build) is found wherever it sits.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .report import Check, failed, passed, skipped

SQLITE_HEADER = b"SQLite format 3\x00"
_BLOCK = 1 << 20
_MAX_LISTED = 5


def _walk(vault_dir: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Every entry under the vault (the folder itself first), without following symlinks."""
    yield vault_dir, vault_dir.lstat()
    for dirpath, dirnames, filenames in os.walk(vault_dir, followlinks=False):
        dirnames.sort()
        for name in sorted(dirnames) + sorted(filenames):
            p = Path(dirpath) / name
            try:
                yield p, p.lstat()
            except FileNotFoundError:  # removed while we walked (a WAL checkpoint, a temp file)
                continue


def _files(vault_dir: Path) -> Iterator[Path]:
    for p, st in _walk(vault_dir):
        if stat.S_ISREG(st.st_mode):
            yield p


def _listed(paths: list[str]) -> str:
    more = f" (+{len(paths) - _MAX_LISTED} more)" if len(paths) > _MAX_LISTED else ""
    return ", ".join(paths[:_MAX_LISTED]) + more


def check_sqlite_header(vault_dir: Path) -> Check:
    """FAIL if any file under the vault starts with the plain SQLite header (an unencrypted database)."""
    plain, n = [], 0
    for p in _files(vault_dir):
        n += 1
        try:
            with open(p, "rb") as fh:
                head = fh.read(len(SQLITE_HEADER))
        except OSError as exc:
            return failed("vault encryption", f"cannot read {p.relative_to(vault_dir)}: {exc.strerror}")
        if head == SQLITE_HEADER:
            plain.append(str(p.relative_to(vault_dir)))
    if plain:
        return failed(
            "vault encryption",
            f"plain (unencrypted) SQLite file(s) in the vault: {_listed(plain)}",
            files=plain,
        )
    return passed("vault encryption", f"{n} file(s), none starts with the plain SQLite header", files=n)


def _contains(path: Path, needles: list[bytes]) -> bool:
    """Stream ``path`` looking for any needle, keeping an overlap so a match across blocks is found."""
    keep = max(len(x) for x in needles) - 1
    tail = b""
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            buf = tail + block
            if any(x in buf for x in needles):
                return True
            tail = buf[-keep:] if keep else b""
    return False


def read_canary(session: Any) -> str | None:
    """The vault's random canary (migration ``0004_canary``), read through the encrypted connection."""
    row = session.db.execute("SELECT value FROM settings WHERE key = 'canary'").fetchone()
    return row[0] if row else None


def check_canary(vault_dir: Path, session: Any | None) -> Check:
    """FAIL if the canary stored inside the encrypted vault appears in clear in any vault file."""
    name = "plaintext canary"
    if session is None:
        return skipped(name, "vault locked: the canary can only be read from an unlocked vault")
    canary = read_canary(session)
    if not canary:
        return failed(name, "the vault has no canary (migration 0004_canary missing)")
    # As stored (ASCII hex) and as UTF-16, the other text encoding SQLite can use.
    needles = [canary.encode("ascii"), canary.encode("utf-16-le"), canary.upper().encode("ascii")]
    found, n = [], 0
    for p in _files(vault_dir):
        n += 1
        try:
            if _contains(p, needles):
                found.append(str(p.relative_to(vault_dir)))
        except OSError as exc:
            return failed(name, f"cannot read {p.relative_to(vault_dir)}: {exc.strerror}")
    if found:
        return failed(
            name, f"the vault's secret canary is readable in clear in: {_listed(found)}", files=found
        )
    return passed(name, f"canary not found in clear in any of {n} file(s)", files=n)


def check_permissions(vault_dir: Path) -> Check:
    """Folders must be 0700 and files 0600 (no group or other bits); no symlinks inside the vault."""
    bad: list[str] = []
    n = 0
    for p, st in _walk(vault_dir):
        n += 1
        rel = "." if p == vault_dir else str(p.relative_to(vault_dir))
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            bad.append(f"{rel} (symlink)")
        elif stat.S_ISDIR(st.st_mode):
            if mode & 0o077:
                bad.append(f"{rel} ({mode:04o}, want 0700)")
        elif mode & 0o077:
            bad.append(f"{rel} ({mode:04o}, want 0600)")
        if st.st_uid != os.getuid():
            bad.append(f"{rel} (owned by uid {st.st_uid}, not this user)")
    if bad:
        return failed("file permissions", f"readable by others or unexpected: {_listed(bad)}", entries=bad)
    return passed("file permissions", f"{n} entries: folders 0700, files 0600, all owned by this user")


def check_kdf(vault_dir: Path) -> Check:
    """Every keyslot's Argon2id parameters must be at or above OWASP's floor (19 MiB, 2 iterations)."""
    from ..vault import crypto
    from ..vault import header as hdr

    name = "KDF parameters"
    h = hdr.load(vault_dir)
    if not h.slots:
        return failed(name, "the vault has no keyslots")
    weak, mem, its = [], [], []
    for user, slot in sorted(h.slots.items()):
        kdf = slot.get("kdf") or {}
        try:
            m, i, alg = int(kdf["memory_kib"]), int(kdf["iterations"]), kdf.get("alg")
        except (KeyError, TypeError, ValueError):
            weak.append(f"{user} (unreadable parameters)")
            continue
        mem.append(m)
        its.append(i)
        if alg != "argon2id" or m < crypto.MIN_MEMORY_KIB or i < crypto.MIN_ITERATIONS:
            weak.append(f"{user} ({alg}, {m} KiB, {i} it)")
    floor = f"OWASP floor {crypto.MIN_MEMORY_KIB // 1024} MiB / {crypto.MIN_ITERATIONS} iterations"
    if weak:
        return failed(name, f"keyslot(s) below the {floor}: {_listed(weak)}", slots=weak)
    return passed(
        name,
        f"{len(h.slots)} keyslot(s) Argon2id, memory {min(mem) // 1024}-{max(mem) // 1024} "
        f"MiB, {min(its)}-{max(its)} iterations (>= {floor})",
        min_memory_kib=min(mem),
        min_iterations=min(its),
    )


def check_audit(session: Any | None) -> Check:
    """The audit chain verifies from the pinned root, and the signed authorization state matches the
    tables."""
    from ..audit.verify import verify_chain
    from ..errors import AuditChainBroken
    from ..vault import trust

    name = "audit chain"
    if session is None:
        return skipped(name, "vault locked: the audit log is inside the encrypted vault")
    try:
        rep = verify_chain(session)
    except AuditChainBroken as exc:
        return failed(name, str(exc), seq=exc.seq)
    fp = trust.show_fingerprint(session.root)
    return passed(
        name,
        f"{rep.entries} entries verified, head {rep.head_hash[:19]}..., vault fingerprint {fp} "
        "(compare with the one recorded at set-up)",
        entries=rep.entries,
        head_hash=rep.head_hash,
        vault_fingerprint=fp,
    )


VAULT_CHECKS = (
    "vault encryption",
    "plaintext canary",
    "file permissions",
    "KDF parameters",
    "audit chain",
    "erasure journal",
)


def vault_checks(vault_dir: Path, session: Any | None, locked_reason: str | None) -> list[Check]:
    """All vault lines; SKIP with the reason when there is no vault at ``vault_dir``."""
    from ..vault import header as hdr

    if not (vault_dir / hdr.HEADER).is_file():
        why = f"no vault at {vault_dir} (create one with `offline init`)"
        return [skipped(n, why) for n in VAULT_CHECKS]
    checks = [check_sqlite_header(vault_dir)]
    if session is None:
        checks.append(skipped("plaintext canary", locked_reason or "vault locked"))
    else:
        checks.append(check_canary(vault_dir, session))
    checks += [check_permissions(vault_dir), check_kdf(vault_dir)]
    checks.append(
        check_audit(session)
        if session is not None
        else skipped("audit chain", locked_reason or "vault locked")
    )
    checks.append(
        check_erasure_journal(session)
        if session is not None
        else skipped("erasure journal", locked_reason or "vault locked")
    )
    return checks


def check_erasure_journal(session: Any) -> Check:
    """The erasure journal matches the signed receipts, and holds every erasure made on this machine."""
    from ..gdpr.journal import check_journal, missing_erasures

    problems = check_journal(session)
    if problems:
        return failed(
            "erasure journal", problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
        )
    missing = missing_erasures(session)
    if missing:
        return failed(
            "erasure journal",
            f"{len(missing)} erasure(s) made on this machine are not in this vault "
            "(a backup restored?): run `offline gdpr reapply-erasures`",
        )
    n = session.db.execute("SELECT count(DISTINCT receipt_id) FROM erasure_journal").fetchone()[0]
    return passed("erasure journal", f"{n} erasure(s) journaled, matching their signed receipts")
