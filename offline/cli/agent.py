"""``offline unlock``, ``offline lock``, ``offline status``: the unlocked agent (offline.agent)."""

from __future__ import annotations

from typing import Any

import click

from .app import App


def _left(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _status_text(d: dict[str, Any]) -> str:
    if not d.get("unlocked"):
        return f"Locked: no agent for {d['user']} on {d['vault']}."
    return (
        f"Unlocked: agent pid {d['pid']} for {d['user']} on {d['vault']} since {d['since']}; "
        f"locks after {_left(d['idle_timeout_s'])} idle ({_left(d['time_left_s'])} left)."
    )


@click.command()
@click.option(
    "--idle",
    metavar="DURATION",
    help="Lock after this much inactivity, e.g. 90s, 15m, 1h. [default: vault setting idle_timeout_s]",
)
@click.option("--no-preload", is_flag=True, help="Do not warm the embedding and generation models.")
@click.pass_obj
def unlock(app: App, idle: str | None, no_preload: bool) -> None:
    """Unlock once: a background agent keeps keys and models warm for your later commands."""
    from .. import status
    from ..agent.client import parse_duration
    from ..agent.client import unlock as start_agent

    idle_s = parse_duration(idle) if idle is not None else None

    def passphrase() -> str:
        secret = app.passphrase()
        # The agent now unlocks and warms the models: seconds of silence otherwise.
        status.loading("the vault" + ("" if no_preload else " and the models") + " in the agent")
        return secret

    info = start_agent(app.vault_path, app.user_name, passphrase, idle_s, preload=not no_preload)
    app.emit(info, lambda d: ("Already unlocked. " if d.get("already") else "") + _status_text(d))


@click.command()
@click.pass_obj
def lock(app: App) -> None:
    """Lock now: the agent closes the vault, wipes its keys and exits."""
    from ..agent.client import lock as stop_agent

    info = stop_agent(app.vault_path, app.user_name)
    app.emit(
        info,
        lambda d: (
            f"Locked {d['user']} on {d['vault']}."
            if d["was_unlocked"]
            else f"Nothing to lock: no agent for {d['user']} on {d['vault']}."
        ),
    )


@click.command()
@click.pass_obj
def status(app: App) -> None:
    """Whether an agent holds this vault unlocked for you, and for how long."""
    from ..agent.client import status as agent_status
    from ..vault.header import check_vault_dir

    check_vault_dir(app.vault_path)  # "no vault at ...", not "Locked"

    app.emit(agent_status(app.vault_path, app.user_name), _status_text)


commands = [unlock, lock, status]
