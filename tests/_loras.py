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
