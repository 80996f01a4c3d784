"""``offline audit export``: entries plus a signed manifest a reviewer checks with stock tools.

Writes ``FILE`` (the entries), ``FILE.manifest`` (JSON, see :func:`export_log`), ``FILE.manifest.sig``
(the raw 64-byte Ed25519 signature of the manifest's exact bytes, by the vault audit key) and
``FILE.pub.pem`` (that key, SubjectPublicKeyInfo PEM). A reviewer needs only::

    openssl pkeyutl -verify -pubin -inkey FILE.pub.pem -rawin -in FILE.manifest -sigfile FILE.manifest.sig
    sha256sum FILE     # equals "file_sha256" in FILE.manifest

See docs/audit-review.md for the full procedure, including re-verifying the hash chain.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..errors import AuditChainBroken, UsageError
from ..vault import trust
from . import chain, formats, signing
from .files import check_targets, staged
from .query import Filters

if TYPE_CHECKING:
    from ..vault.core import Session

MANIFEST_TYPE = "offline-audit-export-manifest"


def export_paths(out: Path) -> dict[str, Path]:
    """The four files an export writes, keyed by role."""
    out = Path(out)
    return {
        "file": out,
        "pub": out.with_name(out.name + ".pub.pem"),
        "sig": out.with_name(out.name + ".manifest.sig"),
        "manifest": out.with_name(out.name + ".manifest"),
    }


def export_log(
    session: Session,
    fmt: str,
    out: Path,
    *,
    since: str | None = None,
    until: str | None = None,
    user: str | None = None,
    action: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Export verified entries matching the filters (admins and auditors); return the manifest.

    The whole log is verified first (a broken log is never exported as if it were sound), in the same
    read snapshot the entries are then read from. The manifest records: vault id, format, file name,
    its sha256 and size, the exported range (first/last seq, count), the hash of the last exported
    entry, the chain head (seq and hash) at export, the filters, every public key the chain
    ever enrolled for each signer, the audit key and its fingerprint, the creation time and the exporter.
    """
    from .verify import verify_chain

    session.require_role("admin", "auditor", action="exporting the audit log")
    if fmt not in formats.FORMATS:
        raise UsageError(f"unknown format {fmt!r} (one of: {', '.join(formats.FORMATS)})")
    filters = Filters.parse(since=since, until=until, user=user, action=action)
    paths = export_paths(out)
    order = [paths["file"], paths["pub"], paths["sig"], paths["manifest"]]
    check_targets(order, force)

    conn = session.db
    conn.execute("BEGIN")  # one read snapshot for verification and export
    try:
        report = verify_chain(session)
        key, pub = signing.audit_signer(session, report)
        where, params = filters.sql()
        where = f"({where}) AND seq <= ?" if where else "seq <= ?"
        params.append(report.entries)
        with staged(order) as (tmp_file, tmp_pub, tmp_sig, tmp_manifest):
            digest = hashlib.sha256()
            count, first, last, last_hash, size = 0, None, None, None, 0
            with open(tmp_file, "wb") as fh:
                if fmt == "csv":
                    size += _write(fh, digest, formats.csv_header())
                for e in chain.iter_entries(conn, where, params):
                    # Already verified in this snapshot; re-check each record as it is written anyway.
                    if chain.entry_hash(e.prev_hash, e.body()) != e.hash:
                        raise AuditChainBroken(f"audit entry {e.seq}: content does not match its hash", e.seq)
                    size += _write(fh, digest, formats.render(fmt, e, session.vault_id))
                    count += 1
                    first = e.seq if first is None else first
                    last, last_hash = e.seq, e.hash
            manifest = {
                "type": MANIFEST_TYPE,
                "version": 1,
                "vault_id": session.vault_id,
                "format": fmt,
                "file": paths["file"].name,
                "file_sha256": digest.hexdigest(),
                "file_bytes": size,
                "first_seq": first,
                "last_seq": last,
                "count": count,
                "last_entry_hash": last_hash,
                "head_seq": report.entries,
                "head_hash": report.head_hash,
                "filters": filters.to_dict(),
                "hash_version": chain.HASH_VERSION,
                "entry_hash_rule": (
                    'v1: "v1:" + sha256("offline/audit/entry/v1\\0" + prev_hash + "\\0" + '
                    "canonical_json({seq, ts, user, action, severity, payload}))"
                ),
                "entry_sig_rule": 'Ed25519 by the acting user over "offline/audit/sig/v1\\0" + hash',
                "signers": report.key_history,
                "audit_public_key": pub,
                "audit_key_fingerprint": signing.fingerprint(pub),
                # The chain's root: compare vault_fingerprint with the one recorded at set-up.
                "founder": report.root["founder"],
                "founder_ed25519": report.root["founder_ed25519"],
                "vault_fingerprint": trust.fingerprint(report.root),
                "vault_fingerprint_rule": (
                    'sha256("offline-vault-fingerprint/v1|" + vault_id + "|" + '
                    'founder_ed25519 + "|" + audit_public_key); shown as its first 32 hex '
                    "digits in groups of four"
                ),
                "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "exporter": {"user": session.user, "role": session.role, "tool": f"offline {__version__}"},
            }
            manifest_bytes = (
                json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
            ).encode()
            tmp_manifest.write_bytes(manifest_bytes)
            tmp_sig.write_bytes(key.sign(manifest_bytes))
            tmp_pub.write_bytes(signing.public_pem(pub))
    finally:
        conn.execute("COMMIT")
    session.audit(
        "audit.export",
        format=fmt,
        out=str(paths["file"].resolve()),
        first_seq=first,
        last_seq=last,
        count=count,
        file_sha256=manifest["file_sha256"],
        manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(),
        filters=filters.to_dict(),
    )
    return {**manifest, "paths": {k: str(v) for k, v in paths.items()}}


def _write(fh: Any, digest: Any, text: str) -> int:
    data = text.encode("utf-8")
    fh.write(data)
    digest.update(data)
    return len(data)
