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


@pytest.mark.parametrize(
    "host,loop",
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", True),
        ("192.0.2.1", False),
        ("10.0.0.1", False),
        ("example.org", False),
        ("2001:db8::1", False),
        (None, False),
        (b"127.0.0.1", True),
    ],
)
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
"""  # noqa: E501 (script text run in a subprocess; kept byte-identical)


def test_ingest_search_and_ask_open_no_socket(tmp_path: Path):
    """The main job end to end in a fresh process: no non-loopback socket, lookup or blocked attempt."""
    from offline.cli import main

    missing = [c for c in ("ingest", "search", "ask") if c not in main.commands]
    if missing:
        pytest.skip(f"command(s) not registered yet: {', '.join(missing)}")
    argvs = [
        ["init"],
        ["collections", "create", "demo"],
        ["ingest", str(REPO / "examples" / "sample-corpus"), "-c", "demo"],
        ["search", "adult patient records retention", "-c", "demo"],
        ["ask", "How long are adult patient records kept?", "-c", "demo", "--max-tokens", "32"],
    ]
    env = {
        **os.environ,
        "OFFLINE_VAULT": str(tmp_path / "v"),
        "OFFLINE_USER": "alice",
        "OFFLINE_PASSPHRASE": "alice-passphrase-1",
        "OFFLINE_NEW_PASSPHRASE": "alice-passphrase-1",
    }
    out = subprocess.run(
        [sys.executable, "-c", _NO_SOCKET_SCRIPT, json.dumps(argvs)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT=")]
    assert line, out.stderr[-2000:]
    result = json.loads(line[-1][len("RESULT=") :])
    assert result["codes"] == [0] * len(argvs), (result, out.stderr[-2000:])
    assert result["events"] == []
    assert result["blocked"] == []


# -- every Python path, in a fresh process (issue: gethostbyname, sendto, _socket bypassed it) ---

_BYPASS_SCRIPT = r"""
import _socket, asyncio, json, socket, sys
reached = []  # CPython audit events fire inside the C functions, just before the system call

def hook(event, args):
    if event.startswith("socket.") and event not in ("socket.__new__",):
        reached.append([event, repr(args)[:120]])
sys.addaudithook(hook)

import offline.cli  # the CLI installs the guard on import
from offline.errors import NetworkBlocked

async def _lookup():
    return await asyncio.get_running_loop().getaddrinfo("example.com", 80)

udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
raw_udp = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
tcp = socket.socket()
attempts = {
    "udp sendto": lambda: udp.sendto(b"x", ("192.0.2.1", 53)),
    "udp sendto flags": lambda: udp.sendto(b"x", 0, ("192.0.2.1", 53)),
    "udp sendmsg": lambda: udp.sendmsg([b"x"], [], 0, ("192.0.2.1", 53)),
    "udp6 sendto": lambda: udp6.sendto(b"x", ("2001:db8::1", 53)),
    "udp connect": lambda: udp.connect(("192.0.2.1", 53)),
    "_socket sendto": lambda: raw_udp.sendto(b"x", ("192.0.2.1", 53)),
    "_socket sendmsg": lambda: raw_udp.sendmsg([b"x"], [], 0, ("192.0.2.1", 53)),
    "_socket connect": lambda: _socket.socket().connect(("192.0.2.1", 80)),
    "tcp connect_ex": lambda: tcp.connect_ex(("192.0.2.1", 80)),
    "create_connection": lambda: socket.create_connection(("192.0.2.1", 80), timeout=0.2),
    "bind all interfaces": lambda: socket.socket().bind(("0.0.0.0", 0)),
    "gethostbyname": lambda: socket.gethostbyname("example.com"),
    "gethostbyname_ex": lambda: socket.gethostbyname_ex("example.com"),
    "gethostbyaddr": lambda: socket.gethostbyaddr("192.0.2.1"),
    "getnameinfo": lambda: socket.getnameinfo(("192.0.2.1", 80), 0),
    "getaddrinfo": lambda: socket.getaddrinfo("example.com", 443),
    "getaddrinfo kw": lambda: socket.getaddrinfo(host="example.com", port=443, type=socket.SOCK_STREAM),
    "_socket getaddrinfo": lambda: _socket.getaddrinfo("example.com", 443),
    "_socket gethostbyname": lambda: _socket.gethostbyname("example.com"),
    "_socket gethostbyname_ex": lambda: _socket.gethostbyname_ex("example.com"),
    "asyncio getaddrinfo": lambda: asyncio.run(_lookup()),
    "asyncio open_connection": lambda: asyncio.run(asyncio.open_connection("example.com", 80)),
}
refused = {}
for name, fn in attempts.items():
    try:
        fn()
        refused[name] = "NOT REFUSED"
    except NetworkBlocked:
        refused[name] = "refused"
    except Exception as exc:
        refused[name] = f"{exc.__class__.__name__}: {exc}"
leaked = [e for e in reached]
reached.clear()

# Loopback still works, with real packets: a UDP datagram and a TCP exchange.
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("127.0.0.1", 0))
udp.sendto(b"ping", rx.getsockname())
loop_udp = rx.recv(4).decode()
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
c = socket.create_connection(srv.getsockname(), timeout=2)
conn, _ = srv.accept()
c.sendall(b"pong")
loop_tcp = conn.recv(4).decode()
names = [socket.gethostbyname("localhost"), socket.getaddrinfo("localhost", 80)[0][4][0]]
print("RESULT=" + json.dumps({"refused": refused, "leaked": leaked, "udp": loop_udp, "tcp": loop_tcp,
                              "names": names}))
"""


def test_every_python_path_to_the_network_is_refused_before_the_system_call():
    out = subprocess.run(
        [sys.executable, "-c", _BYPASS_SCRIPT],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT=")]
    assert line, out.stderr[-3000:]
    result = json.loads(line[-1][len("RESULT=") :])
    bad = {k: v for k, v in result["refused"].items() if v != "refused"}
    assert bad == {}, bad
    # No attempt reached CPython's socket layer at all: nothing was sent, no DNS packet either.
    assert result["leaked"] == []
    assert result["udp"] == "ping" and result["tcp"] == "pong"
    assert all(n.startswith("127.") for n in result["names"])


# -- the second layer: a private network namespace ---------------------------------------------


def _namespaces_permitted() -> bool:
    """Whether this machine lets a fresh process unshare its network namespace at all."""
    probe = (
        "import ctypes, os, sys\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "ok = libc.unshare(0x40000000) == 0 or libc.unshare(0x50000000) == 0\nsys.exit(0 if ok else 1)"
    )
    return subprocess.run([sys.executable, "-c", probe], timeout=30).returncode == 0


_NAMESPACE_SCRIPT = r"""
import json, os, socket, sys, threading, time
from offline import netguard
entered = netguard.enter_network_namespace()
netguard.uninstall()  # layer 2 alone must stop packets (native code never sees layer 1)
try:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("192.0.2.1", 9))
    kernel = "sent"
except OSError as exc:
    kernel = exc.__class__.__name__ + ":" + str(exc.errno)
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
c = socket.create_connection(srv.getsockname(), timeout=2); conn, _ = srv.accept(); c.sendall(b"lo")
path = sys.argv[1]
us = socket.socket(socket.AF_UNIX); us.bind(path); us.listen(1)
print("RESULT=" + json.dumps({"entered": entered, "layers": netguard.layers(), "kernel": kernel,
                              "loopback": conn.recv(2).decode(), "uid": os.getuid()}), flush=True)
a, _ = us.accept(); a.sendall(b"unix"); a.close()
"""


def test_network_namespace_leaves_only_loopback_and_unix_sockets_work(tmp_path: Path):
    if not _namespaces_permitted():
        pytest.skip("this machine does not allow network namespaces (the Python guard still holds)")
    path = str(tmp_path / "ns.sock")
    proc = subprocess.Popen(
        [sys.executable, "-c", _NAMESPACE_SCRIPT, path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("RESULT="), proc.stderr.read()[-3000:]
        result = json.loads(line[len("RESULT=") :])
        # From this (host) namespace, a path-bound Unix socket in the child's namespace still answers.
        c = socket.socket(socket.AF_UNIX)
        c.connect(path)
        assert c.recv(4) == b"unix"
        c.close()
    finally:
        proc.wait(timeout=30)
    assert result["entered"] is True
    ns = result["layers"]["network_namespace"]
    assert ns["active"] and ns["interfaces"] == ["lo"]
    assert result["kernel"].startswith("OSError:")  # ENETUNREACH: nothing to route it through
    assert result["loopback"] == "lo" and result["uid"] == os.getuid()


_DEGRADE_SCRIPT = r"""
import ctypes, json, os, socket, threading, time, encodings.idna
from offline import netguard
from offline.errors import NetworkBlocked
threading.Thread(target=time.sleep, args=(3,), daemon=True).start()  # a threaded process: no CLONE_NEWUSER
if os.getuid() == 0:  # as an ordinary user (no CAP_SYS_ADMIN, so no plain CLONE_NEWNET either)
    os.setgid(65534)
    os.setuid(65534)
    ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE, as a normally started process is
ok = netguard.enter_network_namespace()
netguard.install()
try:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("192.0.2.1", 9))
    guard = "not refused"
except NetworkBlocked:
    guard = "refused"
print(json.dumps({"ok": ok, "reason": netguard.layers()["network_namespace"]["reason"], "guard": guard}))
"""


def test_namespace_degrades_silently_when_not_permitted():
    out = subprocess.run(
        [sys.executable, "-c", _DEGRADE_SCRIPT],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0 and out.stderr == "", out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ok"] is False and result["reason"].startswith("not permitted here"), result
    assert result["guard"] == "refused"  # layer 1 holds on its own


def test_doctor_reports_both_layers_through_the_real_entry_point(tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OFFLINE_HOME": str(tmp_path / "home")}
    out = subprocess.run(
        [sys.executable, "-c", "from offline.agent.fast import main; main()", "--json", "doctor"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env=env,
    )
    report = json.loads(out.stdout)
    check = next(c for c in report["checks"] if c["name"] == "network guard")
    assert check["status"] == "PASS", check
    assert "python socket guard" in check["reason"] and "network namespace" in check["reason"]
    layers = check["detail"]["layers"]
    assert layers["python_guard"]["active"] is True
    if _namespaces_permitted():
        assert layers["network_namespace"]["active"] is True, layers
        assert "network namespace: active" in check["reason"]
    else:
        assert "network namespace: not active" in check["reason"]


def test_registry_download_is_the_one_command_outside_the_namespace():
    """`models fetch` runs pip in a child process: a private namespace would cut it off the registry."""
    from offline.agent.fast import wants_namespace

    assert not wants_namespace(["models", "fetch"])
    assert not wants_namespace(["--vault", "/v", "models", "fetch", "--json"])
    for argv in (["models", "list"], ["search", "models fetch"], ["ask", "x"], [], ["--help"]):
        assert wants_namespace(argv), argv
