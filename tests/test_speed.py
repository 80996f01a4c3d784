"""Speed settings that must hold without a benchmark: llama.cpp's thread counts, the torch-free
query path, the loading status line. (The figures themselves come from scripts/bench_ask.py and
scripts/bench_agent.py, never from timed tests.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "sentence_transformers", "llama_cpp")


def _default_gguf() -> Path:
    from offline.llm.resolve import resolve_generate_model

    return Path(resolve_generate_model(None).path)


def _counts(engine) -> tuple[int, int]:
    """The thread counts llama.cpp itself reports for the engine's context."""
    import llama_cpp

    return llama_cpp.llama_n_threads(engine.llm.ctx), llama_cpp.llama_n_threads_batch(engine.llm.ctx)


@pytest.mark.parametrize(("decode", "batch"), [("2", "1"), ("1", "2")])
def test_engine_gets_the_configured_decode_and_batch_threads(monkeypatch, decode, batch):
    from offline.llm import engine as eng

    monkeypatch.setenv("OFFLINE_N_THREADS", decode)
    monkeypatch.setenv("OFFLINE_N_THREADS_BATCH", batch)
    e = eng.load(_default_gguf(), n_ctx=384 + int(decode))  # a context size of its own: a fresh load
    try:
        assert _counts(e) == (int(decode), int(batch))
        assert (e.threads.decode, e.threads.batch) == (int(decode), int(batch))
        g = e.stream_chat([{"role": "user", "content": "Say hi."}], max_tokens=3)
        assert g.tokens >= 1
    finally:
        eng.unload(e)


def test_default_threads_follow_the_measured_rule(monkeypatch):
    from offline.llm import engine as eng
    from offline.llm import threads

    monkeypatch.delenv("OFFLINE_N_THREADS", raising=False)
    monkeypatch.delenv("OFFLINE_N_THREADS_BATCH", raising=False)
    e = eng.load(_default_gguf(), n_ctx=400)
    try:
        assert e.llm._model.n_params() < threads.SMALL_MODEL_PARAMS
        assert _counts(e) == (1, threads.cores())  # small model: one decode thread, prompt on every core
    finally:
        eng.unload(e)
    assert threads.choose(threads.SMALL_MODEL_PARAMS) == threads.Threads(threads.cores(), threads.cores())


def test_settings_file_and_environment_override(monkeypatch, offline_home):
    from offline.llm import threads

    monkeypatch.delenv("OFFLINE_N_THREADS", raising=False)
    monkeypatch.delenv("OFFLINE_N_THREADS_BATCH", raising=False)
    offline_home.mkdir(parents=True, exist_ok=True)
    (offline_home / "config.toml").write_text('n_threads = 3\nn_threads_batch = "5"\n')
    assert threads.choose(10) == threads.Threads(3, 5)
    monkeypatch.setenv("OFFLINE_N_THREADS", "2")  # the environment wins over the file
    assert threads.choose(10) == threads.Threads(2, 5)


@pytest.mark.parametrize("value", ["abc", "0", "-1", "65", "2.5"])
def test_bad_thread_counts_exit_2_before_anything_runs(cli, admin_session, value):
    admin_session.close()
    r = cli(["ask", "anything", "--max-tokens", "4"], env={"OFFLINE_N_THREADS": value})
    assert r.exit_code == 2, r.output
    assert r.stderr.strip() == f"Error: OFFLINE_N_THREADS must be a whole number from 1 to 64, not {value!r}"


def test_bad_thread_count_in_settings_file_exits_2(cli, admin_session, offline_home):
    admin_session.close()
    offline_home.mkdir(parents=True, exist_ok=True)
    (offline_home / "config.toml").write_text("n_threads_batch = 0\n")
    r = cli(["ask", "anything"], env={"OFFLINE_N_THREADS_BATCH": ""})
    assert r.exit_code == 2 and "n_threads_batch in " in r.stderr, r.output


def test_numpy_query_vectors_match_sentence_transformers():
    import numpy as np

    from offline.retrieval.embed import get_embedder
    from offline.retrieval.minilm import MiniLM, supports

    emb = get_embedder()  # sentence-transformers, as ingest uses it
    assert supports(emb.path)
    fast = MiniLM(emb.path, emb.max_tokens)
    texts = [
        "Which region of France is named after the Normans?",
        "Café naïve résumé 北京 😀",
        "x",
        "word " * 400,
        "tabs\tand\nnewlines, [SEP] [CLS] MiXeD CaSe!!!",
    ]
    ours = np.stack([fast.encode_one(t) for t in texts])
    theirs = emb.encode(texts)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() < 1e-5
    assert np.allclose((ours * theirs).sum(1), 1.0, atol=1e-5)


# -- cold commands, each in a fresh process ---------------------------------------------------------

_RUN_CLI = """
import json, sys
from offline.cli import main
try:
    main(sys.argv[1:], prog_name="offline")
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print("MODULES " + json.dumps(heavy), file=sys.stderr)
"""


@pytest.fixture(scope="module")
def small_vault(tmp_path_factory):
    """A vault with one collection of two documents, built in this process."""
    from offline.ingest import ingest_paths
    from offline.vault import create_vault
    from offline.vault.collections import create_collection

    root = tmp_path_factory.mktemp("speed")
    docs = root / "docs"
    docs.mkdir()
    (docs / "normans.txt").write_text("The Normans gave their name to Normandy, a region in France.\n")
    (docs / "rollo.txt").write_text("Rollo was a Viking leader who founded the Duchy of Normandy.\n")
    old = os.environ.get("OFFLINE_KDF_TARGET_S")
    os.environ["OFFLINE_KDF_TARGET_S"] = "0"
    try:
        s = create_vault(root / "vault", "alice", "alice-passphrase-1")
        create_collection(s, "kb")
        ingest_paths(s, [docs], "kb")
        s.close()
    finally:
        if old is None:
            os.environ.pop("OFFLINE_KDF_TARGET_S", None)
        else:
            os.environ["OFFLINE_KDF_TARGET_S"] = old
    return root / "vault"


def _cold(vault: Path, home: Path, *args: str, tty: bool = True) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh process; its stderr is a terminal (a pty) unless ``tty`` is False."""
    import pty
    import threading

    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OFFLINE_VAULT": str(vault),
        "OFFLINE_USER": "alice",
        "OFFLINE_PASSPHRASE": "alice-passphrase-1",
        "OFFLINE_HOME": str(home),
    }
    cmd = [sys.executable, "-c", _RUN_CLI.format(heavy=HEAVY), *args]
    if not tty:
        r = subprocess.run(
            cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
        )
        assert "MODULES " in r.stderr, r.stderr
        return r
    master, slave = pty.openpty()
    p = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL
    )
    os.close(slave)
    err = bytearray()

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed its end
                return
            if not chunk:
                return
            err.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    out, _ = p.communicate(timeout=300)
    reader.join(timeout=10)
    os.close(master)
    stderr = err.decode().replace("\r\n", "\n")
    assert "MODULES " in stderr, stderr
    return subprocess.CompletedProcess(cmd, p.returncode, out.decode(), stderr)


def _modules(r: subprocess.CompletedProcess) -> list[str]:
    return json.loads(r.stderr.split("MODULES ", 1)[1].splitlines()[0])


def test_cold_search_imports_no_torch_and_says_it_is_loading(small_vault, offline_home):
    r = _cold(small_vault, offline_home, "search", "Which region is named after the Normans?", "-c", "kb")
    assert "normans.txt" in r.stdout, r.stdout + r.stderr
    assert _modules(r) == [], "search imported " + ", ".join(_modules(r))
    assert r.stderr.startswith("loading embedding model...\n"), r.stderr
    assert "loading" not in r.stdout


def test_json_output_carries_no_status_line(small_vault, offline_home):
    r = _cold(
        small_vault, offline_home, "--json", "search", "Which region is named after the Normans?", "-c", "kb"
    )
    json.loads(r.stdout)  # stdout is exactly the JSON document; the note went to the terminal
    assert r.stderr.startswith("loading embedding model...\n"), r.stderr
    assert _modules(r) == []


def test_captured_stderr_gets_no_status_line(small_vault, offline_home):
    r = _cold(
        small_vault, offline_home, "search", "Which region is named after the Normans?", "-c", "kb", tty=False
    )
    assert "normans.txt" in r.stdout and "loading" not in r.stderr, r.stderr


def test_cold_ask_loads_llama_but_not_torch(small_vault, offline_home):
    r = _cold(
        small_vault,
        offline_home,
        "ask",
        "Which region is named after the Normans?",
        "-c",
        "kb",
        "--max-tokens",
        "8",
    )
    assert _modules(r) == ["llama_cpp"], r.stderr
    notes = [line for line in r.stderr.splitlines() if line.startswith("loading ")]
    assert notes == ["loading embedding model...", "loading language model..."], r.stderr


def test_help_imports_nothing_heavy(offline_home, tmp_path):
    r = _cold(tmp_path / "none", offline_home, "--help")
    assert "Usage" in r.stdout and _modules(r) == []
