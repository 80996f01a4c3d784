"""Issue 12, limits: a 1 GB file, a folder of many tiny files, a 10k-token question.

Each has a clear outcome and bounded memory. Peak memory is measured with ``resource.getrusage`` in
the child process that does the work (forked with the models already loaded), and "without reading
it" is the bytes the process actually read (``/proc/self/io`` rchar), so nothing here depends on how
fast the machine is.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hostile_helpers import check_vault_healthy, read_acks, record, zygote

# Embedder (torch) + llama.cpp with the small default model stay well under this; the point is that
# the peak does not grow with the input.
RSS_CEILING_MIB = 3000
GROWTH_CEILING_MIB = 1500  # what one call may add on top of the loaded models


def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_one_gigabyte_file_is_refused_without_being_read(admin_session, cli, tmp_path):
    from offline.retrieval.embed import get_embedder
    from offline.vault.collections import create_collection

    create_collection(admin_session, "kb")
    admin_session.close()
    get_embedder()  # loaded first, so the bytes counted below are the ingest's own reads
    folder = tmp_path / "in"
    folder.mkdir()
    big = folder / "huge.txt"
    with open(big, "wb") as f:
        f.truncate(1 << 30)  # sparse: 1 GiB long, no blocks on disk
    (folder / "small.txt").write_text("A normal note about the quarterly retention review.")
    before = _rchar()
    r = cli(["--json", "ingest", str(folder), "-c", "kb"])
    read_mib = (_rchar() - before) / 2**20
    assert r.exit_code == 1 and r.stderr == "Error: 1 file(s) failed; the others were ingested\n", r.output
    report = json.loads(r.stdout)
    (failed,) = report["failed"]
    assert failed["path"].endswith("huge.txt")
    assert failed["reason"] == f"over the size limit ({1 << 30} > {50 * 1024 * 1024} bytes)"
    assert [Path(a["path"]).name for a in report["added"]] == ["small.txt"]
    assert read_mib < 64, f"read {read_mib:.0f} MiB to refuse a 1 GiB file"
    record("limits: 1 GiB sparse file refused by the size limit", 1, 0, read_mib=round(read_mib, 1))


def _measured(vault_dir: Path, tmp_path: Path, name: str, params: dict) -> dict:
    """Run one library call in a fresh child (forked, models already loaded) and read its report."""
    ack = tmp_path / f"{name}.ack"
    child = zygote().fork("measure", vault_dir, ack, 0, params)
    rc = child.wait(3600)
    acks = read_acks(ack)
    assert rc == 0 and acks.acked and not acks.errors, (
        rc,
        acks.errors,
        Path(f"{ack}.log").read_text()[-2000:],
    )
    return acks.acked[-1]


def _tiny_files(admin_session, vault_dir: Path, tmp_path: Path, n: int) -> dict:
    from offline.vault.collections import create_collection

    create_collection(admin_session, "kb")
    admin_session.close()
    folder = tmp_path / "tiny"
    for i in range(n):
        sub = folder / f"d{i // 1000:03d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True)
        (sub / f"n{i}.txt").write_text(f"note {i} ward {i % 97}")
    out = _measured(
        vault_dir, tmp_path, "tiny", {"action": "ingest_folder", "folder": str(folder), "collection": "kb"}
    )
    assert out["added"] == n and out["failed"] == 0 and out["skipped"] == 0, out
    info = check_vault_healthy(vault_dir, ("alice",))
    assert info["kb"]["documents"] == n and info["kb"]["chunks"] == n
    assert out["peak_rss_mib"] < RSS_CEILING_MIB, out
    assert out["peak_rss_mib"] - out["rss_start_mib"] < GROWTH_CEILING_MIB, out
    return {
        "files": n,
        "peak_rss_mib": out["peak_rss_mib"],
        "rss_growth_mib": out["peak_rss_mib"] - out["rss_start_mib"],
        "seconds": out["seconds"],
    }


def test_folder_of_2k_tiny_files(admin_session, vault_dir, tmp_path):
    out = _tiny_files(admin_session, vault_dir, tmp_path, 2000)
    record("limits: folder of tiny files (all ingested, bounded RSS)", 1, 0, **out)


@pytest.mark.slow
def test_folder_of_100k_tiny_files(admin_session, vault_dir, tmp_path):
    out = _tiny_files(admin_session, vault_dir, tmp_path, 100_000)
    record("limits: folder of tiny files (all ingested, bounded RSS)", 1, 0, **out)


SENTENCE = "How often is the retention schedule reviewed by the records office in the Zephyr ward? "


def test_ten_thousand_token_question(admin_session, vault_dir, tmp_path, cli):
    from offline.ingest import ingest_paths
    from offline.llm import engine as eng
    from offline.llm.resolve import resolve_generate_model
    from offline.vault.collections import create_collection

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "policy.txt").write_text("The records office reviews the retention schedule every quarter.")
    create_collection(admin_session, "kb")
    ingest_paths(admin_session, [folder], "kb")
    admin_session.close()
    question = SENTENCE * 560
    engine = eng.load(resolve_generate_model(None).path)
    tokens = engine.count(question)
    assert 9_500 <= tokens <= 12_000, tokens
    # Search: the embedder reads the first 256 word pieces, BM25 the first 32 distinct terms.
    r = cli(["--json", "search", question, "-c", "kb"])
    assert r.exit_code == 0 and json.loads(r.stdout)["hits"], r.output
    # Ask: refused with one clear line and the usage exit code, before any generation.
    r = cli(["--json", "ask", question, "-c", "kb", "--min-score", "0"])
    assert (
        r.exit_code == 2
        and r.output == f"Error: the question is too long for the model's {engine.n_ctx}-token window\n"
    )
    rss = {}
    for mode in ("rag", "base"):
        out = _measured(
            vault_dir,
            tmp_path,
            f"ask-{mode}",
            {
                "action": "ask",
                "question": question,
                "mode": mode,
                "collections": ["kb"] if mode == "rag" else None,
            },
        )
        assert out["exit_code"] == 2 and "too long" in out["error"], out
        assert (
            out["peak_rss_mib"] < RSS_CEILING_MIB
            and out["peak_rss_mib"] - out["rss_start_mib"] < GROWTH_CEILING_MIB
        )
        rss[mode] = {
            "peak_rss_mib": out["peak_rss_mib"],
            "growth_mib": out["peak_rss_mib"] - out["rss_start_mib"],
        }
    record("limits: 10k-token question (clear refusal, bounded RSS)", 3, 0, tokens=tokens, rss=rss)
