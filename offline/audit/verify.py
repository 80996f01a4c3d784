"""``offline audit verify``: the chain, its cross-checks against the vault, and a checkpoint."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AuditChainBroken
from . import chain
from .checkpoint_file import check_checkpoint, load_checkpoint

if TYPE_CHECKING:
    from ..vault.session import Session


def verify_chain(session: Session) -> chain.VerifyReport:
    """Verify every entry from the root, then check the chain against the vault and the client's pins.

    Steps: (1) every hash, link and signature, and every authorization change by a signer allowed
    to make it; (2) the chain starts at the root pinned in the caller's keyslot (vault id, founding
    admin key, audit key: the vault fingerprint); (3) it still holds the head the caller's client saw
    last, and every head a team server using this home saw (:mod:`offline.vault.witness`); (4) the
    audit key it records is the vault's; (5) every keyslot belongs to a user the chain enrolled, with
    that key; (6) the protected tables equal the authorization state the chain signs.
    """
    from ..vault import authz, trust
    from ..vault.session import check_seen

    report = chain.verify_entries(chain.iter_entries(session.db), authz.Policy())
    if not trust.same_root(session.root, report.root):
        raise AuditChainBroken(
            "audit entry 1: the log does not start at this vault's pinned root (vault fingerprint "
            f"{trust.show_fingerprint(session.root)}); the whole history was replaced",
            1,
        )
    seen = session.verifier
    check_seen(session.db, session.user, seen.seq, seen.prev)
    # (3b) on the team server's machine (this home): the furthest head the server saw, for anyone.
    # A member who cuts entries the admin never saw (their own 403s) off the tail is caught here.
    from ..vault.witness import witness_heads

    for path, seq, digest in witness_heads(session.vault_id):
        check_seen(session.db, f"the team server (its memory {path})", seq, digest)
    stored = session.db.execute("SELECT value FROM settings WHERE key = 'audit_public_key'").fetchone()
    if stored is None or stored[0] != report.audit_public_key:
        raise AuditChainBroken("audit entry 1: the audit key it records is not the vault's audit key", 1)
    for user, slot in sorted(session.header.slots.items()):
        if user not in report.users:
            missing = report.entries + 1
            raise AuditChainBroken(
                f"audit entry {missing}: missing; user {user!r} holds a keyslot but the log never enrolled "
                "them (entries were removed from the end)",
                missing,
            )
        if slot.get("ed25519") != report.users[user]:
            seq = report.introduced.get(user, 1)
            raise AuditChainBroken(
                f"audit entry {seq}: the signing key it enrols for {user!r} is not the key in their keyslot",
                seq,
            )
    if report.policy is not None and report.policy.started:
        bad = authz.first_difference(report.policy.image, authz.read_image(session.db))
        if bad:
            raise AuditChainBroken(f"audit entry {report.entries}: the vault's {bad}", report.entries)
    return report


def verify_log(session: Session, checkpoint: Path | None = None) -> dict[str, Any]:
    """Verify the whole log (and that it still extends ``checkpoint``); raise :class:`AuditChainBroken`.

    The outcome is itself audited, failures at ``high`` severity.
    """
    cp = load_checkpoint(checkpoint) if checkpoint is not None else None
    try:
        report = verify_chain(session)
        if cp is not None:
            check_checkpoint(session, report, cp)
    except AuditChainBroken as exc:
        # Record the failure; the log may be too damaged to append to, and the error matters more.
        with contextlib.suppress(Exception):
            session.audit(
                "audit.verify",
                severity="high",
                ok=False,
                first_bad_seq=exc.seq,
                error=str(exc),
                checkpoint=cp["statement"]["entries"] if cp else None,
            )
        raise
    from ..vault import trust

    result: dict[str, Any] = {
        "ok": True,
        "entries": report.entries,
        "head_hash": report.head_hash,
        "vault_fingerprint": trust.show_fingerprint(session.root),
        "vault_fingerprint_sha256": trust.fingerprint(session.root),
    }
    if cp is not None:
        result["checkpoint"] = {
            "entries": cp["statement"]["entries"],
            "head_hash": cp["statement"]["head_hash"],
            "created": cp["statement"]["created"],
        }
    if session.role in ("admin", "auditor"):
        result["signers"] = sorted(report.users)
        result["audit_public_key"] = report.audit_public_key
    session.audit(
        "audit.verify",
        ok=True,
        entries=report.entries,
        head_hash=report.head_hash,
        checkpoint=cp["statement"]["entries"] if cp else None,
    )
    return result
