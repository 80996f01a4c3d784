"""Fine-tuning without a model: data validation, the encrypted adapter store, lineage hooks, CLI errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from offline.errors import AccessDenied, AlreadyExists, IntegrityError, InvalidInput, NotFound
from offline.finetune import data, store

FAKE_GGUF = b"GGUF" + bytes(range(256)) * 4


def _save(session, name="a1", sources=None):
    return store.save_adapter(
        session,
        name,
        FAKE_GGUF,
        base_model="smollm2",
        base_sha256="b" * 64,
        base_arch="llama",
        dataset_sha256="d" * 64,
        hyperparameters={"rank": 8},
        loss_curve=[[1, 2.5], [2, 2.0]],
        eval_loss_before=2.6,
        eval_loss_after=2.1,
        source_doc_ids=sources,
    )


# -- data -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"prompt": "a", "completion": "b"}', "{nope"], "d.jsonl line 2: invalid JSON"),
        (['{"messages": [{"role": "robot", "content": "x"}]}'], "d.jsonl line 1: message 1 has role 'robot'"),
        (
            ['{"messages": [{"role": "user", "content": "x"}]}'],
            "d.jsonl line 1: no non-empty assistant message",
        ),
        (['{"prompt": "a"}'], 'd.jsonl line 1: "prompt" and "completion" must both be strings'),
        (["", '{"text": "x"}'], 'd.jsonl line 2: expected {"messages": [...]}'),
        (["[1, 2]"], "d.jsonl line 1: expected a JSON object"),
        ([""], "d.jsonl: no training examples"),
    ],
)
def test_jsonl_validation_names_the_line(tmp_path: Path, lines, message):
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(InvalidInput) as err:
        data.load_jsonl(f)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_jsonl_formats_and_hash(tmp_path: Path):
    f = tmp_path / "d.jsonl"
    f.write_text(
        '{"prompt": "p", "completion": "c"}\n\n'
        '{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},'
        ' {"role": "assistant", "content": "a"}]}\n'
    )
    ds = data.load_jsonl(f)
    assert [len(e.messages) for e in ds.examples] == [2, 3]
    assert ds.examples[0].messages[1] == {"role": "assistant", "content": "c"}
    import hashlib

    assert ds.sha256 == hashlib.sha256(f.read_bytes()).hexdigest()


def test_split_is_deterministic_and_keeps_one_for_eval():
    train, ev = data.split(list(range(10)), 0.1, seed=3)
    assert len(ev) == 1 and sorted(train + ev) == list(range(10))
    assert data.split(list(range(10)), 0.1, seed=3) == (train, ev)
    assert data.split([1, 2, 3], 0.0, seed=0)[1] == []


# -- store ------------------------------------------------------------------------------------


def test_adapter_is_ciphertext_and_opens_to_a_private_temp_file(admin_session, monkeypatch):
    info = _save(admin_session)
    blob = (admin_session.vault_dir / "adapters" / info["file"]).read_bytes()
    assert b"GGUF" not in blob and len(blob) == len(FAKE_GGUF) + 29
    assert oct((admin_session.vault_dir / "adapters" / info["file"]).stat().st_mode)[-3:] == "600"
    # An anonymous memory file: no name in any folder, reached only through this process's fd.
    with store.open_adapter(admin_session, "a1") as (path, got):
        assert path.read_bytes() == FAKE_GGUF
        assert str(path).startswith("/proc/self/fd/") and os.readlink(path).startswith("/memfd:")
        assert oct(path.stat().st_mode)[-3:] == "600"
        assert got["sha256"] == info["adapter_sha256"] and got["base_sha256"] == "b" * 64
        assert got["name"] == "a1"
    assert not path.exists()  # the descriptor is closed
    # Only where memfd does not exist: a 0600 file in a private 0700 temp dir, removed on exit.
    monkeypatch.delattr(os, "memfd_create")
    with store.open_adapter(admin_session, "a1") as (path, got):
        assert path.read_bytes() == FAKE_GGUF
        assert oct(path.stat().st_mode)[-3:] == "600" and oct(path.parent.stat().st_mode)[-3:] == "700"
    assert not path.exists() and not path.parent.exists()
    with pytest.raises(AlreadyExists):
        _save(admin_session)
    with pytest.raises(NotFound):
        with store.open_adapter(admin_session, "nope"):
            pass


def test_tampered_or_swapped_adapter_fails_integrity(admin_session):
    a = _save(admin_session, "a1")
    b = _save(admin_session, "a2")
    folder = admin_session.vault_dir / "adapters"
    (folder / a["file"]).write_bytes((folder / b["file"]).read_bytes())  # swap: aad binds id and file
    with pytest.raises(IntegrityError):
        with store.open_adapter(admin_session, "a1"):
            pass
    raw = bytearray((folder / b["file"]).read_bytes())
    raw[40] ^= 1
    (folder / b["file"]).write_bytes(bytes(raw))
    with pytest.raises(IntegrityError):
        store.read_adapter_bytes(admin_session, "a2")


def test_taint_refuses_until_an_admin_override(admin_session):
    _save(admin_session)
    store.mark_tainted(admin_session, "a1", "document 3 erased")
    with pytest.raises(store.AdapterTainted, match="tainted \\(document 3 erased\\)"):
        with store.open_adapter(admin_session, "a1"):
            pass
    store.override_taint(admin_session, "a1", "legal hold: reviewed by DPO")
    with store.open_adapter(admin_session, "a1") as (path, info):
        assert info["tainted"] and info["override_reason"] == "legal hold: reviewed by DPO"
    actions = [r[0] for r in admin_session.db.execute("SELECT action FROM audit_log ORDER BY seq")]
    assert {"adapter.taint", "adapter.taint_override", "adapter.use_tainted"} <= set(actions)


def test_collection_trained_adapter_needs_a_read_grant(admin_session, open_as):
    from offline.vault.collections import create_collection

    c = create_collection(admin_session, "clinic")
    _save(
        admin_session,
        "from-clinic",
        sources=[{"collection": "clinic", "collection_id": c["id"], "doc_ids": [3, 5]}],
    )
    _save(admin_session, "plain")
    assert store.adapters_using_document(admin_session, c["id"], 5) == ["from-clinic"]
    assert store.adapters_using_document(admin_session, c["id"], 4) == []
    bob = open_as("bob")
    # A file-trained adapter belongs to its creator until shared with a signed grant.
    assert store.list_adapters(bob) == []
    with pytest.raises(AccessDenied, match="access denied: adapter 'plain'"):
        store.read_adapter_bytes(bob, "plain")
    store.share_adapter(admin_session, "plain", "bob")
    bob = open_as("bob")
    assert [a["name"] for a in store.list_adapters(bob)] == ["plain"]
    with pytest.raises(AccessDenied, match="access denied: adapter 'from-clinic'"):
        with store.open_adapter(bob, "from-clinic"):
            pass
    with store.open_adapter(bob, "plain"):
        pass
    with pytest.raises(NotFound):
        store.share_adapter(admin_session, "plain", "nobody")
    carol = open_as("carol")
    with pytest.raises(AccessDenied):
        store.read_adapter_bytes(carol, "plain")
    with pytest.raises(AccessDenied):
        store.remove_adapter(bob, "plain")  # neither admin nor its creator
    assert store.remove_adapter(admin_session, "plain")["removed"]
    assert not any(
        p.name.endswith(".bin") and "plain" in p.name
        for p in (admin_session.vault_dir / "adapters").iterdir()
    )


def test_checkpoints_are_sealed(admin_session):
    from offline.finetune.pipeline import EncryptedCheckpoints

    ck = EncryptedCheckpoints(admin_session, "run1")
    ck.save(b"safetensors-bytes")
    assert oct(ck.dir.stat().st_mode)[-3:] == "700"
    assert b"safetensors" not in ck.path.read_bytes()
    assert EncryptedCheckpoints(admin_session, "run1").load() == b"safetensors-bytes"
    os.rename(ck.path, EncryptedCheckpoints(admin_session, "run2").path)  # another run's key/aad
    with pytest.raises(IntegrityError):
        EncryptedCheckpoints(admin_session, "run2").load()
    ck.clear()
    assert not ck.dir.exists()


# -- CLI --------------------------------------------------------------------------------------


def test_cli_errors_and_listing(admin_session, cli, tmp_path: Path):
    _save(admin_session)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": 1, "completion": "b"}\n')
    r = cli(["finetune", "create", "x", "--data", str(bad)])
    assert r.exit_code == 1
    assert r.stderr.strip() == 'Error: bad.jsonl line 2: "prompt" and "completion" must both be strings'
    r = cli(["finetune", "create", "x", "--data", str(bad), "--from-collection", "c"])
    assert (
        r.exit_code == 2
        and r.stderr.strip()
        == "Error: give exactly one of --data FILE, --from-collection NAME or --raft --qa FILE"
    )
    r = cli(["finetune", "create", "x", "--data", str(bad), "--rank", "0"])
    assert r.exit_code == 2 and r.stderr.strip() == "Error: --rank must be between 1 and 1024"
    r = cli(["finetune", "create", "a1", "--data", str(bad)])
    assert r.exit_code == 1 and r.stderr.strip() == "Error: adapter 'a1' already exists"
    r = cli(["finetune", "create", "x", "--data", str(tmp_path / "missing.jsonl")])
    assert r.exit_code == 2 and "no such data file" in r.stderr
    r = cli(["finetune", "create", "x", "--data", str(bad)], user="carol")
    assert r.exit_code == 4
    r = cli(["--json", "finetune", "list"])
    assert r.exit_code == 0 and [a["name"] for a in json.loads(r.stdout)] == ["a1"]
    r = cli(["finetune", "show", "a1"])
    assert r.exit_code == 0 and "dataset_sha256: " + "d" * 64 in r.stdout
    r = cli(["finetune", "show", "nope"])
    assert r.exit_code == 1 and r.stderr.strip() == "Error: no such adapter: 'nope'"
    r = cli(["finetune", "rm", "a1"], user="bob")
    assert r.exit_code == 4
    r = cli(["--json", "finetune", "rm", "a1"])
    assert r.exit_code == 0 and json.loads(r.stdout)["removed"] is True
    actions = [r[0] for r in admin_session.db.execute("SELECT action FROM audit_log")]
    assert "finetune.rm" in actions
