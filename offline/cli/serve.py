"""``offline serve`` and ``offline users token create|list|revoke``."""

from __future__ import annotations

from pathlib import Path

import click

from .app import App
from .params import TEXT, Count, Number
from .vault import users


@click.command()
@click.option(
    "--listen",
    default="127.0.0.1:8765",
    show_default=True,
    help="HOST:PORT to listen on (an IP address; anything but loopback needs TLS).",
)
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="PEM certificate.")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="PEM private key.")
@click.option(
    "--generate-tls", is_flag=True, help="Make a self-signed certificate and print its fingerprint."
)
@click.option(
    "--idle",
    "idle_s",
    type=Number(1, 86400),
    default=300,
    show_default=True,
    help="Seconds before an unused session's keys are dropped.",
)
@click.option(
    "--queue",
    "queue_size",
    type=Count(1, 10000),
    default=64,
    show_default=True,
    help="Requests waiting or running at once; more get 429.",
)
@click.option(
    "--per-user",
    type=Count(1, 1000),
    default=8,
    show_default=True,
    help="Requests one user may have waiting or running; more get 429.",
)
@click.option(
    "--generate-backend",
    type=TEXT,
    metavar="URL",
    help="OpenAI-compatible engine for generation (http://IP:PORT); the only address reachable.",
)
@click.pass_obj
def serve(
    app: App,
    listen: str,
    tls_cert: str | None,
    tls_key: str | None,
    generate_tls: bool,
    idle_s: float,
    queue_size: int,
    per_user: int,
    generate_backend: str | None,
) -> None:
    """Serve the vault to the team over an OpenAI-compatible HTTP API (per-user API tokens)."""
    from ..server.run import prepare
    from ..server.run import serve as run_server

    vault: Path = app.vault_path
    plan = prepare(vault, listen, tls_cert, tls_key, generate_tls)

    def ready(p: dict) -> None:
        click.echo(f"offline serve: {p['url']} (vault {vault})", err=True)
        if generate_backend:
            click.echo(f"generation: {generate_backend} (the only address this process may reach)", err=True)
        if p["fingerprint"]:
            click.echo(
                f"TLS certificate SHA-256 fingerprint (pin it in clients): {p['fingerprint']}", err=True
            )

    run_server(
        vault,
        plan,
        idle_s=idle_s,
        queue_size=queue_size,
        per_user=per_user,
        generate_backend=generate_backend,
        ready=ready,
    )


@users.group("token")
def token() -> None:
    """API tokens for the team server: each is a keyslot for your own keys."""


@token.command("create")
@click.argument("name", type=TEXT, required=False)
@click.option(
    "--expires", default="90d", show_default=True, help="Lifetime: 30m, 12h, 90d, 2w (at most 366d)."
)
@click.pass_obj
def token_create(app: App, name: str | None, expires: str) -> None:
    """Make an API token for NAME (yourself); it is printed once and stored nowhere."""
    from ..vault.tokens import create_token, parse_duration

    lifetime = parse_duration(expires)
    r = create_token(app.session(), name or app.user_name, lifetime)
    app.emit(
        r,
        lambda d: (
            f"{d['token']}\n(token {d['token_id']} for {d['user']}, expires {d['expires_at']}; "
            "shown once: store it now)"
        ),
    )


@token.command("list")
@click.pass_obj
def token_list(app: App) -> None:
    """Tokens and their state (members: their own)."""
    from ..vault.tokens import list_tokens

    rows = list_tokens(app.session())
    app.emit(
        rows,
        lambda rs: (
            "\n".join(
                f"{r['token_id']}  {r['user']:<16} {r['status']:<8} expires {r['expires_at']}" for r in rs
            )
            or "no tokens"
        ),
    )


@token.command("revoke")
@click.argument("token_id", type=TEXT)
@click.pass_obj
def token_revoke(app: App, token_id: str) -> None:
    """Revoke a token (yours, or anyone's as an admin): its slot is deleted."""
    from ..vault.tokens import revoke_token

    r = revoke_token(app.session(), token_id)
    app.emit(r, lambda d: f"revoked token {d['token_id']} of {d['user']}")


commands = [serve]
