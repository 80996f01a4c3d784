"""Shared CLI state: global options, passphrase resolution, the unlocked session, output.

Commands read and write only through the :class:`App`: its streams, environment and working
folder are this process's own unless the agent runs the command for a client
(:func:`offline.cli.inprocess.run_in_process`), which passes the client's in explicitly.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

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
    borrowed: bool = field(default=False, repr=False)  # session lent by the agent: not ours to close
    # None: this process's own (sys.stdin/stdout/stderr, os.environ, the working folder).
    stdin: TextIO | None = field(default=None, repr=False)
    stdout: TextIO | None = field(default=None, repr=False)
    stderr: TextIO | None = field(default=None, repr=False)
    env: Mapping[str, str] | None = field(default=None, repr=False)
    cwd: Path | None = None

    # -- the command's surroundings -------------------------------------------------------------
    @property
    def inp(self) -> TextIO:
        return self.stdin if self.stdin is not None else sys.stdin

    @property
    def out(self) -> TextIO:
        return self.stdout if self.stdout is not None else sys.stdout

    @property
    def err(self) -> TextIO:
        return self.stderr if self.stderr is not None else sys.stderr

    def getenv(self, name: str) -> str | None:
        """An environment value as the command's caller has it."""
        return (self.env if self.env is not None else os.environ).get(name)

    def interactive(self) -> bool:
        """Whether a person can answer a prompt (stdin is a terminal)."""
        try:
            return self.inp.isatty()
        except (AttributeError, ValueError):
            return False

    def echo(self, message: Any = None, *, err: bool = False, nl: bool = True) -> None:
        """``click.echo`` to the command's stdout (or stderr)."""
        click.echo(message, file=self.err if err else self.out, nl=nl)

    def path(self, value: Path | None) -> Path | None:
        """A path the caller typed, relative to their working folder (None: that folder, if not ours)."""
        if value is None:
            return self.cwd
        return value if self.cwd is None or Path(value).is_absolute() else self.cwd / value

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
        env = self.getenv(config.ENV_PASSPHRASE)
        if env:
            return env
        if not self.interactive():
            raise UsageError(
                "no passphrase: use --passphrase-file, OFFLINE_PASSPHRASE_FILE or OFFLINE_PASSPHRASE"
            )
        return click.prompt(f"{prompt} for {self.user_name}", hide_input=True)

    def new_passphrase(
        self, file: str | None = None, who: str | None = None, allow_weak: bool = False
    ) -> str:
        """A new passphrase: ``--new-passphrase-file``, ``OFFLINE_NEW_PASSPHRASE``, else asked twice."""
        path = file or self.getenv(config.ENV_NEW_PASSPHRASE_FILE)
        if path:
            value = config.read_secret_file(str(self.path(Path(path))))
        elif self.getenv(config.ENV_NEW_PASSPHRASE):
            value = str(self.getenv(config.ENV_NEW_PASSPHRASE))
        elif self.interactive():
            value = click.prompt(
                f"New passphrase for {who or self.user_name}", hide_input=True, confirmation_prompt=True
            )
        else:
            raise UsageError("no new passphrase: use --new-passphrase-file or OFFLINE_NEW_PASSPHRASE")
        from ..vault.passphrase import check_new_passphrase

        check_new_passphrase(value, user=who or self.user_name, allow_weak=allow_weak)
        return value

    def break_glass_code(self) -> str:
        """The emergency code: ``OFFLINE_BREAK_GLASS_CODE_FILE``, ``OFFLINE_BREAK_GLASS_CODE``, else a
        prompt."""
        path = self.getenv("OFFLINE_BREAK_GLASS_CODE_FILE")
        if path:
            return config.read_secret_file(str(self.path(Path(path))))
        env = self.getenv("OFFLINE_BREAK_GLASS_CODE")
        if env:
            return env
        if not self.interactive():
            raise UsageError(
                "break-glass needs the emergency code: set OFFLINE_BREAK_GLASS_CODE_FILE "
                "or OFFLINE_BREAK_GLASS_CODE, or run it at a terminal"
            )
        return click.prompt("Emergency code (from the break-glass envelope)", hide_input=True)

    def session(self) -> Any:
        """The unlocked vault session for this user (opened once per command).

        At a terminal a mistyped passphrase is asked again, three tries in all; from a file or the
        environment one wrong passphrase is final.
        """
        if self._session is None:
            from ..errors import AuthenticationFailed
            from ..vault import open_session

            interactive = (
                not self.passphrase_file and not self.getenv(config.ENV_PASSPHRASE) and self.interactive()
            )
            for attempt in range(3 if interactive else 1):
                try:
                    self._session = open_session(self.vault_path, self.user_name, self.passphrase)
                    break
                except AuthenticationFailed as exc:
                    if attempt == 2 or not interactive:
                        raise
                    self.echo(f"{exc}; try again.", err=True)
            from ..gdpr.journal import backup_warning

            warning = backup_warning(self._session)  # a backup restored after an erasure made here
            if warning:
                self.echo(warning, err=True)
        return self._session

    def confirm(self, question: str, yes: bool) -> None:
        """The one rule for destructive commands: ask, unless ``--yes`` or ``--json`` (scripts)."""
        if yes or self.as_json:
            return
        if self.stdin is None:
            click.confirm(question, abort=True)
            return
        # Someone else's streams (the agent): ask there; no answer (end of input) is a no.
        self.echo(f"{question} [y/N]: ", nl=False)
        if self.inp.readline().strip().lower() not in ("y", "yes"):
            raise click.Abort()

    def use_session(self, session: Any) -> None:
        """Adopt a session a command opened itself (with options ``session()`` does not take)."""
        self._session = session

    def close(self) -> None:
        if self._session is not None and not self.borrowed:
            self._session.close()
        self._session = None

    def emit(self, data: Any, text: Callable[[Any], str | None] | None = None) -> None:
        """Print ``data`` as JSON with ``--json``, else ``text(data)`` (or nothing if it is None).

        Text goes through :func:`~offline.textsafe.terminal_safe`: names, headings and passages
        come from documents and users and may hold escape sequences. JSON needs nothing more:
        ``json.dumps`` writes every control character as a ``\\u`` escape.
        """
        if self.as_json:
            self.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
        elif text is not None:
            out = text(data)
            if out:
                self.echo(terminal_safe(out))


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
