"""Art. 15 access: everything about a subject that the caller may read, as JSON and Markdown.

For each readable collection (a label-limited grant sees only its labels): the subject's documents
and their chunks, the collection's processing purpose and legal basis, each document's retention
period and expiry, and its recipients (who retrieved its chunks, from the audit log).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..vault.core import Session, utc_now
from .common import (
    check_subject,
    document_rows,
    new_file,
    private_output_dir,
    subject_ref,
    write_private_json,
    write_private_text,
)
from .purpose import purpose_of
from .recipients import recipients, summarise
from .retention import effective_days, expires_at, retention_policy, retention_start

FORMAT = "offline-subject-export/v1"
JSON_NAME = "subject-export.json"
MD_NAME = "subject-export.md"


def collect_subject_data(
    session: Session,
    subject: str,
    collections: list[str] | None = None,
    *,
    names: tuple[str, ...] = (),
    aliases: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The export as a dict (nothing written, nothing audited): see :func:`export_subject`.

    The subject is found as an erasure finds them (:mod:`offline.gdpr.finder`): a document about
    them comes whole; a shared one (a ward list) only with the passages that mention them.
    """
    from .erase import subject_plan
    from .redact import resolve
    from .registry import resolve_terms

    subject = check_subject(subject)
    session.require_role("admin", "member", action="exporting personal data")
    terms, entry = resolve_terms(session, subject, names=names, aliases=aliases)
    plan, _ = subject_plan(session, terms, collections, need="read")
    names_searched = [h.name for h, _ in plan]
    policy = retention_policy(session)
    out_colls = []
    for handle, found in plan:
        name = handle.name
        if not found:
            continue
        by_doc = {f.doc_id: f for f in found}
        docs = [d for d in document_rows(handle.conn, list(by_doc), handle.labels)]
        for d in docs:
            f = by_doc[d["doc_id"]]
            marks = ",".join("?" * len(f.chunk_ids)) or "NULL"
            rows = handle.conn.execute(
                f"SELECT id, ord, page, section, text FROM chunks WHERE id IN ({marks}) ORDER BY ord",
                f.chunk_ids,
            ).fetchall()
            # The data subject gets their own data back: pseudonyms resolved (admins hold the mapping).
            d["chunks"] = [
                {
                    "chunk_id": f"{name}/{r[0]}",
                    "ord": r[1],
                    "page": r[2],
                    "section": r[3],
                    "text": resolve(session, handle.conn, r[4]),
                }
                for r in rows
            ]
            d["found_by"], d["whole"] = f.reasons, f.whole
            days = effective_days(policy, name, d["label"])
            d["retention"] = {"days": days, "expires_at": expires_at(retention_start(d), days)}
        keys = {c["chunk_id"] for d in docs for c in d["chunks"]}
        seen = recipients(session, keys)
        for d in docs:
            events: dict[int, dict[str, Any]] = {}
            for c in d["chunks"]:
                for ev in seen.get(c["chunk_id"], []):
                    events[ev["seq"]] = ev  # one retrieval may return several chunks of a document
            d["recipients"] = summarise(list(events.values()))
        out_colls.append(
            {
                "collection": name,
                **purpose_of(session, name),
                "collection_retention_days": next(
                    (c["days"] for c in policy["collections"] if c["collection"] == name), None
                ),
                "grant_labels": sorted(handle.labels) if handle.labels is not None else None,
                "documents": docs,
            }
        )
    return {
        "format": FORMAT,
        "subject": subject,
        "vault_id": session.vault_id,
        "generated_at": utc_now(),
        "generated_by": session.user,
        "registered": {"name": entry.name, "aliases": entry.aliases, "dob": entry.dob} if entry else None,
        "scope": {
            "collections_searched": names_searched,
            "note": "only documents the requesting user may read are included",
        },
        "collections": out_colls,
        "totals": {
            "collections": len(out_colls),
            "documents": sum(len(c["documents"]) for c in out_colls),
            "chunks": sum(len(d["chunks"]) for c in out_colls for d in c["documents"]),
        },
    }


def export_subject(
    session: Session,
    subject: str,
    out_dir: Path | str,
    *,
    collections: list[str] | None = None,
    names: tuple[str, ...] = (),
    aliases: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Write ``subject-export.json`` and ``subject-export.md`` (0600) into ``out_dir`` (made 0700).

    The files hold personal data in clear: that is their purpose. Existing files are never
    overwritten. One ``gdpr.export`` audit entry names the subject by its hash only.
    """
    data = collect_subject_data(session, subject, collections, names=names, aliases=aliases)
    folder = private_output_dir(out_dir)
    json_path, md_path = new_file(folder, JSON_NAME), new_file(folder, MD_NAME)
    # Committed before a byte of personal data is written out: no export goes unlogged.
    session.audit(
        "gdpr.export",
        severity="notice",
        subject_ref=subject_ref(session, data["subject"]),
        collections=[c["collection"] for c in data["collections"]],
        documents=data["totals"]["documents"],
        chunks=data["totals"]["chunks"],
        out=str(folder.resolve()),
    )
    write_private_json(json_path, data)
    write_private_text(md_path, render_markdown(data))
    return {
        "subject": data["subject"],
        "out": str(folder),
        "files": [str(json_path), str(md_path)],
        **data["totals"],
    }


def _md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ") if text is not None else "-"


def render_markdown(data: dict[str, Any]) -> str:
    """The readable summary of an export."""
    lines = [
        f"# Personal data held about subject `{data['subject']}`",
        "",
        f"Generated {data['generated_at']} by {data['generated_by']} (vault {data['vault_id']}).",
        f"Collections searched: {', '.join(data['scope']['collections_searched']) or '(none)'}. "
        f"{data['scope']['note'].capitalize()}.",
        "",
        f"Found {data['totals']['documents']} document(s) with {data['totals']['chunks']} passage(s) "
        f"in {data['totals']['collections']} collection(s).",
        "",
    ]
    for coll in data["collections"]:
        lines += [
            f"## Collection {coll['collection']}",
            "",
            f"- Purpose of processing: {coll['purpose'] or 'not recorded'}",
            f"- Legal basis: {coll['legal_basis'] or 'not recorded'}",
            f"- Collection retention: {_days(coll['collection_retention_days'])}",
            "",
        ]
        for d in coll["documents"]:
            ret = d["retention"]
            lines += [
                f"### {_md_escape(d['name'])}",
                "",
                "| field | value |",
                "|---|---|",
                f"| label | {_md_escape(d['label'] or '(none)')} |",
                f"| sha256 | `{d['sha256']}` |",
                f"| size | {d['size']} bytes |",
                f"| ingested | {d['ingested_at']} by {_md_escape(d['ingested_by'])} |",
                f"| retention | {_days(ret['days'])}"
                + (f", until {ret['expires_at']}" if ret["expires_at"] else "")
                + " |",
                "",
            ]
            if d["recipients"]:
                lines += [
                    "Recipients (users whose searches or questions retrieved this document):",
                    "",
                    "| user | retrievals | first | last |",
                    "|---|---|---|---|",
                ]
                lines += [
                    f"| {_md_escape(r['user'])} | {r['retrievals']} | {r['first']} | {r['last']} |"
                    for r in d["recipients"]
                ]
            else:
                lines.append("Recipients: none recorded.")
            lines += ["", "Content:", ""]
            for c in d["chunks"]:
                where = f" (page {c['page']})" if c["page"] is not None else ""
                lines.append(f"{c['ord'] + 1}.{where}")
                lines += ["   > " + ln for ln in str(c["text"]).splitlines() or [""]]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _days(days: int | None) -> str:
    return f"{days} days" if days else "none set (kept until erased)"
