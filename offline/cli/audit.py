"""``offline audit tail|verify|checkpoint|export``: read, prove and hand over the audit log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .app import App, table
from .params import Count, FsPath

SEVERITIES = ["info", "notice", "warning", "high"]
FORMATS = ["jsonl", "csv", "cef", "syslog"]


@click.group()
def audit() -> None:
    """Read, verify, checkpoint and export the tamper-evident audit log."""


def _short(payload: dict[str, Any], width: int = 80) -> str:
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 3] + "..."


@audit.command("tail")
@click.option(
    "-n", "n", type=Count(1, 100_000), default=20, show_default=True, help="How many entries (newest last)."
)
@click.option("--user", "user_filter", help="Only this user's entries (members: only their own).")
@click.option("--action", help="Only this action, or a family: 'grant' matches grant.add and grant.revoke.")
@click.option(
    "--since", help="From this time: ISO 8601 (2025-01-31, 2025-01-31T09:30Z) or an age (15m, 2h, 7d)."
)
@click.option("--until", help="Before this time (same forms as --since).")
@click.option("--severity", type=click.Choice(SEVERITIES), help="Only this severity and above.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def tail(
    app: App,
    n: int,
    user_filter: str | None,
    action: str | None,
    since: str | None,
    until: str | None,
    severity: str | None,
    as_json: bool,
) -> None:
    """Show the latest audit entries. Admins and auditors see all; members see their own."""
    from ..audit.query import tail as tail_entries

    app.as_json = app.as_json or as_json
    rows = tail_entries(
        app.session(), n, user=user_filter, action=action, since=since, until=until, severity=severity
    )
    app.emit(
        rows,
        lambda r: table(
            [{**x, "user": _who(x), "payload": _short(x["payload"])} for x in r],
            ["seq", "ts", "user", "severity", "action", "payload"],
        ),
    )


def _who(entry: dict[str, Any]) -> str:
    # A failed unlock is signed by whoever unlocked next (the failing process had no key): say so.
    if entry.get("action") == "unlock.failed":
        return f"{entry['payload'].get('attempted_user')} (logged by {entry['user']})"
    return str(entry["user"])


@audit.command("verify")
@click.option(
    "--checkpoint",
    type=FsPath(dir_okay=False, path_type=Path),
    help="Also prove the log still extends this checkpoint (catches truncation).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def verify(app: App, checkpoint: Path | None, as_json: bool) -> None:
    """Recompute every hash and signature. Exit 5 naming the first bad entry."""
    from ..audit.verify import verify_log
    from ..errors import AuditChainBroken

    app.as_json = app.as_json or as_json
    try:
        result = verify_log(app.session(), checkpoint)
    except AuditChainBroken as exc:
        if app.as_json:
            app.emit({"ok": False, "first_bad_seq": exc.seq, "error": str(exc)})
        raise

    def text(r: dict[str, Any]) -> str:
        out = (
            f"audit log OK: {r['entries']} entries verified, head {r['head_hash']}\n"
            f"vault fingerprint {r['vault_fingerprint']} (compare with the one recorded at set-up)"
        )
        if "checkpoint" in r:
            out += (
                f"\nextends checkpoint of {r['checkpoint']['created']} ({r['checkpoint']['entries']} entries)"
            )
        return out

    app.emit(result, text)


@audit.command("checkpoint")
@click.option(
    "--out",
    required=True,
    type=FsPath(dir_okay=False, path_type=Path),
    help="Where to write the signed checkpoint (keep a copy off this machine).",
)
@click.option("--force", is_flag=True, help="Replace an existing file.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def checkpoint(app: App, out: Path, force: bool, as_json: bool) -> None:
    """Write a signed statement of the log's head (admins and auditors)."""
    from ..audit.checkpoint import create_checkpoint

    app.as_json = app.as_json or as_json
    result = create_checkpoint(app.session(), out, force=force)
    app.emit(
        result,
        lambda r: (
            f"Checkpoint of {r['entries']} entries written to {r['out']}\n"
            f"head {r['head_hash']}\naudit key {r['audit_key_fingerprint']}"
        ),
    )


@audit.command("export")
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True, help="Output format.")
@click.option("--out", required=True, type=FsPath(dir_okay=False, path_type=Path), help="Export file.")
@click.option("--since", help="From this time (inclusive): ISO 8601 or an age (7d).")
@click.option("--until", help="Before this time (exclusive).")
@click.option("--user", "user_filter", help="Only this user's entries.")
@click.option("--action", help="Only this action or action family.")
@click.option("--force", is_flag=True, help="Replace existing export files.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def export(
    app: App,
    fmt: str,
    out: Path,
    since: str | None,
    until: str | None,
    user_filter: str | None,
    action: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Export entries with a signed manifest a reviewer checks with openssl and sha256sum."""
    from ..audit.export import export_log

    app.as_json = app.as_json or as_json
    result = export_log(
        app.session(), fmt, out, since=since, until=until, user=user_filter, action=action, force=force
    )
    app.emit(
        result,
        lambda r: (
            f"Exported {r['count']} entries ({fmt}) to {r['paths']['file']}\n"
            f"manifest {r['paths']['manifest']} (+ .sig), key {r['paths']['pub']}\n"
            f"sha256 {r['file_sha256']}\naudit key {r['audit_key_fingerprint']}"
        ),
    )


commands = [audit]
