"""``offline init``, ``offline vault ...``, ``offline users ...``, ``offline collections ...``."""

from __future__ import annotations

from pathlib import Path

import click

from .app import App, table
from .params import FsPath

_new_pass_file = click.option(
    "--new-passphrase-file",
    type=FsPath(dir_okay=False),
    envvar="OFFLINE_NEW_PASSPHRASE_FILE",
    help="File holding the new passphrase. [env: OFFLINE_NEW_PASSPHRASE_FILE]",
)
_allow_weak = click.option(
    "--allow-weak", is_flag=True, help="Accept a passphrase zxcvbn rates guessable (test vaults only)."
)


def new_pass_opt(f):  # noqa: ANN001, ANN201 (a decorator)
    return _new_pass_file(_allow_weak(f))


@click.command()
@new_pass_opt
@click.pass_obj
def init(app: App, new_passphrase_file: str | None, allow_weak: bool) -> None:
    """Create a vault; the current user becomes its first admin."""
    from ..vault import create_vault

    passphrase = app.new_passphrase(new_passphrase_file, allow_weak=allow_weak)
    session = create_vault(app.vault_path, app.user_name, passphrase)
    fingerprint = session.fingerprint
    session.close()
    app.emit(
        {
            "vault": str(app.vault_path),
            "admin": app.user_name,
            "vault_id": session.vault_id,
            "vault_fingerprint": fingerprint,
        },
        lambda d: (
            f"Created vault {d['vault']} (id {d['vault_id']}) with admin {d['admin']}.\n"
            f"Vault fingerprint: {d['vault_fingerprint']}\n"
            "Record it off this laptop: `audit verify`, `doctor` and every audit export show it, "
            "and a reviewer compares them with this one."
        ),
    )


@click.group()
def vault() -> None:
    """Check, back up, re-key and configure the vault."""


@vault.command("check")
@click.pass_obj
def vault_check(app: App) -> None:
    """Verify every page of every database (SQLCipher HMACs + SQLite integrity). Exit 5 on damage."""
    from ..vault.maintenance import check_vault

    report = check_vault(app.session())
    app.emit(report, lambda r: "\n".join(f"ok  {f}" for f in r["files"]) + "\nvault check passed")


@vault.command("backup")
@click.argument("dest", type=FsPath(path_type=Path))
@click.pass_obj
def vault_backup(app: App, dest: Path) -> None:
    """Write a consistent, still-encrypted copy of the vault to DEST (a new folder)."""
    from ..vault.maintenance import backup_vault

    result = backup_vault(app.session(), dest)
    app.emit(
        result,
        lambda r: (
            f"Backup written to {r['dest']} ({r['files']} files). "
            f"Restore: copy the folder back and open it with --vault."
        ),
    )


@vault.command("accept-restore")
@click.pass_obj
def vault_accept_restore(app: App) -> None:
    """After restoring a backup in place on purpose: accept its older audit log (audited, high)."""
    from ..vault import open_session

    session = open_session(app.vault_path, app.user_name, app.passphrase, accept_restore=True)
    app.use_session(session)
    app.emit(
        {"accepted": True, "head_seq": session.verifier.seq},
        lambda d: (
            f"Accepted the restored vault at audit entry {d['head_seq']} for {app.user_name}; "
            "every other user who used it runs this too."
        ),
    )


@vault.command("rekey")
@click.pass_obj
def vault_rekey(app: App) -> None:
    """Rotate every database key and re-wrap every keyslot (admin)."""
    from ..vault.maintenance import rekey_vault

    result = rekey_vault(app.session())
    app.emit(result, lambda r: f"Re-keyed the vault database and {r['collections']} collection(s).")


@vault.command("set")
@click.argument("key")
@click.argument("value")
@click.pass_obj
def vault_set(app: App, key: str, value: str) -> None:
    """Change a vault setting (admin): audit_questions sealed|none|full, idle_timeout_s (90s, 15m, 1h),
    break_glass on|off (off removes every emergency key and rotates those collections)."""
    from ..vault import set_setting

    stored = set_setting(app.session(), key, value)
    app.emit({key: stored}, lambda d: f"{key} = {stored}")


@click.group()
def users() -> None:
    """Enrol and remove users (roles: admin, member, auditor)."""


@users.command("add")
@click.argument("name")
@click.option(
    "--role", type=click.Choice(["admin", "member", "auditor"]), default="member", show_default=True
)
@new_pass_opt
@click.pass_obj
def users_add(app: App, name: str, role: str, new_passphrase_file: str | None, allow_weak: bool) -> None:
    """Enrol NAME with their own passphrase (admin)."""
    from ..vault import add_user

    session = app.session()
    result = add_user(
        session, name, role, app.new_passphrase(new_passphrase_file, who=name, allow_weak=allow_weak)
    )

    def text(r: dict) -> str:
        out = f"Added {r['role']} {r['name']}."
        if r["break_glass_provisioned"]:
            out += (
                f" Break-glass wraps for: {', '.join(r['break_glass_provisioned'])} "
                "(they still need the code)."
            )
        elif r["role"] == "auditor":
            out += " Auditors get no break-glass wrap: they never read documents."
        return out

    app.emit(result, text)


@users.command("list")
@click.pass_obj
def users_list(app: App) -> None:
    """List enrolled users."""
    from ..vault import list_users

    rows = list_users(app.session())
    app.emit(rows, lambda r: table(r, ["name", "role", "created_at", "created_by"]))


@users.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def users_remove(app: App, name: str, yes: bool) -> None:
    """Remove NAME: their keyslot and grants go, and the keys they held are rotated (admin)."""
    from ..vault import remove_user

    app.confirm(f"Remove user {name}? Their keyslot and grants go and every key they held is rotated", yes)
    result = remove_user(app.session(), name)
    app.emit(
        result,
        lambda r: (
            f"Removed {r['name']}; rotated the vault key and the keys of "
            f"{len(r['rotated_collections'])} collection(s)."
        ),
    )


@users.command("passwd")
@new_pass_opt
@click.pass_obj
def users_passwd(app: App, new_passphrase_file: str | None, allow_weak: bool) -> None:
    """Change your own passphrase (re-wraps only your keyslot)."""
    from ..vault import change_passphrase

    session = app.session()
    change_passphrase(session, app.new_passphrase(new_passphrase_file, allow_weak=allow_weak))
    app.emit({"user": session.user, "changed": True}, lambda d: f"Passphrase changed for {d['user']}.")


@click.group()
def collections() -> None:
    """Create collections and grant access to them (a grant is a wrapped key)."""


@collections.command("create")
@click.argument("name")
@click.option(
    "--redact",
    type=click.Choice(["phi", "off"]),
    default="off",
    show_default=True,
    help="phi: replace detected identifiers by stable pseudonyms before indexing (offline.gdpr.redact).",
)
@click.pass_obj
def collections_create(app: App, name: str, redact: str) -> None:
    """Create collection NAME with its own random key (admin)."""
    from ..vault.collections import create_collection

    result = create_collection(app.session(), name)
    if redact != "off":
        from ..gdpr.redact import set_redaction

        result["redact"] = set_redaction(app.session(), name, redact)["redact"]
    app.emit(
        result,
        lambda r: (
            f"Created collection {r['name']}"
            + (" (identifiers redacted to pseudonyms)." if r.get("redact") else ".")
        ),
    )


@collections.command("list")
@click.pass_obj
def collections_list(app: App) -> None:
    """Collections you may see, with your access."""
    from ..vault.collections import list_collections

    rows = list_collections(app.session())
    app.emit(
        rows,
        lambda r: table(
            [{**x, "labels": ",".join(x["labels"]) if x["labels"] else "*"} for x in r],
            ["name", "access", "labels", "created_by", "created_at"],
        ),
    )


@collections.command("grant")
@click.argument("collection")
@click.argument("user")
@click.option("--read", "perm", flag_value="read", default=True, help="Read access (default).")
@click.option("--write", "perm", flag_value="write", help="Read and write access.")
@click.option(
    "--label", "labels", multiple=True, help="Limit the grant to documents with this label (repeat)."
)
@click.pass_obj
def collections_grant(app: App, collection: str, user: str, perm: str, labels: tuple[str, ...]) -> None:
    """Give USER access to COLLECTION (admin)."""
    from ..vault.collections import grant

    result = grant(app.session(), collection, user, perm, list(labels) or None)  # type: ignore[arg-type]
    app.emit(
        result,
        lambda r: (
            f"Granted {r['perm']} on {r['collection']} to {r['user']}"
            + (f" (labels: {', '.join(r['labels'])})" if r["labels"] else "")
            + "."
        ),
    )


@collections.command("revoke")
@click.argument("collection")
@click.argument("user")
@click.pass_obj
def collections_revoke(app: App, collection: str, user: str) -> None:
    """Remove USER's access to COLLECTION and rotate its key (admin)."""
    from ..vault.collections import revoke

    result = revoke(app.session(), collection, user)
    app.emit(result, lambda r: f"Revoked {r['user']} on {r['collection']}; collection key rotated.")


@collections.command("holders")
@click.argument("collection")
@click.pass_obj
def collections_holders(app: App, collection: str) -> None:
    """List everyone who holds a wrap of COLLECTION's key, and why (admin)."""
    from ..vault.collections import key_holders

    rows = key_holders(app.session(), collection)
    app.emit(rows, lambda r: table(r, ["user", "holds", "why"]))


@collections.command("grants")
@click.argument("collection", required=False)
@click.pass_obj
def collections_grants(app: App, collection: str | None) -> None:
    """List grants as the signed audit log records them (admins: all; others: their own)."""
    _emit_grants(app, collection)


def _emit_grants(app: App, collection: str | None) -> None:
    from ..vault.collections import list_grants

    rows = [
        {**g, "labels": ",".join(g["labels"]) if g["labels"] else "(all)"}
        for g in list_grants(app.session(), collection)
    ]
    app.emit(rows, lambda r: table(r, ["collection", "user", "perm", "labels", "granted_by", "granted_at"]))


@collections.command("drop")
@click.argument("collection")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def collections_drop(app: App, collection: str, yes: bool) -> None:
    """Delete COLLECTION, its documents and its keys (admin)."""
    from ..vault.collections import drop_collection

    app.confirm(f"Drop collection {collection} and all its documents?", yes)
    result = drop_collection(app.session(), collection)
    app.emit(result, lambda r: f"Dropped collection {r['name']}.")


@click.group()
def grants() -> None:
    """Who may read or write what, as the signed audit log records it."""


@grants.command("list")
@click.option("-c", "--collection", help="Only this collection.")
@click.pass_obj
def grants_list(app: App, collection: str | None) -> None:
    """List grants (admins: all; others: their own)."""
    _emit_grants(app, collection)


commands = [init, vault, users, collections, grants]
