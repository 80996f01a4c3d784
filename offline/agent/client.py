"""The CLI side of the agent: find it, forward a command to it, ask its status, lock it, start it.

Imported by the CLI root on every run, so standard library only: the decision to forward is made
before any command module imports anything heavy.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import OfflineError, UsageError
from . import paths, protocol

ARGS_KEY = "offline.agent.args"  # ctx.meta key: the root's raw arguments (set by OfflineGroup.invoke)
SECRET_ENV = frozenset(
    {"OFFLINE_PASSPHRASE", "OFFLINE_NEW_PASSPHRASE", "OFFLINE_PASSPHRASE_FILE", "OFFLINE_NEW_PASSPHRASE_FILE"}
)
EXTRA_ENV = ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TERM")
# Never forwarded: commands about the agent itself, commands that do not open the vault, and
# commands that need a new passphrase or a confirmation typed on this terminal.
LOCAL_COMMANDS = frozenset({"init", "unlock", "lock", "status", "models", "doctor"})
LOCAL_SUBCOMMANDS = frozenset({("users", "add"), ("users", "passwd")})
START_TIMEOUT_S = 300.0
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_IDLE_S = 7 * 24 * 3600.0  # automatic logoff exists to happen: a week at most


class AgentError(OfflineError):
    """An error reported by the agent, with the exit code it carries."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def parse_duration(text: str) -> float:
    """``15m``, ``90s``, ``1h``, ``500ms`` or plain seconds -> seconds (> 0)."""
    m = _DURATION.match(str(text))
    if not m:
        raise UsageError(f"invalid duration {text!r}: use e.g. 90s, 15m, 1h")
    value = float(m.group(1)) * _UNITS[(m.group(2) or "s").lower()]
    if value <= 0:
        raise UsageError("the idle time must be greater than zero")
    if value > MAX_IDLE_S:  # also catches a 400-digit number, which float() makes infinite
        raise UsageError(f"the idle time must be at most {MAX_IDLE_S // 3600:.0f}h")
    return value


# -- connecting ---------------------------------------------------------------------------------


def connect(vault: Path, user: str, timeout: float = 5.0) -> socket.socket | None:
    """A connection to the live agent for (vault, user), or None. A stale socket is removed."""
    folder = paths.agent_dir(vault, user)
    if not paths.is_private_dir(folder):
        return None
    path = paths.socket_path(folder)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with paths.sun_path(path) as addr:
            sock.connect(addr)
    except ConnectionRefusedError:
        # Nobody listens: the agent died without cleaning up (SIGKILL, power loss).
        sock.close()
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    except OSError:
        sock.close()
        return None
    # Mutual check: talk only to an agent running as ourselves.
    try:
        ok = protocol.check_peer(sock) is not None
    except OSError:
        ok = False
    if not ok:
        sock.close()
        return None
    sock.settimeout(None)
    return sock


def _call(vault: Path, user: str, request: dict[str, Any]) -> dict[str, Any] | None:
    sock = connect(vault, user)
    if sock is None:
        return None
    with sock:
        try:
            protocol.send_json(sock, request)
            return protocol.recv_json(sock)
        except (OSError, protocol.ProtocolError):
            return None


def status(vault: Path, user: str) -> dict[str, Any]:
    """What the agent for (vault, user) reports, or ``{"unlocked": False}``."""
    base = {"vault": str(Path(vault).expanduser().resolve()), "user": user}
    reply = _call(vault, user, {"op": "status"})
    if not reply or not reply.get("unlocked"):
        return {**base, "unlocked": False}
    return {**base, **reply}


def lock(vault: Path, user: str) -> dict[str, Any]:
    """Ask the agent to lock now; waits until it has closed the session and exited."""
    base = {"vault": str(Path(vault).expanduser().resolve()), "user": user}
    reply = _call(vault, user, {"op": "lock"})
    if not reply:
        return {**base, "locked": True, "was_unlocked": False}
    return {**base, "locked": bool(reply.get("locked")), "was_unlocked": True, "pid": reply.get("pid")}


# -- forwarding ---------------------------------------------------------------------------------


def forward_env() -> dict[str, str]:
    """Settings the command needs in the agent: OFFLINE_* (never a passphrase) and terminal hints."""
    return {
        k: v
        for k, v in os.environ.items()
        if (k.startswith("OFFLINE_") and k not in SECRET_ENV) or k in EXTRA_ENV
    }


def should_forward(command: str, rest: list[str], is_group: bool | None) -> bool:
    """Whether ``offline COMMAND REST...`` runs in the agent (it must need the unlocked vault).

    ``is_group`` None means unknown (the fast path decides before click is imported).
    """
    if command in LOCAL_COMMANDS or "--help" in rest or "-h" in rest:
        return False
    if not rest:
        return not is_group  # a bare group only prints its usage
    if (command, rest[0]) in LOCAL_SUBCOMMANDS:
        return False
    if (command, rest[0]) == ("collections", "drop") and "--yes" not in rest:
        return False  # the confirmation is typed here, not in the agent
    return True


def _stream(name: str) -> Any:
    s = getattr(sys, name)
    return getattr(s, "buffer", None), s


def forward(sock: socket.socket, args: list[str], *, as_json: bool, verbose: bool) -> int | None:
    """Run ``args`` in the agent, copying its output here as it comes. None: refused, run locally."""
    try:
        tty = sys.stdout.isatty()
    except (AttributeError, ValueError):
        tty = False
    request = {
        "op": "run",
        "args": list(args),
        "json": as_json,
        "verbose": verbose,
        "cwd": os.getcwd(),
        "env": forward_env(),
        "tty": tty,
    }
    written = False
    try:
        protocol.send_json(sock, request)
        while True:
            frame = protocol.recv(sock)
            if frame is None:
                break
            kind, payload = frame
            if kind == protocol.JSON:
                msg = json.loads(payload)
                if "exit" in msg:
                    return int(msg["exit"])
                if msg.get("refused"):
                    return None
                continue
            written = True
            buf, text = _stream("stdout" if kind == protocol.STDOUT else "stderr")
            if buf is not None:
                text.flush()
                buf.write(payload)
                buf.flush()
            else:
                text.write(payload.decode("utf-8", "replace"))
                text.flush()
    except (OSError, protocol.ProtocolError, ValueError):
        pass
    finally:
        sock.close()
    if not written:
        return None  # the agent went away before doing anything visible: run it here instead
    raise OfflineError("the agent stopped during the command; run it again")


def route(ctx: Any, app: Any) -> None:
    """CLI root hook: forward the command to the agent for this vault and user, if one is up.

    Returns normally when the command should run in this process; exits the context with the
    agent's exit code when the agent ran it. (Inside the agent, commands run through
    :func:`offline.cli.inprocess.run_in_process`, which never comes here.)
    """
    args = ctx.meta.get(ARGS_KEY)
    command = ctx.invoked_subcommand
    if not args or command is None:
        return
    cmd = ctx.command.get_command(ctx, command)
    import click  # already loaded by the CLI

    rest = list(args[1:])
    if not should_forward(command, rest, isinstance(cmd, click.Group)):
        return
    sock = connect(app.vault_path, app.user_name)
    if sock is None:
        return
    code = forward(sock, [command, *rest], as_json=app.as_json, verbose=app.verbose)
    if code is not None:
        ctx.exit(code)


# -- starting -----------------------------------------------------------------------------------


def _lines_until(stream: Any, deadline: float) -> Iterator[bytes]:
    """Lines of the agent's handshake, giving up at ``deadline``: a hung start never hangs the client."""
    import selectors

    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(timeout=left):
                return
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                yield line


def unlock(
    vault: Path, user: str, passphrase: Callable[[], str], idle_s: float | None = None, preload: bool = True
) -> dict[str, Any]:
    """Start the agent for (vault, user) unless one runs; return its status.

    The passphrase goes to the agent over a pipe on stdin (never argv or the environment). The
    agent unlocks before anything else, so a wrong passphrase fails here at once (exit 3); this
    returns when the agent listens and its models are warm.
    """
    import subprocess

    current = status(vault, user)
    if current.get("unlocked"):
        return {**current, "already": True}
    secret = passphrase()
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    cmd = [
        sys.executable,
        "-m",
        "offline.agent.server",
        "--vault",
        str(Path(vault).expanduser().resolve()),
        "--user",
        user,
    ]
    if idle_s is not None:
        cmd += ["--idle", repr(float(idle_s))]
    if not preload:
        cmd.append("--no-preload")
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd="/",
        start_new_session=True,
        close_fds=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(secret.encode("utf-8") + b"\n")
        proc.stdin.close()
    except BrokenPipeError:
        pass
    del secret
    result: dict[str, Any] | None = None
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        for line in _lines_until(proc.stdout, deadline):
            msg = json.loads(line)
            if msg.get("event") == "error":
                proc.wait(timeout=30)
                raise AgentError(str(msg.get("message", "agent failed")), int(msg.get("exit_code", 1)))
            if msg.get("event") == "ready":
                result = msg
                break
    except ValueError:
        result = None
    finally:
        proc.stdout.close()
    if result is None:
        with contextlib.suppress(OSError):
            proc.kill()
        late = time.monotonic() >= deadline
        raise OfflineError(
            f"the agent did not start within {START_TIMEOUT_S:.0f} s" if late else "the agent failed to start"
        )
    return {**status(vault, user), "already": False}
