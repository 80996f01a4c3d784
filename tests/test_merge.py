"""Merging a GGUF LoRA into its base (offline.finetune.merge): same logits as llama.cpp applying the
adapter, byte-identical on a rebuild, and a Q4_1 merge of the real base that llama.cpp loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from offline.errors import InvalidInput

REPO = Path(__file__).resolve().parent.parent
DONOR = REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
pytestmark = pytest.mark.skipif(
    not DONOR.is_file(), reason="default model file missing (offline models fetch)"
)


def _lora(path: Path, targets: dict[str, tuple[int, int]], scale: float = 0.2) -> Path:
    import gguf
    import numpy as np

    rng = np.random.default_rng(3)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_string(gguf.Keys.General.TYPE, gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 8.0)
    for name, (out, inp) in targets.items():
        w.add_tensor(f"{name}.lora_a", rng.normal(0, scale, (4, inp)).astype(np.float32))
        w.add_tensor(f"{name}.lora_b", rng.normal(0, scale, (out, 4)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _logits(model: Path, lora: Path | None = None):
    import numpy as np
    from llama_cpp import Llama

    kw = {"lora_path": str(lora)} if lora else {}
    llm = Llama(str(model), n_ctx=64, logits_all=True, verbose=False, n_threads=2, type_k=0, type_v=0, **kw)
    ids = llm.tokenize(b"Patients were seen on 3 May; notes follow.", add_bos=False)
    llm.eval(ids)
    out = np.array(llm.scores[: len(ids)])
    llm.close()
    return out


def test_merged_f32_model_computes_what_the_adapter_does(tmp_path: Path):
    import numpy as np

    from offline.finetune.merge import merge_lora
    from offline.finetune.tiny_base import write_tiny_llama_gguf

    base = write_tiny_llama_gguf(tmp_path / "tiny.gguf", DONOR)
    lora = _lora(
        tmp_path / "lora.gguf",
        {
            f"blk.{i}.{t}.weight": (o, 64)
            for i in range(2)
            for t, o in (("attn_q", 64), ("attn_k", 32), ("attn_v", 32), ("attn_output", 64))
        },
    )
    sha = merge_lora(base, lora, tmp_path / "merged.gguf")
    assert merge_lora(base, lora, tmp_path / "again.gguf") == sha  # deterministic: the manifest pins it
    with_lora, merged, plain = _logits(base, lora), _logits(tmp_path / "merged.gguf"), _logits(base)
    assert np.abs(with_lora - plain).max() > 0.1  # the adapter does something
    assert np.abs(merged - with_lora).max() < 1e-3


def test_q4_1_merge_of_the_real_base_loads_and_refuses_foreign_tensors(tmp_path: Path):
    import gguf

    from offline.finetune.merge import merge_lora

    lora = _lora(tmp_path / "lora.gguf", {"blk.0.attn_q.weight": (576, 576)}, scale=0.01)
    out = tmp_path / "merged.gguf"
    merge_lora(DONOR, lora, out)
    r = gguf.GGUFReader(str(out))
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert (
        types["blk.0.attn_q.weight"] == "Q4_1" and 0 < out.stat().st_size - DONOR.stat().st_size < 1024
    )  # the same tensors, three keys more
    assert r.fields["offline.reader.adapter_sha256"].contents()
    assert _logits(out).shape[1] == 49152
    bad = _lora(tmp_path / "bad.gguf", {"blk.99.attn_q.weight": (576, 576)})
    with pytest.raises(InvalidInput, match="not in the base"):
        merge_lora(DONOR, bad, tmp_path / "bad-merged.gguf")
