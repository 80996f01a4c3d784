"""The agent process: ``python -m offline.agent.server --vault V --user U [--idle S]``.

Started by ``offline unlock`` in its own session with the passphrase on stdin. It unlocks, warms
the models, listens on a 0600 socket in a 0700 folder, runs forwarded commands one at a time with
its session lent to them, and locks itself (audit ``agent.lock``, keys zeroed, process gone) on
``offline lock``, after the idle time, or when the user's keyslot is removed or changed.

Handshake on stdout (one JSON line each): ``{"event": "error", "message", "exit_code"}`` or
``{"event": "ready", ...}``; after that fds 0-2 point at /dev/null.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as _dt
import fcntl
import io
import json
import os
import resource
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .. import netguard
from ..errors import OfflineError
from . import paths, protocol

_PR_SET_DUMPABLE = 4


def harden_process() -> None:
    """No core dumps, not ptrace-able by other processes of this user, private files only."""
    with contextlib.suppress(Exception):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    os.umask(0o077)


def preload() -> dict[str, Any]:
    """Load what makes later commands fast; anything missing is skipped, never fatal."""
    done: dict[str, Any] = {}
    import importlib
    import pkgutil

    # Command modules import their libraries lazily; import them now so a command pays nothing.
    for pkg_name in ("offline.retrieval", "offline.rag", "offline.llm", "offline.ingest"):
        try:
            pkg = importlib.import_module(pkg_name)
        except Exception:
            continue
        for mod in pkgutil.iter_modules(getattr(pkg, "__path__", [])):
            with contextlib.suppress(Exception):
                importlib.import_module(f"{pkg_name}.{mod.name}")
    t0 = time.perf_counter()
    try:
        from ..retrieval.embed import get_embedder

        emb = get_embedder()
        emb.encode_query("warm up")  # first encode allocates; pay it now
        done["embed"] = {"model": emb.name, "load_s": round(time.perf_counter() - t0, 3)}
    except Exception as exc:  # a missing module or model only makes commands slower
        done["embed"] = {"skipped": f"{exc.__class__.__name__}: {exc}"[:200]}
    t0 = time.perf_counter()
    try:
        from ..llm import prompts
        from ..llm.engine import load
        from ..llm.reader import reader_for
        from ..llm.resolve import resolve_generate_model

        # What `ask` serves by default: the default model's reader (merged, or applied at load).
        gm = resolve_generate_model(None)
        rd = reader_for(gm)
        if rd is None:
            engine, name = load(gm.path), gm.name
        elif rd.lora_path is None:
            engine, name = load(rd.model.path), rd.model.name
        else:
            engine = load(gm.path, lora_path=str(rd.lora_path), adapter_sha256=rd.spec.adapter_sha256)
            name = rd.spec.name
        # Evaluate the fixed opening of every rag prompt (system turn, "Sources:") once, so the
        # first question pays only for its own sources and words (llama.cpp reuses the prefix).
        engine.stream_chat(prompts.rag_messages("warm up", []), max_tokens=1)
        done["generate"] = {"model": name, "load_s": round(time.perf_counter() - t0, 3)}
    except Exception as exc:
        done["generate"] = {"skipped": f"{exc.__class__.__name__}: {exc}"[:200]}
    return done


class _SocketWriter(io.RawIOBase):
    """A binary stream that sends each write as one frame (so ``ask`` streams token by token)."""

    def __init__(self, sock: socket.socket, kind: bytes, tty: bool):
        super().__init__()
        self._sock, self._kind, self._tty = sock, kind, tty
        self.broken = False

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self._tty

    def write(self, data: Any) -> int:
        n = len(data)
        if n and not self.broken:
            try:
                protocol.send(self._sock, self._kind, bytes(data))
            except OSError:
                self.broken = True  # the client went away; let the command finish quietly
        return n


def _text_stream(sock: socket.socket, kind: bytes, tty: bool) -> io.TextIOWrapper:
    return io.TextIOWrapper(
        _SocketWriter(sock, kind, tty), encoding="utf-8", errors="replace", write_through=True
    )


class Agent:
    """One unlocked session served over a Unix socket."""

    def __init__(self, session: Any, vault: Path, user: str, idle_s: float, folder: Path):
        self.session = session
        self.vault = vault
        self.user = user
        self.idle_s = float(idle_s)
        self.folder = folder
        self.sock_path = paths.socket_path(folder)
        self.since = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        self.started = time.monotonic()
        self.last_use = time.monotonic()
        self.requests = 0
        self.preloaded: dict[str, Any] = {}
        self.busy = False
        self._req = threading.Lock()  # one command at a time; the lock waits for it too
        self._listener: socket.socket | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def listen(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.sock_path.unlink()  # stale: we hold the folder's flock, so no live agent owns it
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            with paths.sun_path(self.sock_path) as addr:
                s.bind(addr)
        finally:
            os.umask(old)
        os.chmod(self.sock_path, 0o600)
        s.listen(16)
        self._listener = s

    def status(self) -> dict[str, Any]:
        idle_for = time.monotonic() - self.last_use
        return {
            "unlocked": self.session is not None,
            "pid": os.getpid(),
            "since": self.since,
            "idle_timeout_s": self.idle_s,
            "idle_for_s": round(idle_for, 1),
            "time_left_s": round(max(0.0, self.idle_s - idle_for), 1),
            "busy": self.busy,
            "requests": self.requests,
            "socket": str(self.sock_path),
            "preloaded": self.preloaded,
        }

    def lock(self, reason: str) -> None:
        """Audit, close the session (zeroes the vault key), drop key references, remove the socket."""
        session, self.session = self.session, None
        if session is not None:
            with contextlib.suppress(Exception):
                session.audit(
                    "agent.lock",
                    reason=reason,
                    pid=os.getpid(),
                    unlocked_s=round(time.monotonic() - self.started, 1),
                    requests=self.requests,
                )
            with contextlib.suppress(Exception):
                session.close()
            session.keys = None  # the private keys: no reference left once the session goes
            del session
        with contextlib.suppress(OSError):
            self.sock_path.unlink()

    def _exit(self) -> None:
        # No interpreter teardown: torch/llama threads can hang it, and there is nothing to flush.
        os._exit(0)

    # -- idle ---------------------------------------------------------------------------------
    def watch_idle(self) -> None:
        tick = max(0.05, min(1.0, self.idle_s / 4))
        while True:
            time.sleep(tick)
            if time.monotonic() - self.last_use < self.idle_s:
                continue
            if not self._req.acquire(blocking=False):
                continue  # a command is running: it is not idle
            try:
                if self.session is None or time.monotonic() - self.last_use < self.idle_s:
                    continue
                self.lock("idle")
            finally:
                self._req.release()
            self._exit()

    # -- serving ------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        assert self._listener is not None
        threading.Thread(target=self.watch_idle, name="idle", daemon=True).start()
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                continue
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                creds = protocol.peer_credentials(conn)
            except OSError:
                return
            if not protocol.peer_allowed(creds[1]):
                self._denied(conn, creds)
                return
            try:
                request = protocol.recv_json(conn)
            except (OSError, protocol.ProtocolError):
                return
            if request is None:
                return
            op = request.get("op")
            try:
                if op == "status":
                    protocol.send_json(conn, self.status())
                elif op == "lock":
                    with self._req:
                        was = self.session is not None
                        self.lock("command")
                    with contextlib.suppress(OSError):
                        protocol.send_json(conn, {"locked": True, "was_unlocked": was, "pid": os.getpid()})
                    self._exit()
                elif op == "run":
                    self.run(conn, request)
                else:
                    protocol.send_json(conn, {"error": "unknown op"})
            except OSError:
                return

    def _denied(self, conn: socket.socket, creds: tuple[int, int, int]) -> None:
        with contextlib.suppress(OSError):
            protocol.send_json(conn, {"error": "denied"})
        with self._req:
            if self.session is not None:
                with contextlib.suppress(Exception):
                    self.session.audit(
                        "agent.denied", severity="warning", peer_uid=creds[1], peer_pid=creds[0]
                    )

    def refresh(self) -> None:
        """Before each command: the vault as it is now (removed user, re-key, tampering; see
        Session.refresh)."""
        self.session.refresh()

    def _forget_collections(self) -> None:
        # Grants are checked when a collection is opened: never carry an open handle (or a
        # break-glass key) from one command to the next.
        if self.session is not None:
            self.session.forget_handles()

    def run(self, conn: socket.socket, request: dict[str, Any]) -> None:
        with self._req:
            if self.session is None:
                protocol.send_json(conn, {"refused": "locked"})
                return
            self.busy = True
            self.last_use = time.monotonic()
            try:
                try:
                    self.refresh()
                except (OfflineError, OSError) as exc:
                    self.lock(f"stale: {exc}")
                    protocol.send_json(conn, {"refused": "locked"})
                    threading.Thread(target=self._exit_soon, daemon=True).start()
                    return
                code = self._run_command(conn, request)
            finally:
                self._forget_collections()
                self.requests += 1
                self.busy = False
                self.last_use = time.monotonic()
        protocol.send_json(conn, {"exit": code})

    def _exit_soon(self) -> None:
        time.sleep(0.2)
        self._exit()

    def _run_command(self, conn: socket.socket, request: dict[str, Any]) -> int:
        """Run the forwarded command through the CLI's one in-process entry point.

        The client's streams (socket frames), its non-secret OFFLINE_* and terminal settings and its
        working folder are handed to the command; this process's own stay untouched.
        """
        from ..cli import Streams, run_in_process

        args = [str(a) for a in request.get("args") or []]
        argv = ["--vault", str(self.vault), "--user", self.user]
        if request.get("json"):
            argv.append("--json")
        if request.get("verbose"):
            argv.append("--verbose")
        argv += args
        tty = bool(request.get("tty"))
        env = {
            str(k): str(v)
            for k, v in (request.get("env") or {}).items()
            if str(k).startswith("OFFLINE_") or k in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TERM")
        }
        for secret in (
            "OFFLINE_PASSPHRASE",
            "OFFLINE_NEW_PASSPHRASE",
            "OFFLINE_PASSPHRASE_FILE",
            "OFFLINE_NEW_PASSPHRASE_FILE",
        ):
            env.pop(secret, None)
        out = _text_stream(conn, protocol.STDOUT, tty)
        err = _text_stream(conn, protocol.STDERR, tty)
        cwd = str(request.get("cwd") or "/")
        try:
            if not os.path.isabs(cwd) or not os.path.isdir(cwd):
                err.write("Error: cannot use the current working directory\n")
                return 1
            try:
                return run_in_process(
                    argv, self.session, Streams(io.StringIO(""), out, err), env=env, cwd=cwd
                )
            except BaseException as exc:  # never let a command take the agent down
                err.write(f"Error: internal error: {exc.__class__.__name__}: {exc}\n")
                return 1
        finally:
            with contextlib.suppress(Exception):
                out.flush()
                err.flush()


def _hold_flock(folder: Path) -> int | None:
    fd = os.open(folder / paths.LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd  # held (never closed) for the agent's lifetime


def _detach_stdio() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the agent process (see the module docstring for the handshake)."""
    parser = argparse.ArgumentParser(prog="offline-agent")
    parser.add_argument("--vault", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--idle", type=float, default=None)
    parser.add_argument("--no-preload", action="store_true")
    opts = parser.parse_args(argv)
    # Before hardening (a non-dumpable process cannot write its own uid_map) and before the
    # serving threads start (a threaded one cannot enter a user namespace): see offline.netguard.
    netguard.enter_network_namespace()
    harden_process()
    netguard.install()
    handshake = os.fdopen(os.dup(1), "w", buffering=1)

    def say(obj: dict[str, Any]) -> None:
        handshake.write(json.dumps(obj) + "\n")
        handshake.flush()

    raw = sys.stdin.buffer.readline()
    _detach_stdio()
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (for the process lifetime)
    vault, user = Path(opts.vault), opts.user
    try:
        folder = paths.make_private_dir(paths.agent_dir(vault, user))
        lock_fd = _hold_flock(folder)
        if lock_fd is None:
            raise OfflineError("an agent is already running for this vault and user")
        from ..vault import open_session

        secret = raw.decode("utf-8").rstrip("\n")
        del raw
        session = open_session(vault, user, secret)
        del secret
        idle_s = opts.idle if opts.idle is not None else float(session.setting("idle_timeout_s"))
        if idle_s <= 0:
            raise OfflineError("the idle time must be greater than zero")
        agent = Agent(session, vault, user, idle_s, folder)
        if not opts.no_preload:
            agent.preloaded = preload()
        agent.listen()
        session.audit("agent.unlock", pid=os.getpid(), idle_timeout_s=idle_s)
        agent.last_use = time.monotonic()
    except OfflineError as exc:
        say({"event": "error", "message": str(exc), "exit_code": exc.exit_code})
        return exc.exit_code
    except Exception as exc:
        say({"event": "error", "message": f"agent failed: {exc.__class__.__name__}: {exc}", "exit_code": 1})
        return 1
    say({"event": "ready", **agent.status()})
    handshake.close()
    agent.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
