"""Running one command line inside a long-lived process that lends its session (the agent).

:func:`run_in_process` is the agent's one way into the CLI. Nothing global changes: the command
gets the client's streams, environment values and working folder through its
:class:`~offline.cli.app.App` (click runs with ``standalone_mode=False`` and an explicit context
object), so the agent's own ``sys.stdout``, ``os.environ`` and working folder stay as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from .root import Hosted, Streams, main

__all__ = ["Streams", "run_in_process"]


def run_in_process(
    argv: list[str],
    session: Any,
    streams: Streams,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | str = "/",
) -> int:
    """Run ``offline ARGV...`` with ``session`` lent to it; return its exit code.

    Output and errors go to ``streams`` exactly as the console script would print them (one
    ``Error: ...`` line, the contract's exit codes); ``env`` holds the environment values the
    command may read (never a passphrase: the session is already open) and ``cwd`` the folder
    relative paths are read from. The session is not closed: it stays the caller's.
    """
    hosted = Hosted(session=session, streams=streams, env=dict(env or {}), cwd=Path(cwd))
    try:
        result = main.main(args=list(argv), prog_name="offline", standalone_mode=False, obj=hosted)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        streams.stderr.write("Aborted!\n")
        return 1
    except click.ClickException as exc:
        exc.show(file=streams.stderr)
        return exc.exit_code
    # Without standalone mode click returns a command's value, or the code it exited with.
    return result if isinstance(result, int) and not isinstance(result, bool) else 0
