"""``offline gdpr export|erase|verify-receipt|record|retention|purpose``.

Also attaches ``offline collections break-glass COLLECTION on|off`` (its one home) to ``collections``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..textsafe import terminal_safe
from .app import App, table
from .params import TEXT, FsPath


@click.group()
def gdpr() -> None:
    """GDPR and HIPAA duties: subject export and erasure, record of processing, retention."""


def _export_text(r: dict[str, Any]) -> str:
    return (
        f"Exported {r['documents']} document(s), {r['chunks']} passage(s) "
        f"from {r['collections']} collection(s)"
        f" about subject {r['subject']} to {r['out']}:\n"
        + "\n".join(f"  {f}" for f in r["files"])
        + "\nThese files hold personal data in clear: hand them over securely."
    )


_NAME_OPT = click.option(
    "--name",
    "names",
    type=TEXT,
    multiple=True,
    help="Also find this name in the text (repeatable; the registry adds its own).",
)
_ALIAS_OPT = click.option(
    "--alias",
    "aliases",
    type=TEXT,
    multiple=True,
    help="Also find this alias or old id in the text (repeatable).",
)


@gdpr.command("export")
@click.option(
    "--subject", type=TEXT, required=True, help="Data-subject id (as registered or given at ingest)."
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=FsPath(path_type=Path, file_okay=False),
    help="Folder for subject-export.json and subject-export.md (created 0700).",
)
@click.option(
    "-c", "--collection", "collections", type=TEXT, multiple=True, help="Only this collection (repeatable)."
)
@_NAME_OPT
@_ALIAS_OPT
@click.pass_obj
def export_cmd(
    app: App,
    subject: str,
    out_dir: Path,
    collections: tuple[str, ...],
    names: tuple[str, ...],
    aliases: tuple[str, ...],
) -> None:
    """Subject access (GDPR Art 15): all you may read about a subject, as JSON and Markdown."""
    from ..gdpr.export import export_subject

    app.emit(
        export_subject(
            app.session(),
            subject,
            out_dir,
            collections=list(collections) or None,
            names=names,
            aliases=aliases,
        ),
        _export_text,
    )


@gdpr.group("subject")
def subject_group() -> None:
    """The subject registry (admin): ids, names and aliases an erasure or export looks for in text."""


@subject_group.command("add")
@click.argument("subject_id", type=TEXT)
@click.option("--name", type=TEXT, help="Full name as documents write it.")
@click.option(
    "--alias", "aliases", type=TEXT, multiple=True, help="Another name, spelling or old id (repeatable)."
)
@click.option("--dob", type=TEXT, help="Date of birth, YYYY-MM-DD.")
@click.option("--replace", is_flag=True, help="Update an entry that exists.")
@click.pass_obj
def subject_add(
    app: App, subject_id: str, name: str | None, aliases: tuple[str, ...], dob: str | None, replace: bool
) -> None:
    """Register SUBJECT_ID (sealed in the vault under a key only admins hold)."""
    from ..gdpr.registry import add_subject

    app.emit(
        add_subject(app.session(), subject_id, name=name, aliases=aliases, dob=dob, replace=replace),
        lambda r: (
            f"Subject {r['subject']} {'updated' if r['replaced'] else 'registered'}"
            f" ({1 if r['name'] else 0} name, {len(r['aliases'])} alias(es))."
        ),
    )


@subject_group.command("list")
@click.pass_obj
def subject_list(app: App) -> None:
    """Registered subjects (admin)."""
    from ..gdpr.registry import list_subjects

    app.emit(
        list_subjects(app.session()),
        lambda rows: (
            table(
                [
                    {
                        **r,
                        "aliases": ", ".join(r["aliases"]) or "-",
                        "name": r["name"] or "-",
                        "dob": r["dob"] or "-",
                    }
                    for r in rows
                ],
                ["id", "name", "aliases", "dob", "created_by"],
            )
            if rows
            else "No subjects registered."
        ),
    )


@subject_group.command("rm")
@click.argument("subject_id", type=TEXT)
@click.pass_obj
def subject_rm(app: App, subject_id: str) -> None:
    """Forget a registered subject (their documents stay: erase them first if that is the aim)."""
    from ..gdpr.registry import remove_subject

    app.emit(
        remove_subject(app.session(), subject_id),
        lambda r: f"Subject {r['subject']} removed from the registry.",
    )


@gdpr.command("reapply-erasures")
@click.option(
    "--receipt-dir",
    type=FsPath(path_type=Path, file_okay=False),
    help="Folder for the receipt file (default: the current folder).",
)
@click.pass_obj
def reapply_cmd(app: App, receipt_dir: Path | None) -> None:
    """Replay erasures made on this machine that this vault (a restored backup) does not hold."""
    from ..gdpr.reapply import reapply

    result = reapply(app.session(), receipt_dir=app.path(receipt_dir))
    app.emit(
        result,
        lambda r: (
            "No erasure to reapply."
            if not r["reapplied"]
            else f"Reapplied {len(r['reapplied'])} erasure(s): "
            + ", ".join(r["reapplied"])
            + "\n"
            + _erase_text(r["receipt"])
        ),
    )


def _plan_text(r: dict[str, Any]) -> str:
    t = r["totals"]
    lines = [
        f"Would erase {t['documents']} document(s) and passages of {t['documents_in_part']} shared "
        f"document(s): {t['chunks']} chunk(s) in all"
    ]
    lines += [
        f"  {c['collection']}: {c['documents']} document(s), {c['documents_in_part']} in part, "
        f"{c['chunks']} chunk(s)"
        for c in r["collections"]
        if c["chunks"]
    ]
    if r["adapters_to_taint"]:
        lines.append("Adapters to taint: " + ", ".join(r["adapters_to_taint"]))
    from ..gdpr.erase import describe_gaps

    if not r["coverage"]["complete"]:
        lines.append("Coverage: PARTIAL: " + describe_gaps(r["coverage"]))
    return "\n".join(lines)


def _erase_text(r: dict[str, Any]) -> str:
    t = r["totals"]
    lines = [
        f"Erased {t['documents']} document(s) and passages of "
        f"{t.get('documents_in_part', 0)} shared document(s), "
        f"{t['chunks']} chunk(s), {t['vectors']} vector(s); "
        f"receipt {r['receipt_id']} (audit entry {r['audit']['seq']}) written to {r['file']}"
    ]
    for c in r["collections"]:
        lines.append(
            f"  {c['collection']}: {c['documents_removed']} document(s), "
            f"{c.get('documents_erased_in_part', 0)} in part"
            + (
                " (grant limited to labels: " + ", ".join(c["grant_labels"]) + ")"
                if c["grant_labels"]
                else ""
            )
        )
    if r["adapters_tainted"]:
        lines.append("Adapters tainted (retrain or override): " + ", ".join(r["adapters_tainted"]))
    if r["backups_still_holding_data"]:
        lines.append("Backups made before this erasure still hold the data until they expire:")
        lines += [
            f"  {b['dest']} (made {b['made_at']}, "
            f"expires {b['expires_at'] or 'never: no backup retention set'})"
            for b in r["backups_still_holding_data"]
        ]
    if r.get("collections_not_covered"):
        lines.append("Not searched (you hold no write grant): " + ", ".join(r["collections_not_covered"]))
    if r.get("coverage"):
        from ..gdpr.erase import describe_gaps

        cov = r["coverage"]
        state = "complete" if cov["complete"] else "PARTIAL: " + describe_gaps(cov)
        lines.append(f"Coverage: {state} ({cov['collections_covered']} collection(s) covered)")
    lines += [f"Warning: {p}" for p in r["problems"]]
    return "\n".join(lines)


@gdpr.command("erase")
@click.option(
    "--subject", type=TEXT, required=True, help="Data-subject id (as registered or given at ingest)."
)
@click.option(
    "-c",
    "--collection",
    "collections",
    type=TEXT,
    multiple=True,
    help="Only this collection (repeatable; default: every collection you may write).",
)
@_NAME_OPT
@_ALIAS_OPT
@click.option(
    "--receipt-dir",
    type=FsPath(path_type=Path, file_okay=False),
    help="Folder for the receipt file (default: the current folder).",
)
@click.option(
    "--dry-run", is_flag=True, help="List what would be erased (counts per collection); erase nothing."
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--partial",
    is_flag=True,
    help="Accept an erasure that cannot cover every collection (the receipt states what it missed).",
)
@click.pass_obj
def erase_cmd(
    app: App,
    subject: str,
    collections: tuple[str, ...],
    names: tuple[str, ...],
    aliases: tuple[str, ...],
    receipt_dir: Path | None,
    dry_run: bool,
    yes: bool,
    partial: bool,
) -> None:
    """Erasure (GDPR Art 17): remove every trace of a subject you may write (tags, text, identifiers).

    Exits 4 if you may write no collection (nothing is erased) and 1 if some collections were
    out of reach (the rest is erased and receipted), unless --partial is given.
    """
    from ..gdpr.erase import ErasureIncomplete, erase_subject

    scope = {"collections": list(collections) or None, "names": names, "aliases": aliases}
    if dry_run:
        app.emit(erase_subject(app.session(), subject, dry_run=True, **scope), _plan_text)
        return
    if not yes and not app.as_json:
        plan = erase_subject(app.session(), subject, dry_run=True, **scope)
        app.echo(terminal_safe(_plan_text(plan)))
        app.confirm(f"Erase all of this for subject {subject!r}? This cannot be undone", yes)
    try:
        receipt = erase_subject(
            app.session(), subject, receipt_dir=app.path(receipt_dir), partial=partial, **scope
        )
    except ErasureIncomplete as exc:
        app.emit(exc.receipt, _erase_text)  # what was erased, then the one-line error (exit 1)
        raise
    app.emit(receipt, _erase_text)


@gdpr.command("verify-receipt")
@click.argument("receipt", type=FsPath(path_type=Path, dir_okay=False))
@click.pass_obj
def verify_receipt_cmd(app: App, receipt: Path) -> None:
    """Check an erasure receipt file against the audit chain (exit 5 if it does not match)."""
    from ..gdpr.erase import verify_receipt

    app.emit(
        verify_receipt(app.session(), receipt),
        lambda r: (
            f"Receipt {r['receipt_id']} matches audit entry {r['audit_seq']}; "
            f"chain of {r['chain_entries']} entries verified."
        ),
    )


@gdpr.command("record")
@click.option(
    "--out",
    "out_dir",
    type=FsPath(path_type=Path, file_okay=False),
    help="Write record-of-processing.json and .md into this folder (else print Markdown).",
)
@click.pass_obj
def record_cmd(app: App, out_dir: Path | None) -> None:
    """Record of processing (GDPR Art 30) generated from the vault (admins and auditors)."""
    from ..gdpr.record import record_of_processing

    result = record_of_processing(app.session(), out_dir)
    if app.as_json:
        app.emit(
            result["record"]
            if not result["files"]
            else {"files": result["files"], "record": result["record"]}
        )
    elif result["files"]:
        app.echo(
            terminal_safe("Record of processing written:\n" + "\n".join(f"  {f}" for f in result["files"]))
        )
    else:
        app.echo(terminal_safe(result["markdown"]), nl=False)


def _retention_text(p: dict[str, Any]) -> str:
    rows = [
        {"scope": "collection", "name": c["collection"], "days": c["days"]}
        for c in p["collections"]
        if c["days"]
    ]
    rows += [{"scope": "label", "name": lb["label"], "days": lb["days"]} for lb in p["labels"]]
    rows += [{"scope": "backups", "name": "*", "days": p["backups_days"]}] if p["backups_days"] else []
    return table(rows, ["scope", "name", "days"])


def _apply_text(r: dict[str, Any]) -> str:
    if not r["expired"]:
        return "Nothing has expired."
    head = "Would erase:" if r["dry_run"] else "Erased:"
    lines = [head] + [f"  {e['collection']}: {e['documents']} document(s)" for e in r["expired"]]
    if r["receipt"]:
        lines.append(f"Receipt {r['receipt']['receipt_id']} written to {r['receipt']['file']}")
    return "\n".join(lines)


@gdpr.group("retention", invoke_without_command=True)
@click.option(
    "--apply", "apply_", is_flag=True, help="Erase every document whose retention period has run out."
)
@click.option("--dry-run", is_flag=True, help="With --apply: list what would be erased, erase nothing.")
@click.option(
    "-c",
    "--collection",
    "collections",
    multiple=True,
    help="Only this collection (repeatable): its rules, or with --apply what expired in it.",
)
@click.option(
    "--receipt-dir",
    type=FsPath(path_type=Path, file_okay=False),
    help="Folder for the receipt file (default: the current folder).",
)
@click.pass_context
def retention(
    ctx: click.Context, apply_: bool, dry_run: bool, collections: tuple[str, ...], receipt_dir: Path | None
) -> None:
    """Show retention periods; --apply erases what expired (with a receipt); `set` changes them."""
    if ctx.invoked_subcommand is not None:
        return
    app: App = ctx.obj
    if apply_:
        from ..gdpr.retention import apply_retention

        app.emit(
            apply_retention(
                app.session(),
                collections=list(collections) or None,
                receipt_dir=app.path(receipt_dir),
                dry_run=dry_run,
            ),
            _apply_text,
        )
        return
    if dry_run or receipt_dir:
        from ..errors import UsageError

        raise UsageError("--dry-run and --receipt-dir go with --apply")
    from ..gdpr.retention import retention_policy

    app.emit(retention_policy(app.session(), list(collections) or None), _retention_text)


@retention.command("set")
@click.option("-c", "--collection", help="Set the period of this collection.")
@click.option("--label", help="Set the period of this label (in every collection).")
@click.option("--backups", is_flag=True, help="Set how long backups are kept (shown in erasure receipts).")
@click.option("--days", "--period", "period", help="Retention period: 30d, 6m, 8y (a bare number is days).")
@click.option("--clear", is_flag=True, help="Remove the period instead.")
@click.pass_obj
def retention_set(
    app: App, collection: str | None, label: str | None, backups: bool, period: str | None, clear: bool
) -> None:
    """Set or clear a retention period (admin). It runs from each document's own date when known."""
    from ..errors import UsageError
    from ..gdpr.retention import parse_period, set_backup_retention, set_retention

    if clear == (period is not None):
        raise UsageError("give --days PERIOD (e.g. 8y) or --clear")
    days = None if clear else parse_period(period)  # type: ignore[arg-type]
    if backups:
        if collection or label:
            raise UsageError("--backups goes alone")
        result = set_backup_retention(app.session(), days)
    else:
        result = set_retention(app.session(), collection=collection, label=label, days=days)
    app.emit(
        result,
        lambda r: (
            f"Retention of {r.get('collection') or r.get('label') or 'backups'}: "
            f"{str(r['days']) + ' days' if r['days'] else 'none'}."
        ),
    )


@gdpr.command("purpose")
@click.argument("collection")
@click.argument("purpose", required=False)
@click.option("--legal-basis", help="Legal basis, e.g. 'Art. 9(2)(h) GDPR: provision of health care'.")
@click.pass_obj
def purpose_cmd(app: App, collection: str, purpose: str | None, legal_basis: str | None) -> None:
    """Record the purpose (and legal basis) of processing COLLECTION's data (admin)."""
    from ..gdpr.purpose import set_purpose

    app.emit(
        set_purpose(app.session(), collection, purpose, legal_basis),
        lambda r: (
            f"Purpose of {r['collection']}: {r['purpose'] or '(none)'}"
            + (f"; legal basis: {r['legal_basis']}" if r["legal_basis"] else "")
            + "."
        ),
    )


def _bg_text(r: dict[str, Any]) -> str:
    if r["break_glass"]:
        text = (
            f"Break-glass on for {r['collection']}: emergency keys provisioned for "
            f"{', '.join(r['provisioned']) or 'nobody'}.\n"
            "Emergency code (shown once; seal it in an envelope kept off this laptop): "
            f"{r['emergency_code']}\n"
            "A break-glass read needs this code and the reader's own key."
        )
        if r["vault_setting"] != "on":
            text += (
                " Note: the vault setting break_glass is off, so no break-glass read works until it is on."
            )
        return text
    return (
        f"Break-glass off for {r['collection']}: {r['wraps_removed']} emergency key(s) removed, "
        "collection key rotated."
    )


@click.command("break-glass")
@click.argument("collection")
@click.argument("state", type=click.Choice(["on", "off"]))
@click.option(
    "--to",
    "users",
    multiple=True,
    help="Only these users may break the glass (repeatable; default: every admin and member).",
)
@click.pass_obj
def break_glass_cmd(app: App, collection: str, state: str, users: tuple[str, ...]) -> None:
    """Allow (on) or forbid (off) emergency reads of COLLECTION with a reason and the code (admin)."""
    from ..gdpr.breakglass import set_break_glass

    if users and state == "off":
        raise click.UsageError("--to goes with on")
    app.emit(set_break_glass(app.session(), collection, state == "on", list(users) or None), _bg_text)


@click.command("redact")
@click.argument("collection")
@click.argument("mode", type=click.Choice(["phi", "off"]))
@click.pass_obj
def redact_cmd(app: App, collection: str, mode: str) -> None:
    """Redact identifiers to pseudonyms in COLLECTION from now on (phi) or stop (off) (admin).

    Documents already ingested keep their text until they are ingested again.
    """
    from ..gdpr.redact import set_redaction

    app.emit(
        set_redaction(app.session(), collection, mode),
        lambda r: (
            f"Redaction of {r['collection']}: {r['redact']} (applies to documents ingested from now on)."
        ),
    )


def _attach_to_collections() -> None:
    # ``offline collections break-glass|redact`` live beside create/grant/revoke without editing vault.py.
    from .vault import collections

    if "break-glass" not in collections.commands:
        collections.add_command(break_glass_cmd)
    if "redact" not in collections.commands:
        collections.add_command(redact_cmd)


_attach_to_collections()

commands = [gdpr]
