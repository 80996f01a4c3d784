"""A tiny real GGUF LoRA for the default SmolLM2 base, written with the gguf package (tests only)."""

from __future__ import annotations

from pathlib import Path


def tiny_smollm2_lora(path: Path) -> bytes:
    """Rank 2 on layer 0's q/v projections, random non-zero A and B; returns the file's bytes."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_string(gguf.Keys.General.TYPE, gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 4.0)
    for t, out in (("attn_q", 576), ("attn_v", 192)):
        w.add_tensor(f"blk.0.{t}.weight.lora_a", rng.normal(0, 0.05, (2, 576)).astype(np.float32))
        w.add_tensor(f"blk.0.{t}.weight.lora_b", rng.normal(0, 0.05, (out, 2)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def tiny_raft_adapter(session, name: str, qa_file: Path, collection: str, folder: Path, donor: Path) -> Path:
    """A RAFT adapter trained for one step (rank 2) on a tiny random llama with ``donor``'s tokenizer,
    through the real ``finetune create --raft`` pipeline; returns the tiny model's path (its base)."""
    from offline.finetune.pipeline import create_adapter
    from offline.finetune.tiny_base import write_tiny_llama_gguf
    from offline.finetune.train import TrainConfig

    tiny = write_tiny_llama_gguf(folder / "tiny.gguf", donor)
    create_adapter(
        session,
        name,
        raft_qa=qa_file,
        raft_collection=collection,
        base=str(tiny),
        raft_k=2,
        cfg=TrainConfig(max_steps=1, rank=2, eval_split=0.0, seed=0),
        progress=False,
    )
    return tiny
