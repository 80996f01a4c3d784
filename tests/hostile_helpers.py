"""Helpers for the hostile-conditions tests (issue 12): crash children, a fork server, checkers.

Run as a script this module is the *child* side of the crash and concurrency trials:

    python tests/hostile_helpers.py child OP VAULT ACKFILE SEED PARAMS_JSON
    python tests/hostile_helpers.py zygote          # fork server: embedder loaded once, forks per request

A child appends protocol lines to ACKFILE, each written with one ``write`` on an ``O_APPEND`` fd, so
a SIGKILL never leaves half a line that parses:

    ready                       set-up done, the test may start its random countdown to the kill
    begin {json}                an operation is starting (it may or may not commit)
    ack {json}                  that operation committed (the library call returned)
    error {json}                an operation raised (the concurrency tests require none)

The zygote exists because loading the embedding model costs 10-20 s on two busy cores: it loads it
once, then ``fork()``s a fresh process per trial, which is killed with a real SIGKILL like any other.
Nothing here is a mock: every child runs the real vault, SQLCipher, sqlite-vec and model code.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
PASSPHRASES = {"alice": "alice-passphrase-1", "bob": "bob-passphrase-22", "carol": "carol-passphrase-3"}
REPORT_ENV = "OFFLINE_HOSTILE_REPORT"


# -- trial bookkeeping (for docs/hostile.md) -------------------------------------------------------


def record(condition: str, trials: int, failures: int = 0, **extra: Any) -> None:
    """Append one line of trial counts to ``$OFFLINE_HOSTILE_REPORT`` (scripts/test-hostile sets it)."""
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    line = json.dumps({"condition": condition, "trials": trials, "failures": failures, **extra}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


# -- the ack protocol -----------------------------------------------------------------------------


class Acker:
    """Writes protocol lines atomically (one write per line, O_APPEND)."""

    def __init__(self, path: str | Path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def say(self, kind: str, obj: Any = None) -> None:
        line = kind if obj is None else f"{kind} {json.dumps(obj, sort_keys=True)}"
        os.write(self.fd, (line + "\n").encode())


@dataclass
class Acks:
    ready: bool = False
    acked: list[dict[str, Any]] = field(default_factory=list)
    inflight: dict[str, Any] | None = None  # begun, not acknowledged
    errors: list[dict[str, Any]] = field(default_factory=list)


def read_acks(path: str | Path) -> Acks:
    out = Acks()
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "ready":
            out.ready = True
        elif kind == "begin":
            out.inflight = json.loads(rest)
        elif kind == "ack":
            out.acked.append(json.loads(rest))
            out.inflight = None
        elif kind == "error":
            out.errors.append(json.loads(rest))
            out.inflight = None
    return out


def wait_for(path: str | Path, predicate, timeout: float, what: str, proc_alive=None) -> Acks:
    deadline = time.monotonic() + timeout
    while True:
        acks = read_acks(path)
        if predicate(acks):
            return acks
        if proc_alive is not None and not proc_alive():
            log = Path(f"{path}.log")
            tail = log.read_text()[-3000:] if log.exists() else ""
            raise AssertionError(f"child died before {what}:\n{tail}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- launching children ---------------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "OFFLINE_KDF_TARGET_S": "0",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    env.update(extra)
    return env


class Spawned:
    """A child started with ``subprocess`` (no model needed: grants, audit appends, rekey)."""

    def __init__(self, op: str, vault: Path, ack: Path, seed: int, params: dict[str, Any] | None = None):
        self.ack = ack
        log = open(f"{ack}.log", "wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE),
                "child",
                op,
                str(vault),
                str(ack),
                str(seed),
                json.dumps(params or {}),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(),
        )
        log.close()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)


class Zygote:
    """A fork server with the embedding model loaded; ``fork`` returns a :class:`Forked` child."""

    def __init__(self, heavy: bool = True) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE), "zygote" if heavy else "zygote-light"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            env=child_env(),
            text=True,
            bufsize=1,
        )
        line = self.proc.stdout.readline()
        if line.strip() != "zygote ready":
            raise RuntimeError(f"zygote failed to start: {line!r}")

    def fork(
        self,
        op: str,
        vault: Path,
        ack: Path,
        seed: int,
        params: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
    ) -> Forked:
        req = {
            "op": op,
            "vault": str(vault),
            "ack": str(ack),
            "seed": seed,
            "params": params or {},
            "env": env or {},
        }
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        pid = int(self.proc.stdout.readline())
        return Forked(pid, ack)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.stdin.close()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Forked:
    def __init__(self, pid: int, ack: Path):
        self.pid, self.ack = pid, ack
        self.rc_file = Path(f"{ack}.rc")

    def alive(self) -> bool:
        return not self.rc_file.exists()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.alive():
                os.kill(self.pid, signal.SIGKILL)
        self.wait(30)

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while not self.rc_file.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"child {self.pid} still running")
            time.sleep(0.02)
        return int(self.rc_file.read_text())


_zygotes: dict[bool, Zygote] = {}


def zygote(heavy: bool = True) -> Zygote:
    """The process-wide fork server (started on first use, stopped at interpreter exit).

    ``heavy``: with the embedding model loaded (ingest, search); else only the vault code, which
    makes a trial of grants, audit appends or rekey cost a fork instead of a Python start-up.
    """
    z = _zygotes.get(heavy)
    if z is None or z.proc.poll() is not None:
        import atexit

        z = _zygotes[heavy] = Zygote(heavy)
        atexit.register(z.close)
    return z


# -- checkers -------------------------------------------------------------------------------------


def check_no_half_documents(conn: Any) -> dict[str, int]:
    """Every document has chunks 0..n-1; every chunk has its vector and FTS row; counts match."""
    docs = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
    orphans = conn.execute(
        "SELECT count(*) FROM chunks WHERE doc_id NOT IN (SELECT id FROM documents)"
    ).fetchone()[0]
    assert orphans == 0, f"{orphans} chunks without a document"
    empty = conn.execute(
        "SELECT count(*) FROM documents WHERE id NOT IN (SELECT doc_id FROM chunks)"
    ).fetchone()[0]
    assert empty == 0, f"{empty} documents without chunks"
    for doc_id, n, lo, hi in conn.execute(
        "SELECT doc_id, count(*), min(ord), max(ord) FROM chunks GROUP BY doc_id"
    ):
        assert (lo, hi) == (0, n - 1), f"document {doc_id}: chunk ords {lo}..{hi} for {n} chunks"
    chunk_ids = {r[0] for r in conn.execute("SELECT id FROM chunks")}
    has_vec = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'vec_chunks'").fetchone() is not None
    if has_vec:
        vec = dict(conn.execute("SELECT rowid, doc_id FROM vec_chunks").fetchall())
        assert set(vec) == chunk_ids, f"vectors {len(vec)} vs chunks {len(chunk_ids)}"
        for cid, doc_id in conn.execute("SELECT id, doc_id FROM chunks"):
            assert vec[cid] == doc_id, f"vector {cid} belongs to document {vec[cid]}, chunk to {doc_id}"
    else:
        assert not chunk_ids, "chunks but no vector table"
    # FTS5 compares its index with the content table and raises on any difference.
    conn.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('integrity-check')")
    fts = (
        conn.execute("SELECT count(*) FROM chunks_fts_docsize").fetchone()[0]
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'chunks_fts_docsize'").fetchone()
        else len(chunk_ids)
    )
    assert fts == len(chunk_ids), f"FTS rows {fts} vs chunks {len(chunk_ids)}"
    dangling = conn.execute(
        "SELECT count(*) FROM doc_subjects WHERE doc_id NOT IN (SELECT id FROM documents)"
    ).fetchone()[0]
    assert dangling == 0, "subjects of missing documents"
    return {"documents": docs, "chunks": len(chunk_ids)}


def check_vault_healthy(vault_dir: Path, users: tuple[str, ...] = ("alice",)) -> dict[str, Any]:
    """Open as each user; as alice: ``check_vault``, audit verify, no half documents, no orphan files."""
    from offline.audit.verify import verify_chain
    from offline.vault import collections as C
    from offline.vault import open_session
    from offline.vault.maintenance import check_vault

    info: dict[str, Any] = {}
    for user in users:
        open_session(vault_dir, user, PASSPHRASES[user]).close()
    s = open_session(vault_dir, "alice", PASSPHRASES["alice"])
    try:
        check_vault(s)
        info["audit_entries"] = verify_chain(s).entries
        files = {r[0] for r in s.db.execute("SELECT file FROM collections")}
        on_disk = {p.name for p in (vault_dir / "collections").iterdir()}
        assert on_disk == files, f"collection files {sorted(on_disk)} vs catalog {sorted(files)}"
        live = json.loads((vault_dir / "header.json").read_text())["db_file"]
        assert {p.name for p in vault_dir.glob("vault-*.db*")} <= {live, f"{live}-wal", f"{live}-shm"}
        for name in C.readable_collections(s):
            info[name] = check_no_half_documents(C.open_collection(s, name).conn)
    finally:
        s.close()
    return info


def flip_byte(path: Path, offset: int | None = None) -> int:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if offset is None else offset
    data[at] ^= 0x5A
    path.write_bytes(bytes(data))
    return at


# -- child operations -----------------------------------------------------------------------------


def _session(vault: str, user: str = "alice"):
    from offline.vault import open_session

    return open_session(Path(vault), user, PASSPHRASES[user])


def op_audit(vault: str, ack: Acker, rng: random.Random, params: dict[str, Any]) -> None:
    """Append audit entries as fast as possible, acknowledging each returned (committed) one."""
    s = _session(vault)
    ack.say("ready")
    tag = params["tag"]
    for n in range(10**9):
        ack.say("begin", {"n": n})
        e = s.audit("hostile.append", n=n, tag=tag, pad="x" * rng.randint(0, 3000))
        ack.say("ack", {"n": n, "seq": e.seq, "hash": e.hash})


def op_grants(vault: str, ack: Acker, rng: random.Random, params: dict[str, Any]) -> None:
    """Grant, revoke (with key rotation) and write rows over a pool of collections."""
    from offline.vault import collections as C
    from offline.vault.db import transaction

    s = _session(vault)
    pool = params["collections"]
    ack.say("ready")
    for n in range(10**9):
        coll = rng.choice(pool)
        held = s.db.execute(
            "SELECT g.perm FROM grants g JOIN collections c ON c.id = g.collection_id"
            " WHERE c.name = ? AND g.user = 'bob'",
            (coll,),
        ).fetchone()
        choice = rng.random()
        if choice < 0.35:
            op = {"op": "put", "collection": coll, "text": f"{params['tag']}-row-{n}"}
        elif choice < 0.65 or held is None:
            op = {"op": "grant", "collection": coll, "perm": rng.choice(["read", "write"])}
        else:
            op = {"op": "revoke", "collection": coll}
        ack.say("begin", op)
        if op["op"] == "put":
            h = C.open_collection(s, coll, "write")
            with transaction(h.conn):
                h.conn.execute(
                    "INSERT INTO meta(key, value) VALUES (?, ?)", (f"row:{op['text']}", op["text"])
                )
        elif op["op"] == "grant":
            C.grant(s, coll, "bob", op["perm"])
        else:
            C.revoke(s, coll, "bob")
        ack.say("ack", op)


def op_rekey(vault: str, ack: Acker, rng: random.Random, params: dict[str, Any]) -> None:
    from offline.vault.maintenance import rekey_vault

    s = _session(vault)
    ack.say("ready")
    for n in range(10**9):
        ack.say("begin", {"n": n})
        out = rekey_vault(s)
        ack.say("ack", {"n": n, "db_file": out["db_file"]})


def doc_text(key: str, version: Any, words: int) -> str:
    """A document whose marker words are unique to (key, version), padded with prose."""
    filler = (
        "The retention schedule for clinical records is reviewed every quarter by the records office. "
        "Each request is logged, and the reviewer signs the register before archiving. "
    ).split()
    body = " ".join(filler[i % len(filler)] for i in range(words))
    m = marker(key, version)
    return f"Document {key} version {version} {m}.\n\n{body}\n\nClosing note {m}."


def marker(key: str, version: Any) -> str:
    """One FTS token (letters and digits only) unique to a document version."""
    return f"marker{key}v{version}".replace("_", "x").replace("-", "x")


def op_ingest(vault: str, ack: Acker, rng: random.Random, params: dict[str, Any]) -> None:
    """Add, update and remove documents through the real ingest pipeline; ack each committed one."""
    import hashlib

    from offline.ingest import ingest_paths
    from offline.ingest.docs import remove_document
    from offline.vault.collections import open_collection

    s = _session(vault, params.get("user", "alice"))
    coll, src, tag = params["collection"], Path(params["src"]), params["tag"]
    src.mkdir(parents=True, exist_ok=True)
    only_add = params.get("only_add", False)
    ack.say("ready")
    for n in range(params.get("ops", 10**9)):
        h = open_collection(s, coll, "write")
        current = sorted(r[0] for r in h.conn.execute("SELECT source FROM documents"))
        choice = rng.random()
        if only_add or choice < 0.55 or not current:
            batch = []
            for j in range(rng.randint(1, 3)):
                key = f"{tag}_{n}_{j}"
                path = src / f"{key}.txt"
                text = doc_text(key, 1, rng.randint(40, params.get("max_words", 900)))
                path.write_text(text)
                batch.append(
                    {
                        "source": str(path.resolve()),
                        "sha256": hashlib.sha256(text.encode()).hexdigest(),
                        "marker": marker(key, 1),
                    }
                )
            op = {"op": "add", "docs": batch}
            ack.say("begin", op)
        elif choice < 0.85:
            source = rng.choice(current)
            key, version = Path(source).stem, f"{tag}n{n}"
            text = doc_text(key, version, rng.randint(40, params.get("max_words", 900)))
            op = {
                "op": "update",
                "docs": [
                    {
                        "source": source,
                        "sha256": hashlib.sha256(text.encode()).hexdigest(),
                        "marker": marker(key, version),
                    }
                ],
            }
            ack.say("begin", op)
            Path(source).write_text(text)
        else:
            op = {"op": "remove", "docs": [{"source": rng.choice(current)}]}
            ack.say("begin", op)
            remove_document(s, coll, op["docs"][0]["source"])
            ack.say("ack", op)
            continue

        pending = list(op["docs"])

        # pending and op are bound as defaults (B023); the closure only runs within this iteration anyway.
        def progress(
            event: str, *, pending: list[dict[str, Any]] = pending, op: dict[str, Any] = op, **info: Any
        ) -> None:
            # Called right after each document's transaction commits: acknowledge it there.
            if event == "file" and info.get("status") in ("added", "updated"):
                done = next(d for d in pending if d["source"] == info["path"])
                pending.remove(done)
                ack.say("ack", {"op": op["op"], "docs": [done]})
                if pending:
                    ack.say("begin", {"op": op["op"], "docs": list(pending)})

        report = ingest_paths(s, [d["source"] for d in op["docs"]], coll, progress=progress)
        if report["failed"]:
            ack.say("error", {"op": op["op"], "failed": report["failed"]})
            raise SystemExit(3)


def op_search(vault: str, ack: Acker, rng: random.Random, params: dict[str, Any]) -> None:
    """Search (and list documents) in a loop while others write; optionally ask with the real model."""
    from offline.ingest.docs import list_documents
    from offline.retrieval import search

    s = _session(vault, params.get("user", "alice"))
    ack.say("ready")
    deadline = time.monotonic() + params.get("seconds", 600)
    stop = Path(params["stop"]) if params.get("stop") else None
    n = 0
    while time.monotonic() < deadline and not (stop is not None and stop.exists() and n >= 3):
        q = rng.choice(["retention schedule", "records office register", "clinical review quarter"])
        ack.say("begin", {"op": "search", "n": n})
        hits = search(s, q, collections=[params["collection"]], k=5).hits
        docs = list_documents(s, [params["collection"]])
        ack.say("ack", {"op": "search", "n": n, "hits": len(hits), "docs": len(docs)})
        n += 1
    if params.get("ask"):
        from offline.rag.answer import answer

        ack.say("begin", {"op": "ask"})
        ans = answer(
            s,
            "How often is the retention schedule reviewed?",
            collections=[params["collection"]],
            max_tokens=16,
            min_score=0.0,
        )
        ack.say("ack", {"op": "ask", "refused": ans.refused, "sources": len(ans.sources)})


def op_writer(vault: str, ack: Acker, rng: random.Random, params: dict[str, Any]) -> None:
    """Write rows into a collection and audit entries until killed (leaves -wal files behind)."""
    from offline.vault.collections import open_collection
    from offline.vault.db import transaction

    s = _session(vault)
    h = open_collection(s, params["collection"], "write")
    ack.say("ready")
    for n in range(10**9):
        ack.say("begin", {"n": n})
        with transaction(h.conn):
            h.conn.execute("INSERT INTO meta(key, value) VALUES (?, ?)", (f"row:w{n}", f"written {n}"))
        s.audit("hostile.write", n=n)
        ack.say("ack", {"n": n})


def op_measure(vault: str, ack: Acker, rng: random.Random, params: dict[str, Any]) -> None:
    """One library call (ingest a folder, or ask), then report its outcome and this process's peak RSS.

    The child is forked from the zygote, so its resident set starts at the zygote's (models loaded);
    ``rss_start_mib`` is taken first so the growth caused by the call itself is visible too.
    """
    import resource

    from offline.errors import OfflineError

    def peak() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    s = _session(vault, params.get("user", "alice"))
    start = peak()
    ack.say("ready")
    out: dict[str, Any] = {"rss_start_mib": round(start)}
    try:
        if params["action"] == "ingest_folder":
            from offline.ingest import ingest_paths

            report = ingest_paths(s, [params["folder"]], params["collection"])
            out.update(
                added=len(report["added"]),
                failed=len(report["failed"]),
                skipped=len(report["skipped"]),
                seconds=report.get("seconds"),
            )
        else:
            from offline.rag.answer import answer

            ans = answer(
                s,
                params["question"],
                collections=params.get("collections"),
                mode=params["mode"],
                min_score=0.0,
                max_tokens=16,
            )
            out.update(refused=ans.refused)
    except OfflineError as exc:
        out.update(error=str(exc), exit_code=exc.exit_code)
    out["peak_rss_mib"] = round(peak())
    ack.say("ack", out)


OPS = {
    "audit": op_audit,
    "grants": op_grants,
    "rekey": op_rekey,
    "ingest": op_ingest,
    "search": op_search,
    "writer": op_writer,
    "measure": op_measure,
}


def run_child(op: str, vault: str, ack_path: str, seed: int, params: dict[str, Any]) -> int:
    ack = Acker(ack_path)
    try:
        OPS[op](vault, ack, random.Random(seed), params)
    except SystemExit as exc:
        return int(exc.code or 0)
    except BaseException as exc:
        ack.say("error", {"type": exc.__class__.__name__, "message": str(exc)[:500]})
        traceback.print_exc()
        return 1
    return 0


def zygote_main(heavy: bool) -> None:
    """Load the modules (and the model, if ``heavy``) once, then fork one child per request line."""
    import offline.audit.verify  # noqa: F401
    import offline.vault.maintenance  # noqa: F401

    if heavy:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import torch

        torch.set_num_threads(1)  # no OpenMP pool in the parent: forked children must not inherit one
        import offline.ingest  # noqa: F401
        import offline.rag.answer  # noqa: F401
        import offline.retrieval  # noqa: F401
        from offline.retrieval.embed import get_embedder

        get_embedder()
    print("zygote ready", flush=True)
    children: dict[int, str] = {}
    stdin = sys.stdin
    while True:
        ready, _, _ = select.select([stdin], [], [], 0.05)
        _reap(children)
        if not ready:
            continue
        line = stdin.readline()
        if not line:
            break
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child: fresh process image in all but memory
            rc = 1
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                log = os.open(req["ack"] + ".log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                os.dup2(log, 1)
                os.dup2(log, 2)
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                os.environ.update(req["env"])
                sys.stdout = os.fdopen(1, "w", buffering=1)
                sys.stderr = os.fdopen(2, "w", buffering=1)
                rc = run_child(req["op"], req["vault"], req["ack"], req["seed"], req["params"])
            finally:
                os._exit(rc)
        children[pid] = req["ack"]
        print(pid, flush=True)
    while children:
        _reap(children, block=True)


def _reap(children: dict[int, str], block: bool = False) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        ack = children.pop(pid, None)
        if ack is None:
            continue
        rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        tmp = f"{ack}.rc.tmp"
        Path(tmp).write_text(str(rc))
        os.replace(tmp, f"{ack}.rc")


if __name__ == "__main__":
    if sys.argv[1] in ("zygote", "zygote-light"):
        zygote_main(sys.argv[1] == "zygote")
    elif sys.argv[1] == "child":
        _, _, op, vault, ack_path, seed, params = sys.argv
        sys.exit(run_child(op, vault, ack_path, int(seed), json.loads(params)))
    else:
        sys.exit(f"unknown mode {sys.argv[1]!r}")
