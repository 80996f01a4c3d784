"""A tiny random llama GGUF base, for self-tests of the train -> export -> llama.cpp path.

The weights are random (seeded); the tokenizer (vocab, merges, special ids, chat template) is copied
from a real GGUF so llama.cpp and transformers both accept the file. Tensors are written f32 in
llama.cpp's layout: q/k rows in interleaved-RoPE order (``permute_rows``), as convert_hf_to_gguf does.
"""

from __future__ import annotations

from pathlib import Path

from .export_gguf import permute_rows


def _copy_tokenizer(writer, donor: Path) -> int:
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(donor))
    n_vocab = 0
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        value = field.contents()
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, vtype, sub_type=sub)
        if key == "tokenizer.ggml.tokens":
            n_vocab = len(value)
    return n_vocab


def write_tiny_llama_gguf(
    path: str | Path,
    tokenizer_donor: str | Path,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    ffn: int = 128,
    seed: int = 0,
) -> Path:
    """Write a random llama model with the donor's tokenizer to ``path`` (f32, tied embeddings)."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string(gguf.Keys.General.TYPE, "model")
    writer.add_name("tiny-random-llama")
    n_vocab = _copy_tokenizer(writer, Path(tokenizer_donor))
    head_dim = hidden // heads
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    def rand(*shape: int, scale: float = 0.08) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return (1.0 + rng.standard_normal(n) * 0.05).astype(np.float32)

    writer.add_tensor("token_embd.weight", rand(n_vocab, hidden, scale=0.5))
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", norm(hidden))
        writer.add_tensor(
            f"blk.{i}.attn_q.weight", permute_rows(rand(heads * head_dim, hidden), heads, heads)
        )
        writer.add_tensor(
            f"blk.{i}.attn_k.weight", permute_rows(rand(kv_heads * head_dim, hidden), heads, kv_heads)
        )
        writer.add_tensor(f"blk.{i}.attn_v.weight", rand(kv_heads * head_dim, hidden))
        writer.add_tensor(f"blk.{i}.attn_output.weight", rand(hidden, heads * head_dim))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", norm(hidden))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", rand(ffn, hidden))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", rand(ffn, hidden))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", rand(hidden, ffn))
    writer.add_tensor("output_norm.weight", norm(hidden))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
