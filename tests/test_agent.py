"""The unlocked agent (issue 10): peer-credential check, idle lock, SIGKILL safety, forwarding."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import PASSPHRASES

from offline.agent import client, paths, protocol
from offline.vault import set_setting


@pytest.fixture
def agents(vault_dir: Path, admin_session):
    """start(user, idle_s=60) -> the agent's status; every agent started is locked at teardown."""
    started: list[tuple[str, int]] = []

    def start(user: str = "alice", idle_s: float | None = 60.0) -> dict:
        info = client.unlock(vault_dir, user, lambda: PASSPHRASES[user], idle_s, preload=False)
        started.append((user, info["pid"]))
        return info

    yield start
    for user, pid in started:
        client.lock(vault_dir, user)
        _reap(pid)


def _reap(pid: int, timeout: float = 10.0) -> bool:
    """Wait for our child ``pid`` to end (it was spawned by this process); True if it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return True
        if done:
            return True
        time.sleep(0.05)
    return False


def _actions(vault_dir: Path) -> list[tuple[str, dict]]:
    from offline.audit import chain
    from offline.vault import open_session

    with open_session(vault_dir, "alice", PASSPHRASES["alice"]) as s:
        return [(e.action, e.payload) for e in chain.iter_entries(s.db)]


# -- peer credentials ---------------------------------------------------------------------------


def test_peer_check_rejects_other_uid():
    assert protocol.peer_allowed(os.getuid())
    assert not protocol.peer_allowed(os.getuid() + 1)
    assert not protocol.peer_allowed(65534, own_uid=1000)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        pid, uid, _ = protocol.peer_credentials(a)
        assert (pid, uid) == (os.getpid(), os.getuid())
        assert protocol.check_peer(a) is not None
        assert protocol.check_peer(a, own_uid=os.getuid() + 12345) is None  # a stranger's socket


def _connect_as_nobody(sock_path: Path) -> str:
    """Fork; the child setuid()s to nobody, connects and asks the agent to run a command."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery from here on, always _exit
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            try:
                s.connect(str(sock_path))
            except PermissionError:
                out = "EACCES"
            else:
                data = b""
                with contextlib.suppress(OSError):  # the agent may hang up before we finish sending
                    protocol.send_json(s, {"op": "run", "args": ["users", "list"], "cwd": "/", "env": {}})
                with contextlib.suppress(OSError):
                    while chunk := s.recv(65536):
                        data += chunk
                out = data.decode("latin-1")
            os.write(w, out.encode("latin-1"))
        except BaseException as exc:
            os.write(w, f"child failed: {exc!r}".encode())
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode("latin-1")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another OS user")
def test_other_os_user_cannot_use_socket(vault_dir: Path, monkeypatch, agents):
    # A home that "nobody" may traverse, so the second half reaches the socket itself.
    home = Path(tempfile.mkdtemp(prefix="offline-agent-test-"))
    os.chmod(home, 0o711)
    monkeypatch.setenv("OFFLINE_HOME", str(home))
    try:
        info = agents("alice")
        sock_path = Path(info["socket"])
        assert sock_path.stat().st_mode & 0o777 == 0o600
        assert sock_path.parent.stat().st_mode & 0o777 == 0o700

        def as_nobody() -> str:
            return _connect_as_nobody(sock_path)

        # As shipped: the 0700 folder stops another user before the socket.
        assert as_nobody() == "EACCES"
        # Misconfigured permissions: the peer-credential check still refuses, and runs nothing.
        for p in (home / "run", sock_path.parent):
            os.chmod(p, 0o711)
        os.chmod(sock_path, 0o666)
        reply = as_nobody()
        assert "denied" in reply and "alice" not in reply and "NAME" not in reply
        # The client, too, refuses to talk through a folder others can enter.
        assert client.connect(vault_dir, "alice") is None
        os.chmod(sock_path.parent, 0o700)
        client.lock(vault_dir, "alice")
        assert _reap(info["pid"])
        denied = [p for a, p in _actions(vault_dir) if a == "agent.denied"]
        assert denied and denied[0]["peer_uid"] == 65534
    finally:
        import shutil

        shutil.rmtree(home, ignore_errors=True)


# -- lifecycle ----------------------------------------------------------------------------------


def test_unlock_status_lock_cli(cli, vault_dir: Path, agents):
    r = cli(["status"])
    assert r.exit_code == 0 and r.output.startswith("Locked: no agent for alice")
    r = cli(["unlock", "--idle", "15m", "--no-preload"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("Unlocked: agent pid") and "locks after 15m00s idle" in r.output
    st = json.loads(cli(["--json", "status"]).output)
    assert st["unlocked"] and st["idle_timeout_s"] == 900 and 0 < st["time_left_s"] <= 900
    r = cli(["unlock"], env={"OFFLINE_PASSPHRASE": "wrong"})  # already unlocked: no passphrase needed
    assert r.exit_code == 0 and r.output.startswith("Already unlocked.")
    r = cli(["lock"])
    assert r.exit_code == 0 and r.output == f"Locked alice on {vault_dir.resolve()}.\n"
    assert _reap(st["pid"])
    assert not json.loads(cli(["--json", "status"]).output)["unlocked"]
    assert cli(["lock"]).output.startswith("Nothing to lock")
    actions = [(a, p.get("reason")) for a, p in _actions(vault_dir) if a.startswith("agent.")]
    assert actions == [("agent.unlock", None), ("agent.lock", "command")]


def test_wrong_passphrase_fails_at_once(cli, vault_dir: Path, admin_session):
    r = cli(["unlock", "--no-preload"], env={"OFFLINE_PASSPHRASE": "wrong-passphrase"})
    assert r.exit_code == 3
    assert r.output == "Error: authentication failed for user 'alice': unknown user or wrong passphrase\n"
    assert not client.status(vault_dir, "alice")["unlocked"]
    assert cli(["unlock", "--idle", "soon"]).exit_code == 2


def test_default_idle_is_vault_setting(vault_dir: Path, admin_session, agents):
    set_setting(admin_session, "idle_timeout_s", "123")
    assert agents("alice", idle_s=None)["idle_timeout_s"] == 123


def test_parse_duration():
    assert client.parse_duration("15m") == 900
    assert client.parse_duration("90s") == 90
    assert client.parse_duration("1h") == 3600
    assert client.parse_duration("2") == 2
    assert client.parse_duration("500ms") == 0.5
    for bad in ("", "0", "-1m", "15 minutes", "1d"):
        with pytest.raises(Exception) as exc:
            client.parse_duration(bad)
        assert getattr(exc.value, "exit_code", None) == 2


def test_idle_lock(vault_dir: Path, agents):
    info = agents("alice", idle_s=2)
    assert info["unlocked"]
    deadline = time.monotonic() + 20
    while client.status(vault_dir, "alice")["unlocked"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not client.status(vault_dir, "alice")["unlocked"]
    assert _reap(info["pid"])
    assert not Path(info["socket"]).exists()
    locks = [p for a, p in _actions(vault_dir) if a == "agent.lock"]
    assert [p["reason"] for p in locks] == ["idle"]


def test_killed_agent_leaves_no_key_and_falls_back(cli, vault_dir: Path, admin_session, agents, offline_home):
    before = cli(["users", "list"])
    info = agents("alice")
    assert cli(["users", "list"], env={"OFFLINE_PASSPHRASE": "wrong"}).output == before.output  # served
    os.kill(info["pid"], signal.SIGKILL)
    assert _reap(info["pid"])
    sock = Path(info["socket"])
    assert sock.exists()  # a SIGKILLed agent cannot clean up: the next client must
    secrets = [
        admin_session.vault_key,
        admin_session.vault_key.hex().encode(),
        admin_session.vault_key.hex().upper().encode(),
    ]
    for root in (offline_home, vault_dir):
        for p in root.rglob("*"):
            if p.is_file() and not p.is_socket():
                data = p.read_bytes()
                assert not any(s in data for s in secrets), p
    # Falls back to in-process: with the right passphrase it works, with a wrong one it says so.
    r = cli(["users", "list"])
    assert (r.exit_code, r.output) == (0, before.output)
    assert not sock.exists()
    r = cli(["users", "list"], env={"OFFLINE_PASSPHRASE": "wrong"})
    assert r.exit_code == 3


# -- forwarding ---------------------------------------------------------------------------------

CASES = [
    ("alice", ["users", "list"]),
    ("alice", ["--json", "users", "list"]),
    ("alice", ["collections", "list"]),
    ("bob", ["users", "list"]),
    ("bob", ["collections", "list"]),
    ("bob", ["collections", "create", "secret"]),  # exit 4, one line
    ("bob", ["users", "remove", "carol", "--yes"]),  # exit 4, one line
    ("alice", ["collections", "grant", "nosuch", "bob"]),  # exit 1, one line (admins see everything)
    ("alice", ["users", "list", "--bogus"]),  # exit 2, click usage error
    ("alice", ["vault", "set", "nosuch", "1"]),  # exit 2, one line
]


def test_forwarding_matches_in_process(cli, vault_dir: Path, admin_session, agents):
    from offline.vault.collections import create_collection, grant

    create_collection(admin_session, "shared")
    grant(admin_session, "shared", "bob", "read")
    local = [cli(args, user=u) for u, args in CASES]
    for u in {u for u, _ in CASES}:
        agents(u)
    # A wrong passphrase in the environment proves the agent ran them (it never needs one).
    served = [cli(args, user=u, env={"OFFLINE_PASSPHRASE": "wrong"}) for u, args in CASES]
    for (u, args), a, b in zip(CASES, local, served):
        # CliRunner names the program "main"; the agent runs it as "offline", like the console script.
        assert (b.exit_code, b.output) == (a.exit_code, a.output.replace("main ", "offline ")), (u, args)
    codes = [r.exit_code for r in local]
    assert codes == [0, 0, 0, 0, 0, 4, 4, 1, 2, 2]
    assert local[5].output.count("\n") == 1 and local[5].output.startswith("Error: access denied")
    assert client.status(vault_dir, "bob")["requests"] == 4


def test_local_commands_not_forwarded(cli, vault_dir: Path, agents):
    agents("alice")
    r = cli(
        ["users", "add", "dave"],
        env={"OFFLINE_PASSPHRASE": "wrong", "OFFLINE_NEW_PASSPHRASE": "dave-pass-123"},
    )
    assert r.exit_code == 3  # ran here: needed the (wrong) passphrase, never sent a new one to the agent
    assert client.status(vault_dir, "alice")["requests"] == 0
    assert client.should_forward("search", ["q"], False)
    assert not client.should_forward("users", ["passwd"], True)
    assert not client.should_forward("collections", ["drop", "x"], True)
    assert client.should_forward("collections", ["drop", "x", "--yes"], True)
    assert not client.should_forward("users", ["list", "--help"], True)
    assert not client.should_forward("models", ["list"], True)


def test_removed_user_agent_locks_itself(cli, vault_dir: Path, admin_session, agents):
    info = agents("bob")
    from offline.vault import remove_user

    remove_user(admin_session, "bob")
    r = cli(["users", "list"], user="bob")  # agent refuses (keyslot gone) and locks; in-process fails
    assert r.exit_code == 3
    assert _reap(info["pid"])
    # A removed user writes nothing more to the chain (their vault key was rotated away, and the
    # kit refuses to sign for someone the policy no longer enrols): the removal entry is the record.
    acts = _actions(vault_dir)
    assert not [a for a, p in acts if a == "agent.lock"]
    assert ("user.remove", "bob") in [(a, p.get("name")) for a, p in acts]


def test_env_secrets_never_forwarded(monkeypatch):
    monkeypatch.setenv("OFFLINE_PASSPHRASE", "s3cret-pass")
    monkeypatch.setenv("OFFLINE_NEW_PASSPHRASE", "s3cret-new")
    monkeypatch.setenv("OFFLINE_MODELS_DIR", "/m")
    env = client.forward_env()
    assert "OFFLINE_PASSPHRASE" not in env and "OFFLINE_NEW_PASSPHRASE" not in env
    assert env["OFFLINE_MODELS_DIR"] == "/m"


_IMPORTS = r"""
import sys
from offline.cli import main
try:
    main(sys.argv[1:], prog_name="offline")
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in ("torch", "llama_cpp", "sentence_transformers", "transformers") if m in sys.modules)
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
"""


def _heavy_after(args: list[str], env: dict | None = None) -> str:
    r = subprocess.run(
        [sys.executable, "-c", _IMPORTS, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("HEAVY=")]
    assert line, r.stderr
    return line[-1][len("HEAVY=") :]


def test_help_and_client_path_import_nothing_heavy(vault_dir: Path, agents):
    assert _heavy_after(["--help"]) == ""
    agents("alice")
    env = {"OFFLINE_VAULT": str(vault_dir), "OFFLINE_USER": "alice"}
    assert _heavy_after(["users", "list"], env) == ""  # forwarded: the client stays light


def test_socket_path_is_private_and_short_enough(vault_dir: Path, offline_home: Path):
    d = paths.agent_dir(vault_dir, "alice")
    assert d.parent == offline_home / "run"
    assert paths.agent_dir(vault_dir, "bob") != d
    assert "alice" not in d.name and str(vault_dir) not in str(d)


# -- fast entry point (offline.agent.fast) -------------------------------------------------------


def test_fast_entry_parses_only_what_it_knows():
    from offline.agent.fast import parse_globals

    assert parse_globals(["--json", "--vault", "/v", "--user=bob", "search", "q", "--help"]) == (
        {"json": True, "verbose": False, "vault": "/v", "user": "bob"},
        ["search", "q", "--help"],
    )
    assert parse_globals(["--passphrase-file", "f", "users", "list"])[1] == ["users", "list"]
    for argv in ([], ["--help"], ["--version"], ["-h"], ["--vault"], ["--bogus", "users", "list"]):
        assert parse_globals(argv) is None, argv


_FAST = r"""
import sys
sys.argv[0] = "offline"
from offline.agent import fast
try:
    fast.main()
except SystemExit as e:
    code = e.code
print("CLICK=" + str("click" in sys.modules), file=sys.stderr)
sys.exit(code)
"""


def test_fast_entry_forwards_without_click(cli, vault_dir: Path, agents):
    env = {
        **os.environ,
        "OFFLINE_VAULT": str(vault_dir),
        "OFFLINE_USER": "bob",
        "OFFLINE_PASSPHRASE": "wrong",
    }

    def fast(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", _FAST, *args], capture_output=True, text=True, env=env, timeout=120
        )

    agents("bob")
    for args in (["users", "list"], ["collections", "create", "x"], ["users", "list", "--bogus"]):
        r = fast(*args)
        local = cli(args, user="bob")  # in-process, right passphrase
        assert r.returncode == local.exit_code, args
        assert r.stdout + r.stderr.replace("CLICK=False\n", "") == local.output.replace("main ", "offline ")
        assert "CLICK=False" in r.stderr
    r = fast("--help")  # not forwarded: the full CLI answers
    assert r.returncode == 0 and r.stdout.startswith("Usage: offline") and "CLICK=True" in r.stderr


def test_agent_follows_rekeys_and_passwd(cli, vault_dir: Path, admin_session, agents):
    agents("alice")
    wrong = {"OFFLINE_PASSPHRASE": "wrong"}
    before = cli(["users", "list"]).output
    assert cli(["vault", "rekey"], env=wrong).exit_code == 0  # served by the agent, which keeps up
    assert cli(["users", "list"], env=wrong).output == before
    from offline.vault import change_passphrase, open_session
    from offline.vault.maintenance import rekey_vault

    with open_session(vault_dir, "alice", PASSPHRASES["alice"]) as s:
        change_passphrase(s, PASSPHRASES["alice"])  # same vault key, new wrapping
        assert cli(["users", "list"], env=wrong).output == before
        rekey_vault(s)  # another process re-keys: the agent re-opens the new file with its own keys
    r = cli(["users", "list"], env=wrong)
    assert (r.exit_code, r.output) == (0, before)
    assert client.status(vault_dir, "alice")["requests"] == 5
    assert not [a for a, _ in _actions(vault_dir) if a == "agent.lock"]


def test_unlocked_agent_refuses_a_table_edited_while_it_runs(cli, vault_dir: Path, admin_session, agents):
    """A member edits the users table with raw SQL while alice's agent holds the vault open."""
    from test_insider import Raw

    info = agents("alice")
    assert cli(["users", "list"], env={"OFFLINE_PASSPHRASE": "wrong"}).exit_code == 0  # served by the agent
    Raw(vault_dir, "bob").sql("UPDATE users SET role = 'admin' WHERE name = 'bob'")
    r = cli(["users", "list"], env={"OFFLINE_PASSPHRASE": PASSPHRASES["alice"]})
    # The agent's refresh finds the row, locks, and the in-process fallback names it: exit 5.
    assert r.exit_code == 5 and 'table users, row ["bob"]' in r.output, r.output
    assert _reap(info["pid"])


# -- the CLI's in-process entry point and the start handshake ------------------------------------


def test_run_in_process_uses_the_streams_env_and_folder_it_is_given(admin_session, vault_dir: Path, tmp_path):
    """The agent's way into the CLI changes no global: not sys.stdout, os.environ or the cwd."""
    import io

    from offline.cli import Streams, run_in_process

    def run(*args: str, env: dict | None = None) -> tuple[int, str, str]:
        streams = Streams(io.StringIO(""), io.StringIO(), io.StringIO())
        code = run_in_process(
            ["--vault", str(vault_dir), "--user", "alice", *args],
            admin_session,
            streams,
            env=env or {},
            cwd=tmp_path,
        )
        return code, streams.stdout.getvalue(), streams.stderr.getvalue()

    before = (sys.stdin, sys.stdout, sys.stderr, dict(os.environ), os.getcwd())
    code, out, err = run("--json", "users", "list")
    assert code == 0 and err == "" and "alice" in [u["name"] for u in json.loads(out)]
    code, out, err = run("audit", "export", "--format", "jsonl", "--out", "exported.jsonl")  # a relative path
    assert code == 0 and (tmp_path / "exported.jsonl").is_file(), err
    assert not (Path(before[4]) / "exported.jsonl").exists() or Path(before[4]) == tmp_path
    code, out, err = run("collections", "grant", "nosuch", "bob")
    assert code == 1 and out == "" and err.startswith("Error: ") and err.count("\n") == 1
    code, out, err = run("users", "list", "--bogus")
    assert code == 2 and err.startswith("Error: ") and err.count("\n") == 1
    code, out, err = run("search", "q", "-k", "500")  # a bound the CLI words with the flag
    assert code == 2 and err == "Error: -k must be between 1 and 100\n"
    code, _, err = run("--vault", str(tmp_path / "elsewhere"), "users", "list")
    assert code == 2 and err == "Error: this agent serves another vault or user\n"
    assert (sys.stdin, sys.stdout, sys.stderr, dict(os.environ), os.getcwd()) == before
    assert not admin_session.closed  # lent, not handed over


def test_unlock_gives_up_when_the_agent_never_answers(vault_dir: Path, admin_session, tmp_path, monkeypatch):
    """A start that hangs before its handshake fails after START_TIMEOUT_S, and the child is killed."""
    from offline.errors import OfflineError

    hang = tmp_path / "hang"
    hang.write_text("#!/bin/sh\nexec sleep 60\n")
    hang.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(hang))  # unlock() starts "python -m offline.agent.server"
    monkeypatch.setattr(client, "START_TIMEOUT_S", 1.0)
    t0 = time.monotonic()
    with pytest.raises(OfflineError, match="^the agent did not start within 1 s$"):
        client.unlock(vault_dir, "alice", lambda: PASSPHRASES["alice"], 60.0, preload=False)
    assert time.monotonic() - t0 < 15


def test_preload_warms_the_reader_that_ask_serves():
    """unlock's warm-up loads what `ask` uses by default (the reader), and its fixed prompt opening."""
    from offline.agent.server import preload
    from offline.llm import engine
    from offline.llm.reader import reader_for
    from offline.llm.resolve import resolve_generate_model

    rd = reader_for(resolve_generate_model(None))
    assert rd is not None and rd.lora_path is None  # set-up built the merged reader
    done = preload()
    assert done["generate"]["model"] == rd.model.name, done
    warm = engine.cached(rd.model.path)
    assert warm is not None and warm.llm.n_tokens > 0  # the rag prompt's opening is evaluated
