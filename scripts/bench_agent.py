#!/usr/bin/env python3
"""The unlocked agent: warm `search`/`ask` through the agent vs cold in-process, and `--help`.

Every figure is end to end from the user's point of view: a fresh `offline` client process is
started (`.venv/bin/offline ...`), so the client's own start-up is included. Cold runs use no agent
(each pays Argon2id at the vault's KDF cost, imports torch/sentence-transformers and loads the
models); warm runs are forwarded to an agent started with `offline unlock`. Ask TTFT is the time
from starting the client to the first byte on its stdout (the first streamed token; a grounded
answer prints once it is checked, so for `ask` this is the whole answer).

With ``--before DIR`` (another checkout, e.g. /work/main) the cold figures are measured for both
codes in the same run, alternating before/after so drift in machine load favours neither.

The client is the console script's entry point (``offline.agent.fast:main``) run by this Python,
with ``PYTHONPATH`` naming the checkout under test.

    python scripts/bench_agent.py [--warm-runs 15] [--cold-runs 3] [--kdf-target 0.5] [--before DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENTRY = "import sys; from offline.agent.fast import main; sys.argv[0] = 'offline'; sys.exit(main())"
OFFLINE = [sys.executable, "-c", ENTRY]  # what the installed `offline` script runs
PASS = "bench-agent-passphrase"
QUERY = "Which region of France is named after the Normans?"
DOCS = {
    "normans.txt": "The Normans were the people who in the 10th and 11th centuries gave their name to "
    "Normandy, a region in France. They descended from Norse raiders and pirates.",
    "rollo.txt": "Rollo was a Viking leader who agreed to swear fealty to King Charles III of West "
    "Francia in exchange for land, the start of the Duchy of Normandy.",
    "hastings.txt": "In 1066 Duke William of Normandy defeated King Harold at the Battle of Hastings "
    "and became King of England; this is known as the Norman Conquest.",
    "sicily.txt": "Norman adventurers founded the Kingdom of Sicily in 1130 under Roger II, ruling "
    "southern Italy and Sicily for more than a century.",
    "language.txt": "The Norman language was a dialect of Old French spoken in Normandy; Anglo-Norman "
    "became the language of the English court after the Conquest.",
}


def run(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([*OFFLINE, *args], env=env, capture_output=True, text=True)
    if check and r.returncode != 0:
        sys.exit(f"offline {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def timed(env: dict[str, str], *args: str, exe: list[str] = OFFLINE) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([*exe, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"offline {' '.join(args)} failed ({r.returncode}): {r.stderr.decode().strip()}")
    return dt


def ttft(env: dict[str, str], *args: str, exe: list[str] = OFFLINE) -> float:
    """Seconds from starting the client to its first stdout byte (then let it finish)."""
    t0 = time.perf_counter()
    p = subprocess.Popen([*exe, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None
    first = os.read(p.stdout.fileno(), 1)
    dt = time.perf_counter() - t0
    p.communicate()
    if not first or p.returncode != 0:
        sys.exit(f"offline {' '.join(args)} failed ({p.returncode})")
    return dt


def p50(xs: list[float]) -> float:
    return round(statistics.median(xs), 4)


def p90(xs: list[float]) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(0.9 * len(xs)))], 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warm-runs", type=int, default=15)
    ap.add_argument("--cold-runs", type=int, default=3)
    ap.add_argument("--kdf-target", default="0.5", help="seconds of Argon2id per unlock (the kit's default)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument(
        "--before", type=Path, help="another checkout whose cold figures to measure in the same run"
    )
    ap.add_argument("--json", action="store_true")
    opts = ap.parse_args()
    load_before = os.getloadavg()

    work = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    # `python -c` puts the working directory first on sys.path: run the clients from a folder with
    # no `offline` package in it, or a checkout's own code would shadow PYTHONPATH.
    os.chdir(work)
    env = {
        **os.environ,
        "OFFLINE_HOME": str(work / "home"),
        "OFFLINE_VAULT": str(work / "vault"),
        "OFFLINE_USER": "bench",
        "OFFLINE_PASSPHRASE": PASS,
        "OFFLINE_NEW_PASSPHRASE": PASS,
        "OFFLINE_KDF_TARGET_S": opts.kdf_target,
        "OFFLINE_MODELS_DIR": os.environ.get("OFFLINE_MODELS_DIR", str(REPO / "models")),
        "PYTHONPATH": str(REPO),
    }
    env.pop("OMP_WAIT_POLICY", None)  # each side sets its own (offline/__init__.py)
    before_env = {**env, "PYTHONPATH": str(opts.before)} if opts.before else None
    res: dict[str, object] = {}
    try:
        docs = work / "docs"
        docs.mkdir()
        for name, text in DOCS.items():
            (docs / name).write_text(text + "\n", encoding="utf-8")
        run(env, "init")
        run(env, "collections", "create", "bench")
        run(env, "ingest", str(docs), "-c", "bench")

        help_runs = [timed(env, "--help") for _ in range(5)]
        search = ("search", QUERY, "-c", "bench", "-k", "3")
        ask = ("ask", QUERY, "-c", "bench", "--max-tokens", str(opts.max_tokens))
        has_ask = run(env, "ask", "--help", check=False).returncode == 0
        cold_search, cold_ask, before_search, before_ask = [], [], [], []
        for i in range(opts.cold_runs):  # after/before alternating, first one then the other
            order = [("after", env), ("before", before_env)] if before_env else [("after", env)]
            for side, e in order if i % 2 == 0 else order[::-1]:
                (cold_search if side == "after" else before_search).append(timed(e, *search))
                if has_ask:
                    (cold_ask if side == "after" else before_ask).append(ttft(e, *ask))

        t0 = time.perf_counter()
        run(env, "unlock", "--idle", "30m")
        unlock_s = time.perf_counter() - t0
        client_only = [timed(env, "status") for _ in range(opts.warm_runs)]
        warm_search = [timed(env, *search) for _ in range(opts.warm_runs)]
        warm_ask = [ttft(env, *ask) for _ in range(max(3, opts.warm_runs // 3))] if has_ask else []
        # The same console script, pointed at offline.agent.fast:main (forwards before importing click).
        fast = work / "offline-fast"
        fast.write_text(
            f"#!{sys.executable}\nimport sys\n"
            "from offline.agent.fast import main\nsys.argv[0] = 'offline'\nsys.exit(main())\n"
        )
        fast.chmod(0o700)
        fast_search = [timed(env, *search, exe=[str(fast)]) for _ in range(opts.warm_runs)]
        fast_ask = (
            [ttft(env, *ask, exe=[str(fast)]) for _ in range(max(3, opts.warm_runs // 3))] if has_ask else []
        )
        prompt_s = None
        if has_ask:
            out = json.loads(run(env, "--json", *ask).stdout)
            prompt_s = out.get("timings", {}).get("prompt_s")
        status = json.loads(run(env, "--json", "status").stdout)
        run(env, "lock")

        res = {
            "help_s": p50(help_runs),
            "cold_search_p50_s": p50(cold_search),
            "warm_search_p50_s": p50(warm_search),
            "warm_search_p90_s": p90(warm_search),
            "client_roundtrip_p50_s": p50(client_only),
            "warm_search_fast_entry_p50_s": p50(fast_search),
            "warm_ask_ttft_fast_entry_s": p50(fast_ask) if fast_ask else None,
            "cold_ask_ttft_s": p50(cold_ask) if cold_ask else None,
            "before_cold_search_p50_s": p50(before_search) if before_search else None,
            "before_cold_ask_ttft_s": p50(before_ask) if before_ask else None,
            "before": str(opts.before) if opts.before else None,
            "warm_ask_ttft_s": p50(warm_ask) if warm_ask else None,
            "warm_ask_prompt_s": prompt_s,
            "unlock_s": round(unlock_s, 3),
            "preloaded": status.get("preloaded"),
            "search_speedup": round(p50(cold_search) / p50(warm_search), 1),
            "ask_ttft_speedup": round(p50(cold_ask) / p50(warm_ask), 1) if cold_ask and warm_ask else None,
            "goals": {
                "warm_search_p50_le_0.3s": p50(warm_search) <= 0.3,
                "warm_search_fast_entry_p50_le_0.3s": p50(fast_search) <= 0.3,
                "help_le_0.5s": p50(help_runs) <= 0.5,
                "cold_search_le_2.5s": p50(cold_search) <= 2.5,
                "cold_ask_ttft_le_4s": p50(cold_ask) <= 4.0 if cold_ask else None,
                "warm_ask_ttft_le_prompt_plus_0.2s": (p50(warm_ask) <= prompt_s + 0.2)
                if warm_ask and prompt_s is not None
                else None,
            },
            "runs": {"warm": opts.warm_runs, "cold": opts.cold_runs},
            "cold_s": {
                "search": cold_search,
                "ask": cold_ask,
                "before_search": before_search,
                "before_ask": before_ask,
            },
            "kdf_target_s": float(opts.kdf_target),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()],
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cpus": os.cpu_count(),
        }
    finally:
        subprocess.run([*OFFLINE, "lock"], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    if opts.json:
        print(json.dumps(res, indent=2))
        return
    print(f"offline --help                 {res['help_s']:.3f} s")
    print(f"search cold (no agent) p50     {res['cold_search_p50_s']:.3f} s")
    if res["before_cold_search_p50_s"] is not None:
        print(
            f"  before ({res['before']}): cold search {res['before_cold_search_p50_s']:.3f} s, cold ask TTFT "
            f"{res['before_cold_ask_ttft_s']} s (same run, alternating)"
        )
    print(
        f"search warm (agent) p50 / p90  {res['warm_search_p50_s']:.3f} / {res['warm_search_p90_s']:.3f} s"
        f"  ({res['search_speedup']}x faster)"
    )
    print(f"client round trip (status) p50 {res['client_roundtrip_p50_s']:.3f} s")
    print(
        f"search warm, fast entry p50    {res['warm_search_fast_entry_p50_s']:.3f} s"
        f"  (offline.agent.fast:main as the console script)"
    )
    if res["warm_ask_ttft_s"] is not None:
        print(
            f"ask TTFT cold / warm           {res['cold_ask_ttft_s']:.3f} / {res['warm_ask_ttft_s']:.3f} s"
            f"  ({res['ask_ttft_speedup']}x); model prompt processing {res['warm_ask_prompt_s']} s;"
            f" fast entry {res['warm_ask_ttft_fast_entry_s']:.3f} s"
        )
    print(
        f"unlock (start agent, warm models) {res['unlock_s']:.2f} s; load {res['load_before']} -> "
        f"{res['load_after']} on {res['cpus']} cpus, {res['date']}"
    )
    print("goals:", json.dumps(res["goals"]))


if __name__ == "__main__":
    main()
