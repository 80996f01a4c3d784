"""The network guard: nothing leaves the machine, loopback and Unix sockets still work."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from offline import netguard
from offline.errors import NetworkBlocked

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def guard():
    """The guard on for the test; restored to its previous state afterwards."""
    was_active = netguard.active()
    netguard.install()
    yield
    if not was_active:
        netguard.uninstall()


def test_connect_to_remote_address_is_blocked(guard):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(NetworkBlocked, match="192.0.2.1"):
            s.connect(("192.0.2.1", 80))
        with pytest.raises(NetworkBlocked):
            s.connect_ex(("192.0.2.1", 443))
    finally:
        s.close()


def test_udp_sendto_and_create_connection_are_blocked(guard):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(NetworkBlocked):
            u.sendto(b"x", ("192.0.2.1", 53))
    finally:
        u.close()
    with pytest.raises(NetworkBlocked):
        socket.create_connection(("192.0.2.1", 80), timeout=0.2)
    with pytest.raises(NetworkBlocked):
        socket.create_connection(("2001:db8::1", 80), timeout=0.2)


def test_dns_lookup_of_remote_name_is_blocked(guard):
    with pytest.raises(NetworkBlocked, match="lookup of 'huggingface.co'"):
        socket.getaddrinfo("huggingface.co", 443)
    assert socket.getaddrinfo("localhost", 80)  # loopback names still resolve


def test_loopback_and_unix_sockets_are_allowed(guard, tmp_path: Path):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    try:
        c = socket.create_connection(srv.getsockname(), timeout=2)
        conn, _ = srv.accept()
        c.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        c.close()
        conn.close()
    finally:
        srv.close()
    path = str(tmp_path / "s.sock")
    us = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    us.bind(path)
    us.listen(1)
    try:
        uc = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        uc.connect(path)
        uc.close()
    finally:
        us.close()


@pytest.mark.parametrize("host,loop", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("::ffff:127.0.0.1", True), ("0.0.0.0", True), ("192.0.2.1", False), ("10.0.0.1", False),
    ("example.org", False), ("2001:db8::1", False), (None, False), (b"127.0.0.1", True),
])
def test_is_loopback(host, loop):
    assert netguard.is_loopback(host) is loop


def test_self_test_reports_the_guard(guard):
    ok, msg = netguard.self_test()
    assert ok and "refused by the guard" in msg


def test_offline_env_overrides_values_that_reenable_the_hub(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    netguard.set_offline_env()
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1"


def test_cli_process_has_the_guard_before_any_command_runs():
    """Importing the CLI turns the guard on and forces the offline variables, in a fresh process."""
    code = textwrap.dedent("""
        import json, os, socket
        os.environ["HF_HUB_OFFLINE"] = "0"
        import offline.cli
        from offline.errors import NetworkBlocked
        try:
            socket.create_connection(("192.0.2.1", 80), timeout=0.2)
            blocked = False
        except NetworkBlocked:
            blocked = True
        print(json.dumps({"blocked": blocked, "hf": os.environ["HF_HUB_OFFLINE"]}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"blocked": True, "hf": "1"}


_NO_SOCKET_SCRIPT = r"""
import json, sys
from offline import errors, netguard

events, blocked = [], []
_orig = errors.NetworkBlocked.__init__
def _record(self, *a, **k):  # a library that swallowed the guard's error would still show up here
    blocked.append(str(a[0]) if a else "")
    _orig(self, *a, **k)
errors.NetworkBlocked.__init__ = _record

def hook(event, args):
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        addr = args[1]
        host = addr[0] if isinstance(addr, tuple) and addr else addr
        if isinstance(host, (str, bytes)) and not netguard.is_loopback(host) and not str(host).startswith("/"):
            events.append([event, repr(host)])
    elif event == "socket.getaddrinfo" and not netguard.is_loopback(args[0]) and args[0] is not None:
        events.append([event, repr(args[0])])
sys.addaudithook(hook)

from offline.cli import main
codes = []
for argv in json.loads(sys.argv[1]):
    try:
        main(argv, standalone_mode=False)
        codes.append(0)
    except SystemExit as exc:
        codes.append(exc.code or 0)
    except Exception as exc:
        codes.append(repr(exc))
print("RESULT=" + json.dumps({"codes": codes, "events": events, "blocked": blocked}))
"""


def test_ingest_search_and_ask_open_no_socket(tmp_path: Path):
    """The main job end to end in a fresh process: no non-loopback socket, lookup or blocked attempt."""
    from offline.cli import main

    missing = [c for c in ("ingest", "search", "ask") if c not in main.commands]
    if missing:
        pytest.skip(f"command(s) not registered yet: {', '.join(missing)}")
    argvs = [["init"], ["collections", "create", "demo"],
             ["ingest", str(REPO / "examples" / "sample-corpus"), "-c", "demo"],
             ["search", "adult patient records retention", "-c", "demo"],
             ["ask", "How long are adult patient records kept?", "-c", "demo", "--max-tokens", "32"]]
    env = {**os.environ, "OFFLINE_VAULT": str(tmp_path / "v"), "OFFLINE_USER": "alice",
           "OFFLINE_PASSPHRASE": "alice-passphrase-1", "OFFLINE_NEW_PASSPHRASE": "alice-passphrase-1"}
    out = subprocess.run([sys.executable, "-c", _NO_SOCKET_SCRIPT, json.dumps(argvs)], capture_output=True,
                         text=True, cwd=REPO, env=env, timeout=600)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT=")]
    assert line, out.stderr[-2000:]
    result = json.loads(line[-1][len("RESULT="):])
    assert result["codes"] == [0] * len(argvs), (result, out.stderr[-2000:])
    assert result["events"] == []
    assert result["blocked"] == []
