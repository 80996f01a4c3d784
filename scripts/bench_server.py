#!/usr/bin/env python3
"""The team server under load, on loopback only, bounded in count and time.

1. Baseline, same run, same query, unloaded: `offline search` forwarded to a warm agent
   (`offline unlock`; a fresh client process per query, as a user types it) vs `POST /v1/search`
   (from a fresh `curl` process, and from a warm in-process HTTP client).
2. Load: ``--clients`` threads (default 20) over 4 members with different grants, each member's
   collection holding its own canary, for ``--duration`` seconds (default 180): searches and chat
   completions in the ratio ``--chat-share``. Reported: p50/p95 per kind, requests/s, status
   counts (anything but 200 and 429 is an error), responses holding another user's canary, and
   every answered request found in the audit log; then `offline audit verify`.
3. Crash: load again, `kill -9` of the server mid-way, restart: it serves again, every request
   acknowledged before the kill is in the audit log, and the chain verifies.

    python scripts/bench_server.py [--duration 180] [--clients 20] [--chat-share 0.2] [--json]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
PASS = "bench-server-passphrase-1"
USERS = ["ana", "ben", "cho", "dev"]
GRANTS = {
    "ana": ["ward-a", "common"],
    "ben": ["ward-b", "common"],
    "cho": ["ward-c"],
    "dev": ["ward-d", "ward-a"],
}
QUERY = "How long are adult patient records kept?"
COMMON = "Harbourside Family Clinic keeps adult patient records for 8 years after the patient's last visit."


def canary(coll: str) -> str:
    return f"CANARY-{coll.upper()}-{abs(hash(coll)) % 10**8:08d}"


def offline(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [PY, "-c", "import sys; from offline.agent.fast import main; sys.argv[0]='offline'; main()", *args],
        env=env,
        capture_output=True,
        text=True,
    )
    if check and r.returncode != 0:
        sys.exit(f"offline {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 4)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict[str, str], vault: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            PY,
            "-c",
            "from offline.cli import main; main()",
            "--vault",
            str(vault),
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--queue",
            "64",
            "--per-user",
            "8",
        ],
        env={**env, "OFFLINE_HOME": env["SERVER_HOME"]},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    sys.exit("server did not start")


class Load:
    """``clients`` threads sending requests until ``stop``; every response is checked and kept."""

    def __init__(self, url: str, tokens: dict[str, str], chat_share: float, max_tokens: int):
        self.url, self.tokens, self.chat_share, self.max_tokens = url, tokens, chat_share, max_tokens
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.lat: dict[str, list[float]] = {"search": [], "chat": []}
        self.status: dict[str, int] = {}
        self.leaks = 0
        self.acked = 0

    def client(self, user: str, seed: int) -> None:
        rnd = random.Random(seed)
        own = {canary(c) for c in GRANTS[user]}
        foreign = {canary(c) for u in USERS for c in GRANTS[u]} - own
        with httpx.Client(
            base_url=self.url, timeout=300, headers={"Authorization": f"Bearer {self.tokens[user]}"}
        ) as http:
            while not self.stop.is_set():
                kind = "chat" if rnd.random() < self.chat_share else "search"
                q = rnd.choice([QUERY, "What is the internal reference code?", "reference code of the ward"])
                t0 = time.perf_counter()
                try:
                    if kind == "chat":
                        r = http.post(
                            "/v1/chat/completions",
                            json={
                                "model": "offline-rag",
                                "max_tokens": self.max_tokens,
                                "messages": [{"role": "user", "content": q}],
                            },
                        )
                    else:
                        r = http.post("/v1/search", json={"query": q, "k": 5})
                    code, body = r.status_code, r.text
                except httpx.HTTPError:
                    code, body = -1, ""
                dt = time.perf_counter() - t0
                with self.lock:
                    self.status[str(code)] = self.status.get(str(code), 0) + 1
                    if code == 200:
                        self.lat[kind].append(dt)
                        self.acked += 1
                    if any(c in body for c in foreign):
                        self.leaks += 1

    def run(self, clients: int, seconds: float, kill: Any = None) -> float:
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(clients) as ex:
            futs = [ex.submit(self.client, USERS[i % len(USERS)], i) for i in range(clients)]
            if kill is not None:
                time.sleep(seconds / 2)
                kill()
                time.sleep(1)
            else:
                time.sleep(seconds)
            self.stop.set()
            for f in futs:
                f.result()
        return time.perf_counter() - t0


def audit_counts(env: dict[str, str]) -> dict[str, int]:
    """``server.request`` entries by status, read (and the chain verified) as the admin."""
    os.environ["OFFLINE_HOME"] = env["OFFLINE_HOME"]
    from offline.audit import chain
    from offline.vault import open_session

    with open_session(Path(env["OFFLINE_VAULT"]), "admin", PASS) as s:
        counts: dict[str, int] = {}
        for e in chain.iter_entries(s.db, "action = 'server.request'"):
            key = str(e.payload.get("status"))
            counts[key] = counts.get(key, 0) + 1
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=180.0, help="seconds of load (bounded: at most 600)")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--chat-share", type=float, default=0.2)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--baseline-runs", type=int, default=10)
    ap.add_argument("--crash-seconds", type=float, default=20.0)
    ap.add_argument("--json", action="store_true")
    opts = ap.parse_args()
    opts.duration = min(opts.duration, 600.0)

    work = Path(tempfile.mkdtemp(prefix="bench-server-"))
    vault = work / "vault"
    env = {
        **os.environ,
        "OFFLINE_HOME": str(work / "home"),
        "OFFLINE_VAULT": str(vault),
        "OFFLINE_USER": "admin",
        "OFFLINE_PASSPHRASE": PASS,
        "OFFLINE_NEW_PASSPHRASE": PASS,
        "OFFLINE_KDF_TARGET_S": "0",
        "PYTHONPATH": str(REPO),
        "SERVER_HOME": str(work / "server-home"),
        "OFFLINE_MODELS_DIR": os.environ.get("OFFLINE_MODELS_DIR", str(REPO / "models")),
    }
    res: dict[str, Any] = {
        "clients": opts.clients,
        "users": len(USERS),
        "duration_s": opts.duration,
        "chat_share": opts.chat_share,
        "cpus": os.cpu_count(),
    }
    server = None
    try:
        offline(env, "init")
        colls = sorted({c for cs in GRANTS.values() for c in cs})
        for c in colls:
            folder = work / "docs" / c
            folder.mkdir(parents=True)
            (folder / "policy.txt").write_text(f"{COMMON}\nWard {c} internal reference code {canary(c)}.\n")
            offline(env, "collections", "create", c)
            offline(env, "ingest", str(folder), "-c", c)
        tokens = {}
        for u in USERS:
            offline(env, "users", "add", u, "--role", "member", "--allow-weak")
            for c in GRANTS[u]:
                offline(env, "collections", "grant", c, u)
            ue = {**env, "OFFLINE_USER": u}
            tokens[u] = json.loads(
                offline(ue, "--json", "users", "token", "create", u, "--expires", "1d").stdout
            )["token"]

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_server(env, vault, port)
        # 1. baseline: warm agent vs server, same query, unloaded
        ae = {**env, "OFFLINE_USER": "ana"}
        offline(ae, "unlock", "--idle", "30m")
        search = ("search", QUERY, "-c", "common", "-k", "3")
        offline(ae, *search)
        agent = []
        for _ in range(opts.baseline_runs):
            t0 = time.perf_counter()
            offline(ae, *search)
            agent.append(time.perf_counter() - t0)
        offline(ae, "lock")
        body = json.dumps({"query": QUERY, "collections": ["common"], "k": 3})
        curl_cmd = [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            url + "/v1/search",
            "-H",
            f"Authorization: Bearer {tokens['ana']}",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]
        subprocess.run(curl_cmd, check=True, capture_output=True)
        curl, warm = [], []
        for _ in range(opts.baseline_runs):
            t0 = time.perf_counter()
            subprocess.run(curl_cmd, check=True, capture_output=True)
            curl.append(time.perf_counter() - t0)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens['ana']}"}) as http:
            for _ in range(opts.baseline_runs):
                t0 = time.perf_counter()
                http.post(
                    "/v1/search", content=body, headers={"Content-Type": "application/json"}
                ).raise_for_status()
                warm.append(time.perf_counter() - t0)
        res["baseline"] = {
            "agent_search_p50_s": pct(agent, 0.5),
            "server_search_curl_p50_s": pct(curl, 0.5),
            "server_search_http_p50_s": pct(warm, 0.5),
            "ratio_curl_vs_agent": round(pct(curl, 0.5) / pct(agent, 0.5), 3),
            "ratio_http_vs_agent": round(pct(warm, 0.5) / pct(agent, 0.5), 3),
        }

        # 2. load
        load = Load(url, tokens, opts.chat_share, opts.max_tokens)
        took = load.run(opts.clients, opts.duration)
        total = sum(load.status.values())
        res["load"] = {
            "requests": total,
            "rps": round(total / took, 2),
            "status": load.status,
            "errors_other_than_429": sum(n for c, n in load.status.items() if c not in ("200", "429")),
            "canary_leaks": load.leaks,
            "search_p50_s": pct(load.lat["search"], 0.5),
            "search_p95_s": pct(load.lat["search"], 0.95),
            "chat_p50_s": pct(load.lat["chat"], 0.5),
            "chat_p95_s": pct(load.lat["chat"], 0.95),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }
        server.terminate()
        server.wait(timeout=60)
        audited = audit_counts(env)
        res["load"]["audited_200"] = audited.get("200", 0)
        res["load"]["every_answered_request_audited"] = (
            audited.get("200", 0) >= load.acked + opts.baseline_runs * 2
        )

        # 3. crash: kill -9 mid-load, restart
        server = start_server(env, vault, port)
        for u in USERS:  # warm: sessions opened, embedder loaded, so the kill lands mid-load
            httpx.post(
                url + "/v1/search",
                json={"query": QUERY},
                timeout=300,
                headers={"Authorization": f"Bearer {tokens[u]}"},
            ).raise_for_status()
        before = audit_counts(env).get("200", 0)
        crash = Load(url, tokens, opts.chat_share, opts.max_tokens)
        crash.run(opts.clients, opts.crash_seconds, kill=lambda: os.kill(server.pid, signal.SIGKILL))
        server.wait(timeout=30)
        server = start_server(env, vault, port)
        r = httpx.post(
            url + "/v1/search",
            json={"query": QUERY},
            headers={"Authorization": f"Bearer {tokens['ben']}"},
            timeout=300,
        )  # the first request after a restart loads the embedder
        after = audit_counts(env).get("200", 0)
        verify = offline(env, "audit", "verify", check=False)
        res["crash"] = {
            "acknowledged_before_kill": crash.acked,
            "audited": after - before - 1,
            "no_lost_acknowledged_write": after - before - 1 >= crash.acked,
            "serves_after_restart": r.status_code == 200,
            "audit_verify_exit": verify.returncode,
        }
    finally:
        if server is not None and server.poll() is None:
            server.terminate()
            server.wait(timeout=60)
        offline({**env, "OFFLINE_USER": "ana"}, "lock", check=False)
    if opts.json:
        print(json.dumps(res, indent=2))
        return
    b, ld, cr = res["baseline"], res["load"], res["crash"]
    print(
        f"baseline search p50: agent {b['agent_search_p50_s']} s, "
        f"server via curl {b['server_search_curl_p50_s']} s ({b['ratio_curl_vs_agent']}x), "
        f"warm HTTP client {b['server_search_http_p50_s']} s ({b['ratio_http_vs_agent']}x)"
    )
    print(
        f"load: {opts.clients} clients, {len(USERS)} users, {took:.0f} s: {ld['requests']} requests, "
        f"{ld['rps']} req/s, status {ld['status']}, "
        f"errors other than 429: {ld['errors_other_than_429']}, canary leaks: {ld['canary_leaks']}"
    )
    print(
        f"  search p50 {ld['search_p50_s']} s p95 {ld['search_p95_s']} s; chat p50 {ld['chat_p50_s']} s "
        f"p95 {ld['chat_p95_s']} s; every answered request audited: {ld['every_answered_request_audited']}"
    )
    print(
        f"crash: {cr['acknowledged_before_kill']} acknowledged, {cr['audited']} audited; "
        "serves after restart: "
        f"{cr['serves_after_restart']}; audit verify exit {cr['audit_verify_exit']}"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
