"""Art. 30 record of processing activities, generated from the vault as it is (not as documented).

Admins and auditors may produce it. Categories of data are the labels in use: an admin reads them
(with document and subject counts, never content) through their custodian key; an auditor, who
holds no collection key, gets the labels named by grants and retention rules instead.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from .. import __version__ as kit_version
from ..audit import chain
from ..errors import OfflineError
from ..vault import db
from ..vault.core import Session, utc_now
from .common import new_file, private_output_dir, write_private_json, write_private_text
from .retention import retention_policy

FORMAT = "offline-record-of-processing/v1"
JSON_NAME = "record-of-processing.json"
MD_NAME = "record-of-processing.md"
VERIFICATION_ACTIONS = ("vault.check", "audit.verify")


def _pragma(conn: Any, name: str) -> Any:
    try:
        rows = conn.execute(f"PRAGMA {name}").fetchall()
    except db.DatabaseError:
        return None
    if not rows:
        return None
    return rows[0][0] if len(rows) == 1 else [r[0] for r in rows]


def _cipher(conn: Any) -> dict[str, Any]:
    return {
        "cipher_version": _pragma(conn, "cipher_version"),
        "provider": _pragma(conn, "cipher_provider"),
        "provider_version": _pragma(conn, "cipher_provider_version"),
        "page_size": _int(_pragma(conn, "cipher_page_size")),
        "hmac_algorithm": _pragma(conn, "cipher_hmac_algorithm"),
        "use_hmac": _int(_pragma(conn, "cipher_use_hmac")) == 1,
        "plaintext_header_size": _int(_pragma(conn, "cipher_plaintext_header_size")),
        "cipher": "AES-256-CBC, per-page random IV, HMAC per page (SQLCipher 4)",
        "key": "raw random 256-bit key per database (SQLCipher's passphrase KDF unused)",
        "journal_mode": _pragma(conn, "journal_mode"),
        "secure_delete": _int(_pragma(conn, "secure_delete")) == 1,
        "temp_store": {0: "default", 1: "file", 2: "memory"}.get(
            _int(_pragma(conn, "temp_store")), "unknown"
        ),
        "settings": _pragma(conn, "cipher_settings"),
    }


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _kdf(session: Session) -> list[dict[str, Any]]:
    groups: dict[tuple, list[str]] = {}
    for user, slot in sorted(session.header.slots.items()):
        kdf = slot.get("kdf", {})
        key = (kdf.get("alg"), kdf.get("memory_kib"), kdf.get("iterations"), kdf.get("lanes"))
        groups.setdefault(key, []).append(user)
    return [
        {"alg": k[0], "memory_kib": k[1], "iterations": k[2], "lanes": k[3], "keyslots": users}
        for k, users in groups.items()
    ]


def _last(session: Session, action: str) -> dict[str, Any] | None:
    entries = list(chain.iter_entries(session.db, "action = ?", (action,), descending=True, limit=1))
    if not entries:
        return None
    e = entries[0]
    return {"seq": e.seq, "ts": e.ts, "user": e.user, "severity": e.severity, "result": e.payload}


def _count(session: Session, where: str, params: tuple = ()) -> int:
    return int(session.db.execute(f"SELECT count(*) FROM audit_log WHERE {where}", params).fetchone()[0])


def _categories(session: Session) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], str]:
    """Labels in use, and per-collection counts. Admins count through their custodian key."""
    labels: dict[str, dict[str, Any]] = {}
    per_coll: dict[str, dict[str, Any]] = {}
    source = "grants and retention rules (auditors hold no collection key)"
    if session.role == "admin":
        from ..vault.collections import collection_key_for_admin

        source = "document labels in every collection (counted with the admin's custodian key)"
        for name, file in session.db.execute("SELECT name, file FROM collections ORDER BY name").fetchall():
            try:
                _, _, key = collection_key_for_admin(session, name)
                conn = db.connect(session.vault_dir / "collections" / file, key, "collection", migrate=False)
            except OfflineError:
                per_coll[name] = {"error": "could not be opened"}
                continue
            try:
                rows = conn.execute(
                    "SELECT d.label, count(DISTINCT d.id), count(DISTINCT s.subject) FROM documents d"
                    " LEFT JOIN doc_subjects s ON s.doc_id = d.id GROUP BY d.label"
                ).fetchall()
                totals = conn.execute(
                    "SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM chunks),"
                    " (SELECT count(DISTINCT subject) FROM doc_subjects)"
                ).fetchone()
            finally:
                conn.close()
            per_coll[name] = {
                "documents": totals[0],
                "chunks": totals[1],
                "subjects": totals[2],
                "labels": {lb or "": n for lb, n, _ in rows},
            }
            for lb, n, subj in rows:
                item = labels.setdefault(
                    lb or "", {"label": lb or "", "documents": 0, "subjects": 0, "collections": []}
                )
                item["documents"] += n
                item["subjects"] += subj
                item["collections"].append(name)
    for (raw,) in session.db.execute("SELECT labels FROM grants WHERE labels IS NOT NULL"):
        for lb in json.loads(raw):
            labels.setdefault(lb, {"label": lb, "collections": []})
    for (lb,) in session.db.execute("SELECT label FROM retention_labels"):
        labels.setdefault(lb, {"label": lb, "collections": []})
    return sorted(labels.values(), key=lambda x: x["label"]), per_coll, source


def _subject_measures(session: Session) -> dict[str, Any]:
    """Identifier detection, the sealed subject registry and the erasure journal, as they are now."""
    from ..ingest.detect import DETECTOR_NAME, verify_model
    from .journal import check_journal, missing_erasures

    try:
        detector: dict[str, Any] = {"ok": True, **verify_model()}
    except OfflineError as exc:
        detector = {"ok": False, "name": DETECTOR_NAME, "error": str(exc)}
    journal = session.db.execute(
        "SELECT count(*), count(DISTINCT receipt_id) FROM erasure_journal"
    ).fetchone()
    return {
        "identifier_detection": session.setting("identifier_detection"),
        "subject_id_pattern": session.setting("subject_id_pattern") or None,
        "detector": detector,
        "identifiers_stored_as": "HMAC-SHA256 under the vault's identifier key, with offsets into the chunk",
        "ocr": "Tesseract 5 (eng model pinned by sha256) for PDF pages without text and PNG/JPEG/TIFF",
        "subject_registry": {
            "subjects": session.db.execute("SELECT count(*) FROM subject_registry").fetchone()[0],
            "sealed": "AES-256-GCM under a registry key wrapped to each admin",
        },
        "erasure_journal": {
            "entries": journal[0],
            "erasures": journal[1],
            "problems": check_journal(session),
            "erasures_missing_here": len(missing_erasures(session)),
            "holds": "keyed hashes of erased subjects' terms, documents and chunks; never text",
        },
    }


def build_record(session: Session) -> dict[str, Any]:
    """The record as a dict (nothing written); admins and auditors only."""
    session.require_role("admin", "auditor", action="generating the record of processing")
    categories, counts, cat_source = _categories(session)
    collections = []
    for cid, name, created, by, retention, bg, purpose, basis in session.db.execute(
        "SELECT id, name, created_at, created_by, retention_days, break_glass, purpose, legal_basis"
        " FROM collections ORDER BY name"
    ).fetchall():
        grants = [
            {"user": u, "perm": p, "labels": json.loads(lb) if lb else None}
            for u, p, lb in session.db.execute(
                "SELECT user, perm, labels FROM grants WHERE collection_id = ? ORDER BY user", (cid,)
            )
        ]
        bg_wraps = session.db.execute(
            "SELECT count(*) FROM vault_keys WHERE purpose = ?", (f"break-glass:{cid}",)
        ).fetchone()[0]
        collections.append(
            {
                "name": name,
                "id": cid,
                "created_at": created,
                "created_by": by,
                "purpose": purpose,
                "legal_basis": basis,
                "retention_days": retention,
                "break_glass": bool(bg),
                "break_glass_wraps": bg_wraps,
                "grants": grants,
                **({"contents": counts[name]} if name in counts else {}),
            }
        )
    users = [
        {"name": n, "role": r, "created_at": c, "created_by": b}
        for n, r, c, b in session.db.execute(
            "SELECT name, role, created_at, created_by FROM users WHERE removed_at IS NULL ORDER BY name"
        )
    ]
    try:
        verified = chain.verify(session.db)
        chain_now = {"ok": True, "entries": verified.entries, "head_hash": verified.head_hash}
    except OfflineError as exc:
        chain_now = {"ok": False, "error": str(exc)}
    adapters = session.db.execute(
        "SELECT count(*), count(tainted_at), count(override_reason) FROM adapters"
    ).fetchone()
    mode = stat.S_IMODE(os.stat(session.vault_dir).st_mode)
    from .. import netguard

    security = {
        "encryption_at_rest": {
            "vault_database": _cipher(session.db),
            "collections": "one SQLCipher file per collection, same cipher settings, own key",
            "adapters": "AES-256-GCM per adapter, key sealed under a root key inside vault.db",
        },
        "key_management": {
            "kdf": _kdf(session),
            "keyslots": len(session.header.slots),
            "collection_key_wraps": session.db.execute("SELECT count(*) FROM collection_keys").fetchone()[0],
            "wrapping": "X25519 + HKDF + AES-256-GCM per user (a grant is a wrapped key)",
        },
        "access_control": {
            "roles": ["admin", "member", "auditor"],
            "break_glass_vault_setting": session.setting("break_glass"),
            "idle_timeout_s": session.setting("idle_timeout_s"),
        },
        "audit": {
            "questions_logged_as": session.setting("audit_questions"),
            "chain": "SHA-256 hash chain, Ed25519 signature per entry by the acting user",
            "current_verification": chain_now,
        },
        "network": {"guard_active_in_this_process": netguard.active()},
        "subjects_and_erasure": _subject_measures(session),
        "vault_folder_mode": oct(mode),
    }
    last = {a: _last(session, a) for a in VERIFICATION_ACTIONS}
    activity = {
        "erasures": _count(session, "action = 'gdpr.erase'"),
        "subject_exports": _count(session, "action = 'gdpr.export'"),
        "break_glass_reads": _count(session, "action = 'break_glass.read'"),
        "high_severity_entries": _count(session, "severity = 'high'"),
        "backups": _count(session, "action = 'vault.backup'"),
        "adapters": {"total": adapters[0], "tainted": adapters[1], "tainted_with_override": adapters[2]},
    }
    return {
        "format": FORMAT,
        "generated_at": utc_now(),
        "generated_by": session.user,
        "vault_id": session.vault_id,
        "kit_version": kit_version,
        "categories_of_data": {"source": cat_source, "labels": categories},
        "collections": collections,
        "users": users,
        "retention": retention_policy(session),
        "security_measures": security,
        "last_verification": last,
        "activity": activity,
    }


def record_of_processing(session: Session, out_dir: Path | str | None = None) -> dict[str, Any]:
    """Build the record; with ``out_dir`` also write its JSON and Markdown there (0600). Audited."""
    record = build_record(session)
    files = []
    if out_dir is not None:
        folder = private_output_dir(out_dir)
        jp, mp = new_file(folder, JSON_NAME), new_file(folder, MD_NAME)
        write_private_json(jp, record)
        write_private_text(mp, render_markdown(record))
        files = [str(jp), str(mp)]
    session.audit("gdpr.record", files=files)
    return {"record": record, "files": files, "markdown": render_markdown(record)}


def _v(value: Any) -> str:
    if value is None or value == "":
        return "-"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _subject_lines(m: dict[str, Any]) -> list[str]:
    det = m["detector"]
    reg, jr = m["subject_registry"], m["erasure_journal"]
    return [
        f"- Identifier detection at ingest: {m['identifier_detection']} "
        "(subject ids, e-mail, phone, date of birth, "
        "NHS/SSN with checks, person names by NER); "
        f"subject-id pattern: {_v(m['subject_id_pattern'])}; model "
        + (
            f"{det['name']} tree sha256 {det['tree_sha256'][:16]}... ({det['source']})"
            if det["ok"]
            else f"{det['name']} NOT VERIFIED ({det['error']})"
        )
        + f"; stored as {m['identifiers_stored_as']}.",
        f"- OCR: {m['ocr']}.",
        f"- Subject registry: {reg['subjects']} subject(s), {reg['sealed']}.",
        f"- Erasure journal: {jr['entries']} entries from {jr['erasures']} erasure(s) ({jr['holds']}); "
        "re-ingesting "
        "erased data is refused without --allow-erased --reason (high-severity audit entry); "
        + (
            "journal matches the signed receipts"
            if not jr["problems"]
            else "PROBLEMS: " + "; ".join(jr["problems"])
        )
        + (
            f"; {jr['erasures_missing_here']} erasure(s) made on this machine are missing here "
            "(restored backup:"
            " run `offline gdpr reapply-erasures`)"
            if jr["erasures_missing_here"]
            else ""
        )
        + ".",
    ]


def render_markdown(r: dict[str, Any]) -> str:
    """The record as a readable Markdown document."""
    sec = r["security_measures"]
    cipher = sec["encryption_at_rest"]["vault_database"]
    out = [
        "# Record of processing activities (GDPR Art. 30)",
        "",
        f"Vault `{r['vault_id']}`, generated {r['generated_at']} by {r['generated_by']} "
        f"(offline {r['kit_version']}).",
        "",
        "## Categories of personal data (labels)",
        "",
        f"Source: {r['categories_of_data']['source']}.",
        "",
    ]
    labels = r["categories_of_data"]["labels"]
    if labels:
        out += ["| label | documents | subjects | collections |", "|---|---|---|---|"]
        out += [
            f"| {_v(lb['label'] or '(none)')} | {_v(lb.get('documents'))} | {_v(lb.get('subjects'))} | "
            f"{_v(', '.join(lb.get('collections', [])))} |"
            for lb in labels
        ]
    else:
        out.append("No labels in use.")
    out += [
        "",
        "## Collections",
        "",
        "| collection | purpose | legal basis | retention | break-glass | access |",
        "|---|---|---|---|---|---|",
    ]
    for c in r["collections"]:
        access = "; ".join(
            f"{g['user']} {g['perm']}" + (f" ({','.join(g['labels'])})" if g["labels"] else "")
            for g in c["grants"]
        )
        out.append(
            f"| {_v(c['name'])} | {_v(c['purpose'])} | {_v(c['legal_basis'])} | "
            f"{_v(c['retention_days'] and str(c['retention_days']) + ' days')} | "
            f"{'on' if c['break_glass'] else 'off'} | {_v(access)} |"
        )
    out += ["", "## Users and roles", "", "| user | role | enrolled | by |", "|---|---|---|---|"]
    out += [
        f"| {_v(u['name'])} | {u['role']} | {u['created_at']} | {_v(u['created_by'])} |" for u in r["users"]
    ]
    ret = r["retention"]
    out += ["", "## Retention", ""]
    out += [f"- collection {c['collection']}: {c['days']} days" for c in ret["collections"] if c["days"]]
    out += [f"- label {lb['label']}: {lb['days']} days" for lb in ret["labels"]]
    out.append(
        f"- backups: {ret['backups_days']} days" if ret["backups_days"] else "- backups: no period set"
    )
    kdf = "; ".join(
        f"{k['alg']} {k['memory_kib']} KiB, {k['iterations']} iterations, {k['lanes']} lane(s) "
        f"({len(k['keyslots'])} keyslot(s))"
        for k in sec["key_management"]["kdf"]
    )
    audit = sec["audit"]
    now = audit["current_verification"]
    out += [
        "",
        "## Security measures in force",
        "",
        f"- Encryption at rest: SQLCipher {cipher['cipher_version']} ({cipher['provider']} "
        f"{cipher['provider_version']}), {cipher['cipher']}; HMAC {cipher['hmac_algorithm']}, "
        f"page size {cipher['page_size']}; {cipher['key']}.",
        f"- Storage: journal {cipher['journal_mode']}, "
        f"secure_delete {'on' if cipher['secure_delete'] else 'off'}, "
        f"temp store {cipher['temp_store']}.",
        f"- Adapters: {sec['encryption_at_rest']['adapters']}.",
        f"- Passphrase KDF: {kdf}.",
        f"- Key wrapping: {sec['key_management']['wrapping']}; "
        f"{sec['key_management']['collection_key_wraps']} "
        f"collection key wraps.",
        f"- Audit log: {audit['chain']}; questions logged as: {audit['questions_logged_as']}; chain now: "
        + (
            f"verified ({now['entries']} entries, head {now['head_hash'][:19]}...)"
            if now["ok"]
            else f"FAILED ({now['error']})"
        )
        + ".",
        f"- Break-glass (vault setting): {sec['access_control']['break_glass_vault_setting']}; idle timeout "
        f"{sec['access_control']['idle_timeout_s']} s.",
        f"- Vault folder mode: {sec['vault_folder_mode']}.",
        *_subject_lines(sec["subjects_and_erasure"]),
        "",
        "## Last verification results",
        "",
    ]
    for action, e in r["last_verification"].items():
        out.append(
            f"- {action}: "
            + (
                f"{e['ts']} by {e['user']}: {_v(json.dumps(e['result'], sort_keys=True))}"
                if e
                else "never run"
            )
        )
    act = r["activity"]
    out += [
        "",
        "## Activity",
        "",
        f"- Erasures: {act['erasures']}; subject exports: {act['subject_exports']}; break-glass reads: "
        f"{act['break_glass_reads']}; high-severity audit entries: {act['high_severity_entries']}; "
        f"backups: {act['backups']}.",
        f"- Adapters: {act['adapters']['total']} ({act['adapters']['tainted']} tainted, "
        f"{act['adapters']['tainted_with_override']} with an override).",
    ]
    return "\n".join(out) + "\n"
