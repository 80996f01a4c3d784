"""Train -> GGUF LoRA -> llama.cpp, on a tiny random llama GGUF the test writes (and once on SmolLM2, slow).

The check that matters: llama.cpp serving base GGUF + exported adapter computes the same logits as
PEFT on the transformers-loaded base. A wrong tensor name, a transposed A/B, a missing q/k row
permutation or a wrong alpha/r scale each shows up as a large difference.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from offline.errors import UsageError

REPO = Path(__file__).resolve().parent.parent
DONOR = REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT = "The quick brown fox jumps over the lazy dog. Patients were seen on 3 May; notes follow."

pytestmark = pytest.mark.skipif(
    not DONOR.is_file(), reason="default model file missing (offline models fetch)"
)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    from offline.finetune.tiny_base import write_tiny_llama_gguf

    return write_tiny_llama_gguf(tmp_path_factory.mktemp("tiny") / "tiny-llama.gguf", DONOR)


def _llama_logits(model: Path, ids: list[int], lora: Path | None):
    import numpy as np
    from llama_cpp import Llama

    kw = {"lora_path": str(lora)} if lora else {}
    # f32 KV cache: the default f16 cache alone costs ~1e-2 on these logits.
    llm = Llama(str(model), n_ctx=128, logits_all=True, verbose=False, n_threads=2, type_k=0, type_v=0, **kw)
    llm.eval(ids)
    out = np.array(llm.scores[: len(ids)])
    llm.close()
    return out


def _peft_vs_llama(
    base_path: Path, tmp: Path, targets: list[str], *, rank: int = 4, alpha: float = 8.0, dtype: str = "f32"
):
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    from offline.finetune.base import load_base, resolve_base, target_modules
    from offline.finetune.export_gguf import check_targets, write_lora_gguf

    base = resolve_base(str(base_path))
    model, tok = load_base(base)
    modules = target_modules(model, targets)
    check_targets(modules, base.info)
    pm = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, target_modules=modules, lora_dropout=0.0))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:  # PEFT starts B at zero: make the adapter actually do something
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    pm.eval()
    out = write_lora_gguf(
        tmp / "adapter.gguf",
        get_peft_model_state_dict(pm, save_embedding_layers=False),
        base.info,
        alpha=alpha,
        dtype=dtype,
    )
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        ref = pm(torch.tensor([ids])).logits[0].numpy()
        with pm.disable_adapter():
            ref0 = pm(torch.tensor([ids])).logits[0].numpy()
    return ref, ref0, _llama_logits(base_path, ids, out), _llama_logits(base_path, ids, None), out


def test_exported_lora_matches_peft_in_llama_cpp(tiny_base: Path, tmp_path: Path):
    import numpy as np
    from gguf import GGUFReader

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    ref, ref0, got, got0, path = _peft_vs_llama(tiny_base, tmp_path, targets)
    effect = np.abs(ref - ref0).max()
    assert effect > 1.0, "the adapter must change the logits for this check to mean anything"
    assert np.abs(got0 - ref0).max() < 5e-4  # the base itself agrees
    assert np.abs(got - ref).max() < 5e-4, f"llama.cpp+LoRA differs from PEFT by {np.abs(got - ref).max()}"
    r = GGUFReader(str(path))
    assert r.fields["general.type"].contents() == "adapter"
    assert r.fields["adapter.type"].contents() == "lora"
    assert r.fields["adapter.lora.alpha"].contents() == 8.0
    assert r.fields["general.architecture"].contents() == "llama"
    shapes = {t.name: tuple(int(x) for x in reversed(t.shape)) for t in r.tensors}  # numpy order
    assert shapes["blk.0.attn_q.weight.lora_a"] == (4, 64)  # (r, in)
    assert shapes["blk.0.ffn_down.weight.lora_b"] == (64, 4)  # (out, r)
    assert len(shapes) == 2 * 7 * 2


def test_lm_head_on_tied_embeddings_is_refused(tiny_base: Path):
    from offline.finetune.export_gguf import check_targets, read_base_info

    info = read_base_info(tiny_base)
    with pytest.raises(
        UsageError,
        match="LoRA target 'lm_head' has no tensor in the base GGUF "
        "\\(this base ties its output layer to the token embeddings\\)",
    ):
        check_targets(["lm_head"], info)
    check_targets(["model.layers.1.mlp.up_proj"], info)


def _write_data(path: Path, n: int = 24) -> Path:
    rows = [{"prompt": f"What is code {i}?", "completion": f"Code {i} means item {i * 7}."} for i in range(n)]
    rows.append(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
            ]
        }
    )
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_create_interrupt_resume_and_serve(admin_session, cli, tiny_base: Path, tmp_path: Path, monkeypatch):
    """One CLI run straight through; one library run interrupted at step 3 then resumed: same result."""
    import numpy as np
    from llama_cpp import Llama

    from offline.finetune import pipeline, store, train
    from offline.finetune.train import TrainConfig, TrainingInterrupted

    data = _write_data(tmp_path / "train.jsonl")
    args = [
        "--rank",
        "4",
        "--alpha",
        "8",
        "--lr",
        "5e-3",
        "--max-steps",
        "6",
        "--batch-size",
        "4",
        "--eval-split",
        "0.2",
        "--dropout",
        "0.1",
    ]
    r = cli(
        ["--json", "finetune", "create", "straight", "--data", str(data), "--base", str(tiny_base), *args]
    )
    assert r.exit_code == 0, r.stderr
    straight = json.loads(r.stdout)
    assert straight["eval_loss_after"] < straight["eval_loss_before"]
    assert straight["meta"]["steps"] == 6 and len(straight["loss_curve"]) == 6
    assert straight["base_arch"] == "llama" and straight["hyperparameters"]["rank"] == 4

    cfg = TrainConfig(rank=4, alpha=8, lr=5e-3, max_steps=6, batch_size=4, eval_split=0.2, dropout=0.1)
    calls = {"n": 0}
    real = train.label_loss

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2 + 4:  # 1 eval batch (5 items, batch 8) ... then training step 5
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train, "label_loss", flaky)
    with pytest.raises(TrainingInterrupted, match="interrupted at step 4/6; checkpoint kept"):
        pipeline.create_adapter(
            admin_session, "resumed", data=data, base=str(tiny_base), cfg=cfg, progress=False
        )
    monkeypatch.setattr(train, "label_loss", real)
    ck = pipeline.EncryptedCheckpoints(admin_session, "resumed")
    assert ck.exists() and b"lora" not in ck.path.read_bytes()  # sealed safetensors
    with pytest.raises(UsageError, match="left a checkpoint; add resume"):
        pipeline.create_adapter(
            admin_session, "resumed", data=data, base=str(tiny_base), cfg=cfg, progress=False
        )
    info = pipeline.create_adapter(
        admin_session, "resumed", data=data, base=str(tiny_base), cfg=cfg, resume=True, progress=False
    )
    assert info["meta"]["resumed_from_step"] == 4 and not ck.dir.exists()
    assert info["loss_curve"] == straight["loss_curve"]
    assert info["eval_loss_after"] == pytest.approx(straight["eval_loss_after"], abs=1e-5)

    entry = admin_session.db.execute(
        "SELECT payload FROM audit_log WHERE action = 'finetune.create' ORDER BY seq DESC"
    ).fetchone()
    payload = json.loads(entry[0])
    assert payload["adapter_sha256"] == info["sha256"] and payload["dataset_sha256"] == info["dataset_sha256"]
    assert payload["base_sha256"] == info["base_sha256"] and payload["hyperparameters"]["lr"] == 5e-3

    # Served through llama.cpp: the trained adapter loads and changes the output distribution.
    ids = [1, 504, 2365, 6354, 16438]
    with store.open_adapter(admin_session, "resumed") as (path, _):
        llm = Llama(
            str(tiny_base), lora_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2
        )
    assert not path.exists()
    llm.eval(ids)
    tuned = np.array(llm.scores[: len(ids)])
    llm.close()
    assert np.abs(tuned - _llama_logits(tiny_base, ids, None)).max() > 1e-3


@pytest.mark.slow
def test_real_default_base_lora_matches_llama_cpp(tmp_path: Path):
    """SmolLM2 Q4_1: llama.cpp runs quantised matmuls, so compare against its own base-vs-base gap."""
    import numpy as np

    ref, ref0, got, got0, _ = _peft_vs_llama(
        DONOR, tmp_path, ["q_proj", "k_proj", "v_proj", "o_proj"], rank=8, alpha=16, dtype="f16"
    )
    base_gap = np.abs(got0 - ref0).mean()  # Q4_1 matmuls with q8 activations vs dequantised f32: ~0.27
    lora_gap = np.abs(got - ref).mean()
    effect = np.abs(ref - ref0).max()
    assert effect > 10 * base_gap
    # Measured: correct export 0.31 vs base 0.27; without the q/k row permutation it is 1.99.
    assert lora_gap < 1.5 * base_gap, (lora_gap, base_gap)
    # The adapter's own contribution: correct 2.5 of an effect of 20.8; unpermuted 10.7 of 17.8.
    assert np.abs((got - got0) - (ref - ref0)).max() < 0.25 * effect


def _add_docs(admin_session, name: str) -> str:
    """A collection with a "public" and a "secret" document, written straight into its tables."""
    from offline.vault.collections import create_collection, open_collection
    from offline.vault.db import transaction

    cid = create_collection(admin_session, name)["id"]
    h = open_collection(admin_session, name, need="write")
    docs = [
        ("a.txt", "public", ["Ward 3 rounds happen at nine.", "Handover notes go in the blue folder."]),
        ("b.txt", "secret", ["The door code is 4711."]),
    ]
    with transaction(h.conn):
        for i, (src, label, chunks) in enumerate(docs, 1):
            h.conn.execute(
                "INSERT INTO documents(id, source, name, sha256, size, label, ingested_at, ingested_by)"
                " VALUES (?, ?, ?, ?, 1, ?, 'now', 'alice')",
                (i, src, src, "0" * 64, label),
            )
            for o, text in enumerate(chunks):
                h.conn.execute(
                    "INSERT INTO chunks(doc_id, ord, text, token_count) VALUES (?, ?, ?, 5)", (i, o, text)
                )
    return cid


def test_from_collection_records_lineage_and_respects_grants(admin_session, open_as, tiny_base: Path):
    from offline.errors import AccessDenied
    from offline.finetune import store
    from offline.finetune.pipeline import create_adapter
    from offline.finetune.train import TrainConfig
    from offline.vault.collections import grant

    cid = _add_docs(admin_session, "ward")
    grant(admin_session, "ward", "bob", "read", labels=["public"])  # 'secret' documents stay hidden from bob
    bob = open_as("bob")
    cfg = TrainConfig(rank=2, alpha=4, max_steps=1, batch_size=4, eval_split=0.0)
    info = create_adapter(
        bob, "ward-bob", from_collection="ward", base=str(tiny_base), cfg=cfg, progress=False
    )
    assert info["source_doc_ids"] == [
        {"collection": "ward", "collection_id": cid, "doc_ids": [1], "labels": ["public"]}
    ]
    assert info["meta"]["train_examples"] == 2  # the two public chunks, not the secret one
    assert store.adapters_using_document(admin_session, cid, 1) == ["ward-bob"]
    assert store.adapters_using_document(admin_session, cid, 2) == []
    carol = open_as("carol")
    with pytest.raises(AccessDenied):
        create_adapter(carol, "nope", from_collection="ward", base=str(tiny_base), cfg=cfg, progress=False)
    store.mark_tainted(admin_session, "ward-bob", "document 1 erased")
    with pytest.raises(store.AdapterTainted):
        with store.open_adapter(bob, "ward-bob"):
            pass
