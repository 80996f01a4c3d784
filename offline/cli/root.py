"""The root of the ``offline`` command line: global options, error mapping, the agent hook.

Library errors (:class:`offline.errors.OfflineError`) become one ``Error: ...`` line on stderr and
the exit code of the README's command reference; ``--verbose`` adds the traceback.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import click

from .. import __version__, netguard
from ..errors import OfflineError, UsageError
from ..textsafe import one_line
from .app import App
from .params import FsPath

# The guard goes on before any command module can import something that phones home.
netguard.install()


class _Failure(click.ClickException):
    def __init__(self, message: str, exit_code: int):
        # Messages quote names and values users typed or documents carried: one clean line.
        super().__init__(one_line(message))
        self.exit_code = exit_code


# ``offline`` alone prints the help (click signals that with this UsageError subclass).
_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _clean(exc: click.ClickException) -> click.ClickException:
    """Click's own errors as the contract's one ``Error: ...`` line (no usage banner), cleaned:
    they quote what was typed (an unknown option, a bad value), which may hold escapes."""
    if isinstance(exc, _HELP):
        return exc
    return _Failure(exc.format_message(), exc.exit_code)


GLOBAL_FLAGS = ("--json", "--verbose")


def _global_flags_first(args: list[str]) -> list[str]:
    """``offline search Q --json`` means ``offline --json search Q``: people type flags after the command.

    Only the flags that take no value move, and nothing after a ``--`` (a query may be "--json").
    """
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
    return [*dict.fromkeys(flags), *(a for a in args[:end] if a not in GLOBAL_FLAGS), *args[end:]]


def _leaf_command(ctx: click.Context) -> click.Command:
    """The command the raw arguments name (``finetune create`` -> create), walking the groups."""
    cmd: click.Command = ctx.command
    for arg in ctx.meta.get("offline.agent.args") or []:
        if not isinstance(cmd, click.Group):
            break
        if arg.startswith("-"):
            continue
        sub = cmd.get_command(ctx, arg)
        if sub is None:
            break
        cmd = sub
    return cmd


def _flag(param: click.Parameter) -> str:
    """How a parameter is typed: its long option (``--max-tokens``), ``-k``, or an argument's name."""
    if isinstance(param, click.Option) and param.opts:
        return max(param.opts, key=len)
    return param.human_readable_name


def cli_message(ctx: click.Context, exc: OfflineError) -> str:
    """The error line for ``exc``; one that names parameters names the flags of the command that ran.

    The library words such errors with its parameter names (``rank must be ...``); here each one
    becomes the option that sets it (``--rank must be ...``). A name the command has no option
    for is shown as the library wrote it.
    """
    if exc.template is None:
        return str(exc)
    flags = {p.name: _flag(p) for p in _leaf_command(ctx).params if p.name}
    return exc.render(lambda name: flags.get(name, name))


@dataclass(frozen=True)
class Streams:
    """The three streams a command uses when it runs for someone else (see ``run_in_process``)."""

    stdin: TextIO
    stdout: TextIO
    stderr: TextIO


@dataclass(frozen=True)
class Hosted:
    """What the agent hands the root command: the session it lends and the client's surroundings."""

    session: Any
    streams: Streams
    env: Mapping[str, str]
    cwd: Path

    def lend(self, app: App) -> None:
        """Give ``app`` the session, if it is for the vault and user this command names."""
        if (
            str(app.vault_path.expanduser().resolve())
            != str(Path(self.session.vault_dir).expanduser().resolve())
            or app.user_name != self.session.user
        ):
            raise UsageError("this agent serves another vault or user")
        app.use_session(self.session)
        app.borrowed = True


class OfflineGroup(click.Group):
    """Turns library errors into one-line CLI errors with the contract's exit codes."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if ctx.parent is None:
            args = _global_flags_first(args)
        try:
            return super().parse_args(ctx, args)
        except click.ClickException as exc:
            raise _clean(exc) from None

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        # The raw command and its arguments, for forwarding to an unlocked agent (offline.agent).
        ctx.meta["offline.agent.args"] = [*getattr(ctx, "_protected_args", ()), *ctx.args]
        try:
            return super().invoke(ctx)
        except OfflineError as exc:
            self._trace(ctx)
            raise _Failure(cli_message(ctx, exc), exc.exit_code) from None
        except click.ClickException as exc:
            raise _clean(exc) from None
        except (click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            raise _Failure("interrupted", 130) from None
        except Exception as exc:  # an internal bug: still one line unless --verbose
            self._trace(ctx)
            raise _Failure(f"internal error: {exc.__class__.__name__}: {exc}", 1) from None

    @staticmethod
    def _trace(ctx: click.Context) -> None:
        app = ctx.find_object(App)
        if app is not None and app.verbose:
            app.echo(traceback.format_exc(), err=True)


@click.group(cls=OfflineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--vault",
    type=FsPath(path_type=Path),
    envvar="OFFLINE_VAULT",
    help="Vault folder. [env: OFFLINE_VAULT; default: OFFLINE_HOME/vault]",
)
@click.option("--user", envvar="OFFLINE_USER", help="Acting user. [env: OFFLINE_USER; default: login name]")
@click.option(
    "--passphrase-file",
    type=FsPath(dir_okay=False),
    envvar="OFFLINE_PASSPHRASE_FILE",
    help="File holding the passphrase. [env: OFFLINE_PASSPHRASE_FILE]",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--verbose", is_flag=True, help="Show tracebacks on errors.")
@click.version_option(__version__, prog_name="offline")
@click.pass_context
def main(
    ctx: click.Context,
    vault: Path | None,
    user: str | None,
    passphrase_file: str | None,
    as_json: bool,
    verbose: bool,
) -> None:
    """Private, air-gapped question answering over your own documents.

    Documents live in an encrypted vault; answers come from a local model with citations;
    every access is written to a tamper-evident audit log.
    """
    hosted = ctx.obj if isinstance(ctx.obj, Hosted) else None
    if hosted is None:
        app = App(vault=vault, user=user, passphrase_file=passphrase_file, as_json=as_json, verbose=verbose)
    else:  # run by the agent for a client (run_in_process): the client's streams, env and folder
        app = App(
            vault=vault,
            user=user,
            passphrase_file=passphrase_file,
            as_json=as_json,
            verbose=verbose,
            stdin=hosted.streams.stdin,
            stdout=hosted.streams.stdout,
            stderr=hosted.streams.stderr,
            env=hosted.env,
            cwd=hosted.cwd,
        )
    ctx.obj = app
    ctx.call_on_close(app.close)
    if hosted is not None:
        hosted.lend(app)
        return
    from ..agent.client import route  # stdlib only: runs the command in an unlocked agent if one is up

    route(ctx, app)
    _announce_loading(ctx, app)  # only here: inside the agent (hosted, above) the models are warm


def _announce_loading(ctx: click.Context, app: App) -> None:
    """Status notes ("loading embedding model...") on stderr when it is a terminal, so a cold
    command is not silent there. Never on stdout (``--json`` stays clean), and never into a
    captured stderr: scripts rely on it holding just the one ``Error: ...`` line.
    """
    from .. import status

    try:
        if not app.err.isatty():
            return
    except (AttributeError, ValueError):  # a closed or unusual stream: no terminal
        return
    status.set_listener(lambda note: app.echo(note, err=True))
    ctx.call_on_close(lambda: status.set_listener(None))  # the library stays silent once we are done
