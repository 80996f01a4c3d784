"""A console entry point that forwards to a running agent before importing click or any command.

``offline = "offline.agent.fast:main"`` makes a forwarded command cost only the interpreter start
plus this module's standard-library imports. Whenever anything is unusual (an option it does not
know, ``--help``, a command that runs locally, no agent) it hands over to the normal CLI,
``offline.cli:main``, which makes the same decision again with click's full parser.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_VALUE_OPTS = {"--vault": "vault", "--user": "user", "--passphrase-file": "passphrase_file"}
_FLAG_OPTS = {"--json": "json", "--verbose": "verbose"}


def parse_globals(argv: list[str]) -> tuple[dict[str, object], list[str]] | None:
    """The root options and the command line after them, or None if click should parse this."""
    opts: dict[str, object] = {"json": False, "verbose": False}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-"):
            return opts, argv[i:]
        name, eq, value = arg.partition("=")
        if name in _VALUE_OPTS:
            if not eq:
                if i + 1 >= len(argv):
                    return None
                value = argv[i + 1]
                i += 1
            opts[_VALUE_OPTS[name]] = value
        elif arg in _FLAG_OPTS:
            opts[_FLAG_OPTS[arg]] = True
        else:
            return None  # --help, --version, -h, a typo: click answers those
        i += 1
    return None


def try_forward(argv: list[str]) -> int | None:
    """The agent's exit code if it ran ``argv``; None to run it in this process."""
    parsed = parse_globals(argv)
    if parsed is None:
        return None
    opts, rest = parsed
    from . import client

    if not client.should_forward(rest[0], rest[1:], is_group=None):
        return None
    from .. import config

    vault = Path(str(opts["vault"])) if opts.get("vault") else config.default_vault_path()
    user = str(opts["user"]) if opts.get("user") else config.default_user()
    sock = client.connect(vault, user)
    if sock is None:
        return None
    return client.forward(sock, rest, as_json=bool(opts["json"]), verbose=bool(opts["verbose"]))


# Commands whose whole job is to reach a package registry on a connected machine (their pip runs
# in a child process, which a private network namespace would cut off; the in-process guard stays).
# `serve` listens for the team's clients: in a namespace of its own nobody could reach it (the
# in-process guard still allows only its listening address and --generate-backend).
REGISTRY_COMMANDS = (("models", "fetch"), ("serve",))


def wants_namespace(argv: list[str]) -> bool:
    """Whether this command line runs in a private network namespace (all but registry downloads)."""
    parsed = parse_globals(argv)
    words = [a for a in (parsed[1] if parsed else argv) if not a.startswith("-")]
    return not any(tuple(words[: len(c)]) == c for c in REGISTRY_COMMANDS)


def main() -> None:
    """Console entry point: forward if an agent is up, else the full CLI."""
    # Second network layer first, while this process has one thread (see offline.netguard).
    from .. import netguard

    if wants_namespace(sys.argv[1:]):
        netguard.enter_network_namespace()
    try:
        code = try_forward(sys.argv[1:])
    except KeyboardInterrupt:
        sys.stderr.write("Error: interrupted\n")
        sys.exit(130)
    except Exception as exc:  # an OfflineError from forward(): the agent died mid-command
        from ..textsafe import one_line

        sys.stderr.write(f"Error: {one_line(exc)}\n")
        sys.exit(getattr(exc, "exit_code", 1))
    if code is not None:
        sys.stdout.flush()
        sys.exit(code)
    from ..cli import main as cli_main

    cli_main(prog_name=os.path.basename(sys.argv[0]) or "offline")
