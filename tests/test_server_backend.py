"""Issue 19: `serve --generate-backend` against a real second server (llama-cpp-python's own
OpenAI-compatible one, `python -m llama_cpp.server`, on the default model), and the network guard's
two exceptions: the listening address and exactly that one backend."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from conftest import PASSPHRASES
from test_server import _env, _free_port

from offline import netguard
from offline.errors import NetworkBlocked

httpx = pytest.importorskip("httpx")


def _wait(url: str, proc: subprocess.Popen, path: str) -> None:
    for _ in range(600):
        try:
            if httpx.get(url + path, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            pytest.fail("server exited: " + (proc.stderr.read() if hasattr(proc.stderr, "read") else ""))
        time.sleep(0.1)
    pytest.fail(f"{url} did not come up")


def test_guard_allows_exactly_the_named_peer_and_listen_address():
    was = netguard.active()
    netguard.install()
    try:
        netguard.allow_peer("192.0.2.7", 8000)
        netguard.allow_listen("127.0.0.1", 0)
        s = socket.socket()
        s.settimeout(0.05)
        try:
            with pytest.raises(NetworkBlocked):
                s.connect(("192.0.2.7", 8001))  # same host, other port
            with pytest.raises(NetworkBlocked):
                s.connect(("192.0.2.8", 8000))
            try:
                s.connect(("192.0.2.7", 8000))  # allowed: the guard lets it through (TEST-NET never answers)
            except NetworkBlocked:
                pytest.fail("the allow-listed backend was refused")
            except OSError:
                pass
        finally:
            s.close()
        assert netguard.allowed()["peers"] == ["192.0.2.7:8000"]
    finally:
        netguard.clear_allowed()
        if not was:
            netguard.uninstall()


def test_generate_backend_llama_cpp_server(admin_session, tmp_path, vault_dir):
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] not installed")
    from offline.audit import chain
    from offline.ingest import ingest_paths
    from offline.models.catalog import resolve_model
    from offline.vault import collections as C
    from offline.vault import open_session
    from offline.vault import tokens as T

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "warsaw.txt").write_text(
        "Warsaw is the capital and largest city of Poland. The Vistula river flows through Warsaw."
    )
    C.create_collection(admin_session, "kb")
    ingest_paths(admin_session, [docs], "kb")
    C.grant(admin_session, "kb", "bob", "read")
    bob = open_session(vault_dir, "bob", PASSPHRASES["bob"])
    token = T.create_token(bob, "bob", T.parse_duration("1h"))["token"]
    bob.close()

    model = resolve_model(None, "generate")
    bport, sport = _free_port(), _free_port()
    backend = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model.path),
            "--host",
            "127.0.0.1",
            "--port",
            str(bport),
            "--n_ctx",
            "2048",
        ],
        env=_env(tmp_path / "b-home"),
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "backend.log").open("w"),
        text=True,
    )  # llama.cpp logs a lot
    kit = None
    try:
        _wait(f"http://127.0.0.1:{bport}", backend, "/v1/models")
        kit = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from offline.cli import main; main()",
                "--vault",
                str(vault_dir),
                "serve",
                "--listen",
                f"127.0.0.1:{sport}",
                "--generate-backend",
                f"http://127.0.0.1:{bport}",
            ],
            env=_env(tmp_path / "s-home"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        url = f"http://127.0.0.1:{sport}"
        _wait(url, kit, "/healthz")
        assert httpx.get(url + "/healthz").json() == {"status": "ok"}  # nothing more without a token
        assert (
            httpx.get(url + "/healthz", headers={"Authorization": f"Bearer {token}"}).json()[
                "generate_backend"
            ]
            == f"http://127.0.0.1:{bport}"
        )
        r = httpx.post(
            url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {token}"},
            timeout=180,
            json={
                "model": "offline-rag:kb",
                "max_tokens": 32,
                "messages": [{"role": "user", "content": "Which river flows through Warsaw?"}],
            },
        )
        assert r.status_code == 200, r.text
        d = r.json()
        assert d["choices"][0]["message"]["content"]
        assert d["offline"]["retrieved"][0]["chunk_id"].startswith("kb/")
        # `doctor` (another process, same home) shows the server's one allowed backend.
        doc = subprocess.run(
            [sys.executable, "-c", "from offline.cli import main; main()", "--json", "doctor"],
            env=_env(tmp_path / "s-home"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        line = next(c for c in json.loads(doc.stdout)["checks"] if c["name"] == "team server")
        assert line["status"] == "PASS", line
        assert (
            f"127.0.0.1:{sport}" in line["reason"] and f"backend http://127.0.0.1:{bport}" in line["reason"]
        )
    finally:
        for p in (kit, backend):
            if p is not None:
                p.terminate()
                p.wait(timeout=30)
    assert not list((tmp_path / "s-home" / "servers").glob("*.json"))  # the note goes with the server
    admin_session.sync()
    reqs = [e.payload for e in chain.iter_entries(admin_session.db, "action = 'server.request'")]
    assert reqs[-1]["backend"] == f"http://127.0.0.1:{bport}" and reqs[-1]["status"] == 200
    asks = [e.payload for e in chain.iter_entries(admin_session.db, "action = 'ask'")]
    assert asks and asks[-1]["collections"] == ["kb"]
    assert json.dumps(asks[-1])  # the answer's own entry, as `offline ask` writes it
