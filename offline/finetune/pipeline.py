"""``offline finetune create``: data -> LoRA training on the GGUF base -> GGUF adapter -> encrypted store."""

from __future__ import annotations

import resource
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

from .. import config, memfile
from ..errors import AccessDenied, AlreadyExists, ParameterError, UsageError
from ..vault import crypto
from ..vault.core import Session, check_name
from . import store
from .train import TrainConfig

CHECKPOINT_FILE = "checkpoint.bin"


class EncryptedCheckpoints:
    """A run's checkpoint, sealed with AES-GCM under a key derived from the vault's adapter root key.

    It lives in ``VAULT/adapters/.runs/NAME/`` (0700); only ciphertext ever touches the disk.
    """

    def __init__(self, session: Session, name: str):
        self.dir = store.runs_dir(session, name)
        self.key = store.checkpoint_key(session, name)
        self.aad = f"offline/v1/checkpoint|{session.vault_id}|{name}".encode()

    @property
    def path(self) -> Path:
        return self.dir / CHECKPOINT_FILE

    def exists(self) -> bool:
        return self.path.is_file()

    def save(self, blob: bytes) -> None:
        config.write_private_file(self.path, crypto.seal(self.key, blob, self.aad))

    def load(self) -> bytes | None:
        if not self.exists():
            return None
        return crypto.unseal(self.key, self.path.read_bytes(), self.aad)

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _build_peft(model: Any, cfg: TrainConfig, base_info: Any) -> Any:
    from peft import LoraConfig, get_peft_model

    from .base import target_modules
    from .export_gguf import check_targets

    modules = target_modules(model, cfg.targets)
    check_targets(modules, base_info)
    lora = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # transformers' deprecation notices are not the user's business
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(model, lora)


def create_adapter(
    session: Session,
    name: str,
    *,
    data: str | Path | None = None,
    from_collection: str | None = None,
    base: str | None = None,
    cfg: TrainConfig | None = None,
    resume: bool = False,
    restart: bool = False,
    device: str | None = None,
    progress: bool = True,
    dtype: str = "f32",
    max_chunks: int | None = None,
    raft_qa: str | Path | None = None,
    raft_collection: str | None = None,
    raft_k: int = 3,
) -> dict[str, Any]:
    """Train a LoRA adapter named ``name`` and store it encrypted with its lineage.

    Exactly one of ``data`` (JSONL), ``from_collection`` (continued training) or ``raft_qa`` (a QA
    file, trained RAFT-style on context retrieved from ``raft_collection`` under the caller's
    grants, :mod:`.raft`) is given. Interrupted runs keep an encrypted checkpoint; ``resume``
    continues it, ``restart`` discards it.
    """
    from . import data as data_mod
    from .base import load_base, pick_device, resolve_base
    from .export_gguf import write_lora_gguf
    from .train import train_lora

    t_start = time.time()
    check_name("adapter", name)
    cfg = cfg or TrainConfig()
    cfg.validate()
    if session.role == "auditor":
        raise AccessDenied("access denied: auditors cannot create adapters")
    if sum(x is not None for x in (data, from_collection, raft_qa)) != 1:
        raise ParameterError(
            "give exactly one of {data} FILE, {from_collection} NAME or {raft} {qa} FILE",
            "data",
            "from_collection",
            "raft",
            "qa",
        )
    if (raft_qa is None) != (raft_collection is None):
        raise ParameterError(
            "{raft} needs both {qa} FILE and {collection} COLLECTION", "raft", "qa", "collection"
        )
    if resume and restart:
        raise ParameterError("{resume} and {restart} exclude each other", "resume", "restart")
    if session.db.execute("SELECT 1 FROM adapters WHERE name = ?", (name,)).fetchone():
        raise AlreadyExists(f"adapter {name!r} already exists")
    ckpt = EncryptedCheckpoints(session, name)
    if restart:
        ckpt.clear()
        ckpt = EncryptedCheckpoints(session, name)
    if ckpt.exists() and not resume:
        raise UsageError.naming(
            "an interrupted run of {name} left a checkpoint; add {resume} to continue it or "
            "{restart} to discard it",
            "resume",
            "restart",
            name=repr(name),
        )
    if resume and not ckpt.exists():
        raise UsageError(f"no checkpoint to resume for {name!r}")
    # Validate data before the (slow) model load: bad input fails fast with nothing written.
    if data is not None:
        dataset = data_mod.load_jsonl(data)
    elif raft_qa is not None:
        from .raft import collection_examples

        dataset = collection_examples(session, raft_qa, raft_collection, k=raft_k, seed=cfg.seed)  # type: ignore[arg-type]
        # Which chunks were read to build the prompts is lineage, and an audited read.
        session.audit(
            "finetune.read_collection",
            severity="notice",
            collection=raft_collection,
            adapter=name,
            recipe="raft",
            chunk_ids=dataset.meta["chunk_ids"],
            examples=dataset.meta["examples"],
            skipped_no_gold=dataset.meta["skipped_no_gold"],
        )
    else:
        dataset = data_mod.load_collection(session, from_collection, max_chunks=max_chunks)  # type: ignore[arg-type]
        session.audit(
            "finetune.read_collection",
            severity="notice",
            collection=from_collection,
            adapter=name,
            documents=dataset.meta.get("documents"),
            chunks=dataset.meta.get("chunks"),
        )
    base_model = resolve_base(base)
    dev = pick_device(device)
    model, tok = load_base(base_model, device=dev)
    import torch

    torch.manual_seed(cfg.seed)  # LoRA A's initialisation draws from the global RNG
    peft_model = _build_peft(model, cfg, base_model.info)
    train_ex, eval_ex = data_mod.split(dataset.examples, cfg.eval_split, cfg.seed)
    train_enc, skipped_t = data_mod.encode_all(tok, train_ex, cfg.max_len)
    eval_enc, skipped_e = data_mod.encode_all(tok, eval_ex, cfg.max_len)
    hp = cfg.to_dict()
    fingerprint = {"dataset_sha256": dataset.sha256, "base_sha256": base_model.sha256, "hyperparameters": hp}
    resume_blob = ckpt.load() if resume else None
    result = train_lora(
        peft_model,
        train_enc,
        eval_enc,
        cfg,
        pad_id=tok.pad_token_id,
        device=dev,
        save=ckpt.save,
        resume_blob=resume_blob,
        fingerprint=fingerprint,
        progress=progress,
    )
    # The exported adapter is plaintext: written to a nameless memory file, never to /dev/shm,
    # so a `finetune create` killed here leaves nothing behind (see offline.memfile).
    with memfile.scratch_path(lambda: store.private_tmp_dir(session), "adapter.gguf") as scratch:
        out = write_lora_gguf(scratch, result.state, base_model.info, alpha=cfg.alpha, name=name, dtype=dtype)
        gguf_bytes = out.read_bytes()
    duration = round(time.time() - t_start, 2)
    peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    meta = {
        "source": dataset.source,
        "train_examples": len(train_enc),
        "eval_examples": len(eval_enc),
        "skipped_examples": skipped_t + skipped_e,
        "steps": result.steps,
        "tokens": result.tokens,
        "tokens_per_s": round(result.tokens_per_s, 1),
        "train_seconds": round(result.train_seconds, 2),
        "duration_s": duration,
        "device": dev,
        "dtype": dtype,
        "resumed_from_step": result.resumed_from,
        "peak_rss_mb": peak_rss_mb,
        "targets_resolved": len(result.state) // 2,
        **({"raft": dataset.meta} if raft_qa is not None else {}),
    }
    info = store.save_adapter(
        session,
        name,
        gguf_bytes,
        base_model=base_model.name,
        base_sha256=base_model.sha256,
        base_arch=base_model.info.arch,
        dataset_sha256=dataset.sha256,
        hyperparameters=hp,
        loss_curve=result.loss_curve,
        eval_loss_before=result.eval_loss_before,
        eval_loss_after=result.eval_loss_after,
        source_doc_ids=dataset.source_doc_ids,
        meta=meta,
    )
    ckpt.clear()
    session.audit(
        "finetune.create",
        adapter=name,
        adapter_id=info["id"],
        hyperparameters=hp,
        dataset_sha256=dataset.sha256,
        dataset_source=dataset.source,
        base_model=base_model.name,
        base_sha256=base_model.sha256,
        adapter_sha256=info["sha256"],
        eval_loss_before=result.eval_loss_before,
        eval_loss_after=result.eval_loss_after,
        final_train_loss=result.loss_curve[-1][1] if result.loss_curve else None,
        steps=result.steps,
        tokens=result.tokens,
        duration_s=duration,
        source_collections=[s["collection"] for s in dataset.source_doc_ids or []],
    )
    return info
