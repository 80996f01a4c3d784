"""``offline doctor``: print the health report; exit 5 if any check failed."""

from __future__ import annotations

import click

from .. import config
from .app import App


def _can_unlock(app: App) -> bool:
    """Whether a passphrase can be had without failing (file, env, or a terminal to ask on)."""
    return bool(app.passphrase_file or app.getenv(config.ENV_PASSPHRASE) or app.interactive())


@click.command()
@click.pass_obj
def doctor(app: App) -> None:
    """Check models, vault encryption, permissions, KDF, audit chain, network guard, versions.

    Each line is PASS, FAIL or SKIP with a reason. Checks that need the key run when a passphrase is
    available (--passphrase-file, OFFLINE_PASSPHRASE or a prompt). Exit 5 if anything failed.
    """
    from ..doctor import run_doctor_with

    report = run_doctor_with(app.vault_path, app.session if _can_unlock(app) else None)
    app.emit(report.to_dict(), lambda _d: report.text())
    report.raise_for_failures()


commands = [doctor]
