"""The retrieval-trained reader: pinned, loaded and used by default for rag; the plain model one
flag away; a reader file that does not match its pin fails closed."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest

from offline.rag import answer

REPO = Path(__file__).resolve().parent.parent
SMOL_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
FACTS = {
    "retention.txt": "Harbourside Family Clinic keeps adult patient records for 8 years after the "
    "patient's last visit. Vaccination records are kept for 30 years."
}


def _spec() -> dict:
    return tomllib.loads((REPO / "models" / "manifest.toml").read_text())["reader"][0]


def test_reader_is_pinned_with_lineage_and_licence():
    from offline.models.hashing import sha256_file

    spec = _spec()
    assert spec["base"] == "smollm2-135m-instruct" and spec["base_sha256"] == SMOL_SHA
    adapter = REPO / "models" / spec["adapter"]
    assert adapter.stat().st_size < 8 * 2**20 and sha256_file(adapter) == spec["adapter_sha256"]
    lineage = json.loads((REPO / "models" / spec["lineage"]).read_text())
    assert lineage["sha256"] == spec["adapter_sha256"] and "CC BY-SA 4.0" in lineage["data"]["licence"]
    assert lineage["data"]["held_out_articles"] and not set(lineage["data"]["held_out_articles"]) & set(
        lineage["data"]["train_articles"]
    )
    assert "CC BY-SA 4.0" in spec["licence"] and lineage["seed"] == 0


@pytest.fixture
def kb(admin_session, tmp_path):
    from offline.ingest import ingest_paths
    from offline.vault.collections import create_collection

    (tmp_path / "docs").mkdir()
    for name, text in FACTS.items():
        (tmp_path / "docs" / name).write_text(text)
    create_collection(admin_session, "kb")
    ingest_paths(admin_session, [tmp_path / "docs"], "kb")
    return admin_session


def test_ask_uses_the_reader_by_default_and_cites(kb, cli):
    from offline.audit.chain import iter_entries

    spec = _spec()
    r = cli(["--json", "ask", "How long are adult patient records kept?", "-c", "kb"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["reader"]["name"] == spec["name"] and d["reader"]["adapter_sha256"] == spec["adapter_sha256"]
    merged = d["reader"]["merged"]
    assert d["model"]["sha256"] == (spec["merged_sha256"] if merged else SMOL_SHA)
    assert "8 years" in d["answer"] and "[1]" in d["answer"]  # the reader writes its citation itself
    assert d["quote"]["text"].startswith("Harbourside Family Clinic keeps adult patient records for 8 years")
    e = [x.payload for x in iter_entries(kb.db, "action = ?", ("ask",))][-1]
    assert e["reader"]["name"] == spec["name"] and e["support"] == d["support"] == 1.0
    plain = json.loads(
        cli(["--json", "ask", "How long are adult patient records kept?", "-c", "kb", "--no-reader"]).output
    )
    assert plain["reader"] is None and plain["model"]["sha256"] == SMOL_SHA


def test_reader_file_that_does_not_match_its_pin_fails_closed(kb, tmp_path, monkeypatch):
    from offline.errors import ModelIntegrityError
    from offline.models import readers as reader  # where the pinned reader files are found

    spec = _spec()
    bad = tmp_path / spec["adapter"]
    shutil.copy(REPO / "models" / spec["adapter"], bad)
    with bad.open("r+b") as f:
        f.seek(-16, 2)
        f.write(b"\x00" * 16)
    monkeypatch.setattr(reader, "find_file", lambda name: bad if name == spec["adapter"] else None)
    with pytest.raises(ModelIntegrityError, match="pinned sha256"):
        answer(kb, "How long are adult patient records kept?", collections=["kb"])
    monkeypatch.setattr(reader, "find_file", lambda name: None)
    from offline.errors import NotFound

    with pytest.raises(NotFound, match="pass no_reader"):  # the CLI shows --no-reader
        answer(kb, "How long are adult patient records kept?", collections=["kb"])
    assert (
        answer(kb, "How long are adult patient records kept?", collections=["kb"], reader=False).reader
        is None
    )


def test_models_verify_rehashes_the_reader_files(tmp_path, monkeypatch):
    from offline.errors import ModelIntegrityError
    from offline.models import readers as reader
    from offline.models import verify_models

    rows = {r["name"]: r["status"] for r in verify_models()}
    assert rows["smollm2-135m-reader (adapter)"] == "ok"
    assert rows["smollm2-135m-reader (merged)"] in ("ok", "not built")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF not the adapter")
    monkeypatch.setattr(reader, "find_file", lambda name: bad)
    with pytest.raises(ModelIntegrityError, match="smollm2-135m-reader"):
        verify_models()
