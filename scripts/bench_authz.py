#!/usr/bin/env python3
"""What signed authorization costs: unlock + first search through the agent, this tree vs a baseline.

The baseline is the kit as it was before authorization was authenticated by the audit chain (git
revision ``--baseline``, checked out into a temporary worktree), run by the same interpreter in the
same run, interleaved one for one so machine noise hits both alike. Each side builds its own vault
(same documents, users and number of audit entries: the formats differ), then per round:
``offline unlock`` (Argon2id, open, chain verification, model preload) and the first ``search``
through the agent, each in a fresh client process.

Also, for this tree only: ``open_session`` with a chain of ``--entries`` entries when the user's
client has no saved head (verifies every signature from the pinned root) and when it has one
(verifies only what is new), and ``Session.audit`` append latency.

    .venv/bin/python scripts/bench_authz.py [--rounds 5] [--entries 3000] [--baseline d77a659] [--json]
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
PY = str(REPO / ".venv" / "bin" / "python")
OFFLINE = str(REPO / ".venv" / "bin" / "offline")
PASS = "bench-authz-passphrase"
QUERY = "Which region of France is named after the Normans?"
DOCS = {
    "normans.txt": "The Normans gave their name to Normandy, a region in France.",
    "rollo.txt": "Rollo was a Viking leader who swore fealty to King Charles III of West Francia.",
    "hastings.txt": "In 1066 Duke William of Normandy defeated King Harold at the Battle of Hastings.",
}

# Run inside the tree under test (PYTHONPATH): fills the log with search-shaped entries.
FILL = """
import sys
from pathlib import Path
from offline.vault import open_session
s = open_session(Path(sys.argv[1]), "bench", sys.argv[2])
for i in range(int(sys.argv[3])):
    s.audit("search", collections=["bench"], mode="hybrid", k=5, hits=[{"chunk_id": f"bench/{i % 9}", "score": 0.03}])
s.close()
"""  # noqa: E501 (script text run in a subprocess; kept byte-identical)

# This tree only: open with and without the client's saved head, and append latency.
OPEN = """
import json, os, shutil, statistics, sys, time
from pathlib import Path
from offline.vault import open_session
vault = Path(sys.argv[1])
out = {"open_no_state_s": [], "open_with_state_s": [], "append_ms": []}
for _ in range(3):
    shutil.rmtree(vault / "clients", ignore_errors=True)  # both copies of the client state
    shutil.rmtree(Path(os.environ["OFFLINE_HOME"]) / "seen", ignore_errors=True)
    t0 = time.perf_counter(); s = open_session(vault, "bench", sys.argv[2]); out["open_no_state_s"].append(time.perf_counter() - t0)
    s.close()
    t0 = time.perf_counter(); s = open_session(vault, "bench", sys.argv[2]); out["open_with_state_s"].append(time.perf_counter() - t0)
    for i in range(200):
        t0 = time.perf_counter(); s.audit("bench.append", i=i); out["append_ms"].append((time.perf_counter() - t0) * 1000)
    s.close()
print(json.dumps(out))
"""  # noqa: E501 (script text run in a subprocess; kept byte-identical)


def env_for(tree: Path, work: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(tree),
        "OFFLINE_HOME": str(work / "home"),
        "OFFLINE_VAULT": str(work / "vault"),
        "OFFLINE_USER": "bench",
        "OFFLINE_PASSPHRASE": PASS,
        "OFFLINE_NEW_PASSPHRASE": PASS,
        "OFFLINE_KDF_TARGET_S": "0",
        "OFFLINE_MODELS_DIR": os.environ.get("OFFLINE_MODELS_DIR", str(REPO / "models")),
    }


def run(env: dict[str, str], *args: str) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([OFFLINE, *args], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"offline {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return time.perf_counter() - t0


def build(tree: Path, work: Path, entries: int) -> dict[str, str]:
    env = env_for(tree, work)
    docs = work / "docs"
    docs.mkdir(parents=True)
    for name, text in DOCS.items():
        (docs / name).write_text(text + "\n", encoding="utf-8")
    run(env, "init")
    run(env, "collections", "create", "bench")
    run(env, "ingest", str(docs), "-c", "bench")
    # cwd outside the repository: `python -c` puts the working directory before PYTHONPATH.
    subprocess.run([PY, "-c", FILL, str(work / "vault"), PASS, str(entries)], env=env, check=True, cwd=work)
    return env


def p50(xs: list[float]) -> float:
    return round(statistics.median(xs), 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--entries", type=int, default=3000)
    ap.add_argument("--baseline", default="d77a659", help="git revision measured as the baseline")
    ap.add_argument("--json", action="store_true")
    opts = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-authz-"))
    base_tree = tmp / "baseline"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(base_tree), opts.baseline],
        check=True,
        capture_output=True,
    )
    res: dict[str, object] = {}
    try:
        sides = {
            "baseline": build(base_tree, tmp / "b", opts.entries),
            "signed": build(REPO, tmp / "s", opts.entries),
        }
        times: dict[str, dict[str, list[float]]] = {k: {"unlock": [], "first_search": []} for k in sides}
        for _ in range(opts.rounds):
            for name, env in sides.items():  # interleaved
                times[name]["unlock"].append(run(env, "unlock", "--idle", "10m"))
                times[name]["first_search"].append(run(env, "search", QUERY, "-c", "bench", "-k", "3"))
                run(env, "lock")
        lib = json.loads(
            subprocess.run(
                [PY, "-c", OPEN, str(tmp / "s" / "vault"), PASS],
                env=sides["signed"],
                check=True,
                capture_output=True,
                text=True,
                cwd=tmp,
            ).stdout
        )
        total = {k: p50([u + f for u, f in zip(v["unlock"], v["first_search"])]) for k, v in times.items()}
        res = {
            "unlock_p50_s": {k: p50(v["unlock"]) for k, v in times.items()},
            "first_search_p50_s": {k: p50(v["first_search"]) for k, v in times.items()},
            "unlock_plus_first_search_p50_s": total,
            "ratio_signed_vs_baseline": round(total["signed"] / total["baseline"], 3),
            "entries": opts.entries,
            "open_no_client_state_p50_s": p50(lib["open_no_state_s"]),
            "open_with_client_state_p50_s": p50(lib["open_with_state_s"]),
            "append_p50_ms": round(statistics.median(lib["append_ms"]), 3),
            "append_p95_ms": round(sorted(lib["append_ms"])[int(0.95 * len(lib["append_ms"]))], 3),
            "goals": {
                "ratio_le_1.2": total["signed"] / total["baseline"] <= 1.2,
                "append_p50_lt_2ms": statistics.median(lib["append_ms"]) < 2.0,
            },
            "rounds": opts.rounds,
            "baseline": opts.baseline,
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "cpus": os.cpu_count(),
        }
    finally:
        for name in ("b", "s"):
            subprocess.run([OFFLINE, "lock"], env=env_for(REPO, tmp / name), capture_output=True)
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_tree)], capture_output=True
        )
        shutil.rmtree(tmp, ignore_errors=True)
    if opts.json:
        print(json.dumps(res, indent=2))
        return
    print(f"unlock + first search via the agent, p50 of {res['rounds']} (log of {res['entries']} entries):")
    for k in ("baseline", "signed"):
        print(
            f"  {k:9s} unlock {res['unlock_p50_s'][k]:.3f} s + search {res['first_search_p50_s'][k]:.3f} s"
            f" = {res['unlock_plus_first_search_p50_s'][k]:.3f} s"
        )
    print(f"  ratio signed / baseline {res['ratio_signed_vs_baseline']:.3f}  (goal <= 1.2)")
    print(
        f"open_session, {res['entries']} entries: no client state {res['open_no_client_state_p50_s']:.3f} s,"
        f" with client state {res['open_with_client_state_p50_s']:.3f} s (KDF at the floor)"
    )
    print(
        f"Session.audit append p50 {res['append_p50_ms']:.3f} ms, p95 {res['append_p95_ms']:.3f} ms "
        "(goal p50 < 2 ms)"
    )
    print(f"load avg {res['load_avg_1m']} on {res['cpus']} cpus; goals: {json.dumps(res['goals'])}")


if __name__ == "__main__":
    main()
