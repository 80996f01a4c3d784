"""Shared CLI state: global options, passphrase resolution, the unlocked session, output."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from .. import config
from ..errors import UsageError
from ..textsafe import one_line, terminal_safe


@dataclass
class App:
    """What every command receives through ``click.pass_obj``."""

    vault: Path | None
    user: str | None
    passphrase_file: str | None
    as_json: bool
    verbose: bool
    _session: Any = field(default=None, repr=False)
    _borrowed: bool = field(default=False, repr=False)  # session lent by the agent: not ours to close

    @property
    def in_agent(self) -> bool:
        """True when this command runs inside the unlocked agent, on the session it lent."""
        return self._borrowed

    @property
    def vault_path(self) -> Path:
        return self.vault if self.vault is not None else config.default_vault_path()

    @property
    def user_name(self) -> str:
        return self.user or config.default_user()

    def passphrase(self, prompt: str = "Passphrase") -> str:
        """``--passphrase-file``, ``OFFLINE_PASSPHRASE_FILE``, ``OFFLINE_PASSPHRASE``, else a prompt."""
        if self.passphrase_file:
            return config.read_secret_file(self.passphrase_file)
        env = os.environ.get(config.ENV_PASSPHRASE)
        if env:
            return env
        if not sys.stdin.isatty():
            raise UsageError(
                "no passphrase: use --passphrase-file, OFFLINE_PASSPHRASE_FILE or OFFLINE_PASSPHRASE"
            )
        return click.prompt(f"{prompt} for {self.user_name}", hide_input=True)

    def new_passphrase(self, file: str | None = None, who: str | None = None, allow_weak: bool = False) -> str:
        """A new passphrase: ``--new-passphrase-file``, ``OFFLINE_NEW_PASSPHRASE``, else asked twice."""
        path = file or os.environ.get(config.ENV_NEW_PASSPHRASE_FILE)
        if path:
            value = config.read_secret_file(path)
        elif os.environ.get(config.ENV_NEW_PASSPHRASE):
            value = os.environ[config.ENV_NEW_PASSPHRASE]
        elif sys.stdin.isatty():
            value = click.prompt(
                f"New passphrase for {who or self.user_name}", hide_input=True, confirmation_prompt=True
            )
        else:
            raise UsageError("no new passphrase: use --new-passphrase-file or OFFLINE_NEW_PASSPHRASE")
        from ..vault.passphrase import check_new_passphrase

        check_new_passphrase(value, user=who or self.user_name, allow_weak=allow_weak)
        return value

    def break_glass_code(self) -> str:
        """The emergency code: ``OFFLINE_BREAK_GLASS_CODE_FILE``, ``OFFLINE_BREAK_GLASS_CODE``, else a prompt."""
        path = os.environ.get("OFFLINE_BREAK_GLASS_CODE_FILE")
        if path:
            return config.read_secret_file(path)
        env = os.environ.get("OFFLINE_BREAK_GLASS_CODE")
        if env:
            return env
        if not sys.stdin.isatty():
            raise UsageError("break-glass needs the emergency code: set OFFLINE_BREAK_GLASS_CODE_FILE "
                             "or OFFLINE_BREAK_GLASS_CODE, or run it at a terminal")
        return click.prompt("Emergency code (from the break-glass envelope)", hide_input=True)

    def session(self) -> Any:
        """The unlocked vault session for this user (opened once per command).

        At a terminal a mistyped passphrase is asked again, three tries in all; from a file or the
        environment one wrong passphrase is final.
        """
        if self._session is None:
            from ..errors import AuthenticationFailed
            from ..vault import open_session

            interactive = not self.passphrase_file and not os.environ.get(config.ENV_PASSPHRASE) \
                and sys.stdin.isatty()
            for attempt in range(3 if interactive else 1):
                try:
                    self._session = open_session(self.vault_path, self.user_name, self.passphrase)
                    break
                except AuthenticationFailed as exc:
                    if attempt == 2 or not interactive:
                        raise
                    click.echo(f"{exc}; try again.", err=True)
            from ..gdpr.journal import backup_warning

            warning = backup_warning(self._session)  # a backup restored after an erasure made here
            if warning:
                click.echo(warning, err=True)
        return self._session

    def confirm(self, question: str, yes: bool) -> None:
        """The one rule for destructive commands: ask, unless ``--yes`` or ``--json`` (scripts)."""
        if not yes and not self.as_json:
            click.confirm(question, abort=True)

    def use_session(self, session: Any) -> None:
        """Adopt a session a command opened itself (with options ``session()`` does not take)."""
        self._session = session

    def close(self) -> None:
        if self._session is not None and not self._borrowed:
            self._session.close()
        self._session = None

    def emit(self, data: Any, text: Callable[[Any], str | None] | None = None) -> None:
        """Print ``data`` as JSON with ``--json``, else ``text(data)`` (or nothing if it is None).

        Text goes through :func:`~offline.textsafe.terminal_safe`: names, headings and passages
        come from documents and users and may hold escape sequences. JSON needs nothing more:
        ``json.dumps`` writes every control character as a ``\\u`` escape.
        """
        if self.as_json:
            click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
        elif text is not None:
            out = text(data)
            if out:
                click.echo(terminal_safe(out))


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain aligned text table (no colour codes, so it pipes cleanly).

    Every cell is put on one line (:func:`~offline.textsafe.one_line`): a document name holding a
    newline must not print a row of its own.
    """
    if not rows:
        return "(none)"
    rows = [{c: one_line(r.get(c, "")) for c in columns} for r in rows]
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    head = "  ".join(c.upper().ljust(widths[c]) for c in columns)
    body = ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join([head, *body]).rstrip()
