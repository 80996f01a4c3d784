"""Bad numbers and undecodable text are usage errors (exit 2, one line), before any work is done.

``nan``, ``inf``, ``-1e309`` (which float() makes -inf) and numbers hundreds of digits long, for
every numeric option of search, ask, eval, compare, finetune, ingest, audit, gdpr and unlock;
and query bytes that are not UTF-8, the way a shell hands them to Python (surrogateescape).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HUGE = "9" * 400
BAD_FLOATS = ["nan", "NaN", "inf", "-inf", "-1e309", "1e400", HUGE, "1e309"]


def _one_line_usage_error(r) -> None:
    assert r.exit_code == 2, (r.exit_code, r.output)
    err = r.stderr.strip()
    assert err.startswith("Error: ") and "\n" not in err, r.output
    assert "internal error" not in r.output and "Traceback" not in r.output
    assert r.stdout == "", r.stdout  # nothing was answered or searched first


def _cases(tmp_path: Path) -> list[list[str]]:
    squad = tmp_path / "squad.json"
    squad.write_text('{"data": []}')
    beir = tmp_path / "beir"
    beir.mkdir(exist_ok=True)
    train = tmp_path / "train.jsonl"
    train.write_text('{"prompt": "a", "completion": "b"}\n')
    cmp_ = ["compare", "--qa", str(squad), "-c", "kb", "--out", str(tmp_path / "out")]
    ft = ["finetune", "create", "x", "--data", str(train)]
    cases = []
    for v in BAD_FLOATS:
        cases += [
            ["search", "q", "--rrf-k", v],
            ["search", "q", "--w-dense", v],
            ["search", "q", "--w-bm25", v],
            ["ask", "q", "--min-score", v],
            ["eval", "retrieval", "--beir", str(beir), "--rrf-k", v],
            ["eval", "retrieval", "--beir", str(beir), "--w-bm25", v],
            [*ft, "--lr", v],
            [*ft, "--alpha", v],
            [*ft, "--eval-split", v],
            [*ft, "--dropout", v],
            ["ingest", str(train), "-c", "kb", "--max-mb", v],
            ["ingest", str(train), "-c", "kb", "--timeout", v],
        ]
    for v in [HUGE, "-" + HUGE, "1e3", "nan"]:
        cases += [
            ["search", "q", "-k", v],
            ["ask", "q", "-k", v],
            ["ask", "q", "--max-tokens", v],
            ["eval", "qa", "--squad", str(squad), "--limit", v],
            ["eval", "qa", "--squad", str(squad), "-k", v],
            ["eval", "retrieval", "--beir", str(beir), "--limit", v],
            [*cmp_, "--limit", v],
            [*cmp_, "-k", v],
            [*cmp_, "--max-tokens", v],
            [*cmp_, "--update-steps", v],
            [*ft, "--rank", v],
            [*ft, "--epochs", v],
            [*ft, "--max-steps", v],
            [*ft, "--batch-size", v],
            [*ft, "--max-len", v],
            [*ft, "--seed", v],
            ["audit", "tail", "-n", v],
            ["gdpr", "retention", "set", "--label", "phi", "--days", v],
        ]
    cases += [["unlock", "--idle", HUGE], ["unlock", "--idle", "1e400s"]]
    return cases


def test_every_numeric_option_refuses_bad_numbers(admin_session, cli, tmp_path):
    cases = _cases(tmp_path)
    assert len(cases) > 150
    for args in cases:
        r = cli(args)
        try:
            _one_line_usage_error(r)
        except AssertionError as exc:
            raise AssertionError(f"{args}: {exc}") from None


def test_ask_with_an_infinite_floor_answers_nothing_and_audits_nothing(admin_session, cli, tmp_path):
    from offline.errors import UsageError
    from offline.rag import answer

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("The Zephyr ward moved to building 7 in 2021.")
    assert cli(["collections", "create", "shared"]).exit_code == 0
    assert cli(["ingest", str(tmp_path / "d"), "-c", "shared"]).exit_code == 0
    before = admin_session.db.execute("SELECT count(*) FROM audit_log").fetchone()[0]
    r = cli(["ask", "Where is the Zephyr ward?", "-c", "shared", "--min-score", "-1e309"])
    _one_line_usage_error(r)
    # The library checks too, before retrieving anything (no search, no ask entry).
    for bad in (float("-inf"), float("nan"), float("inf"), 1e300):
        with pytest.raises(UsageError, match="^min_score must be"):  # a parameter, not a flag
            answer(admin_session, "Where is the Zephyr ward?", collections=["shared"], min_score=bad)
    after = admin_session.db.execute("SELECT count(*) FROM audit_log").fetchone()[0]
    assert after == before
    # A sane value still answers.
    r = cli(["ask", "Where is the Zephyr ward?", "-c", "shared", "--min-score", "-1", "--max-tokens", "8"])
    assert r.exit_code == 0, r.output


def test_undecodable_query_bytes_are_a_usage_error(admin_session, cli):
    for args in (
        ["search", "caf\udcff"],
        ["ask", "caf\udcff"],
        ["search", "q", "--label", "\udcfe"],
        ["gdpr", "erase", "--subject", "p\udcff", "--yes"],
    ):
        r = cli(args)
        _one_line_usage_error(r)
        assert "not valid UTF-8" in r.stderr
    from offline.errors import UsageError
    from offline.retrieval import search

    with pytest.raises(UsageError, match="not valid UTF-8"):
        search(admin_session, "caf\udcff")


def test_real_process_with_raw_bytes_and_minus_1e309(admin_session, vault_dir):
    """The console entry point itself, with argv bytes as a shell passes them."""
    env = {
        **os.environ,
        "OFFLINE_VAULT": str(vault_dir),
        "OFFLINE_USER": "alice",
        "OFFLINE_PASSPHRASE": "alice-passphrase-1",
        "LC_ALL": "C.UTF-8",
        "PYTHONPATH": str(REPO),
    }
    entry = "from offline.agent.fast import main; main()"
    for argv in (
        [b"search", b"caf\xff\xfe"],
        [b"ask", b"hello", b"--min-score", b"-1e309"],
        [b"search", b"q", b"-k", HUGE.encode()],
    ):
        out = subprocess.run(
            [sys.executable, "-c", entry, *argv], capture_output=True, env=env, cwd=REPO, timeout=120
        )
        err = out.stderr.decode("utf-8", "replace").strip()
        assert out.returncode == 2, (argv, err)
        assert err.startswith("Error: ") and "\n" not in err and "internal error" not in err, err
        assert out.stdout == b""
