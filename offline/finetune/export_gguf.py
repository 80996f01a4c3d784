"""Write a PEFT LoRA as a GGUF LoRA adapter that llama.cpp loads on top of the GGUF base.

Layout (what llama.cpp's ``llama_adapter_lora_init`` expects, as written by its
``convert_lora_to_gguf.py``): ``general.type=adapter``, ``adapter.type=lora``,
``adapter.lora.alpha``, ``general.architecture`` = the base's, and for every adapted matrix
``<gguf base name>.lora_a`` stored as (r, in) and ``.lora_b`` as (out, r), names mapped from the
Hugging Face module names through ``gguf.get_tensor_name_map``.

The one subtle part: transformers' GGUF loader un-permutes the rows of ``attn_q``/``attn_k`` for the
``llama`` architecture (llama.cpp stores them in interleaved-RoPE order). The LoRA was trained in
transformers' order, so ``lora_b`` of q/k gets llama.cpp's permutation back; ``lora_a`` acts on the
input side and is unaffected. Other architectures load unpermuted and export as-is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError

# Architectures whose q/k rows transformers' GGUF loader reverse-permutes (LlamaTensorProcessor).
PERMUTED_QK_ARCHS = {"llama"}
_PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")


@dataclass(frozen=True)
class BaseInfo:
    """What the exporter needs to know about the GGUF base."""

    arch: str
    n_blocks: int
    n_head: int
    n_head_kv: int
    tensor_names: frozenset[str]


_READERS: dict[tuple[str, int, int], Any] = {}


def gguf_reader(path: str | Path) -> Any:
    """A parsed ``gguf.GGUFReader``, memoised by (path, size, mtime).

    Parsing a GGUF's metadata costs seconds for a 49k-token vocabulary, and a load would otherwise
    parse the same file four times (our metadata, transformers' config, tokenizer and weights). The
    reader only maps the file read-only, so sharing it is safe; at most two are kept.
    """
    import gguf

    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _READERS:
        if len(_READERS) >= 2:
            _READERS.pop(next(iter(_READERS)))
        _READERS[key] = _ORIGINAL_READER[0](str(p)) if _ORIGINAL_READER else gguf.GGUFReader(str(p))
    return _READERS[key]


_ORIGINAL_READER: list[Any] = []


class shared_readers:
    """Within this block, ``gguf.GGUFReader(path)`` (as transformers calls it) returns the memoised reader."""

    def __enter__(self) -> None:
        import gguf

        if not _ORIGINAL_READER:
            _ORIGINAL_READER.append(gguf.GGUFReader)
        self._prev = gguf.GGUFReader
        gguf.GGUFReader = lambda path, mode="r": (
            gguf_reader(path) if mode == "r" else _ORIGINAL_READER[0](path, mode)
        )

    def __exit__(self, *exc: object) -> None:
        import gguf

        gguf.GGUFReader = self._prev


def read_base_info(gguf_path: str | Path) -> BaseInfo:
    """Architecture, block/head counts and tensor names of a GGUF model file (metadata only)."""
    reader = gguf_reader(gguf_path)

    def field(key: str) -> Any:
        f = reader.fields.get(key)
        if f is None:
            return None
        return f.contents()

    arch = field("general.architecture")
    if not arch:
        raise UsageError(f"{Path(gguf_path).name}: not a GGUF model (no general.architecture)")
    n_head = field(f"{arch}.attention.head_count")
    n_head_kv = field(f"{arch}.attention.head_count_kv") or n_head
    if isinstance(n_head_kv, list):  # some archs store one value per layer
        n_head_kv = max(n_head_kv)
    if isinstance(n_head, list):
        n_head = max(n_head)
    return BaseInfo(
        arch=arch,
        n_blocks=int(field(f"{arch}.block_count") or 0),
        n_head=int(n_head or 0),
        n_head_kv=int(n_head_kv or 0),
        tensor_names=frozenset(t.name for t in reader.tensors),
    )


def _model_arch(arch: str):
    import gguf

    for key, name in gguf.MODEL_ARCH_NAMES.items():
        if name == arch:
            return key
    raise UsageError(f"architecture {arch!r} is not known to the gguf package; cannot export a LoRA for it")


def gguf_tensor_name(hf_module: str, base: BaseInfo) -> str | None:
    """``model.layers.3.self_attn.q_proj`` -> ``blk.3.attn_q.weight`` (None when it does not map)."""
    import gguf

    tmap = gguf.get_tensor_name_map(_model_arch(base.arch), base.n_blocks)
    return tmap.get_name(hf_module + ".weight", try_suffixes=(".weight",))


def check_targets(modules: list[str], base: BaseInfo) -> None:
    """Refuse LoRA targets the base GGUF does not have (e.g. ``lm_head`` on tied embeddings)."""
    for module in modules:
        name = gguf_tensor_name(module, base)
        if name is None or name not in base.tensor_names:
            short = module.rsplit(".", 1)[-1]
            why = " (this base ties its output layer to the token embeddings)" if short == "lm_head" else ""
            raise UsageError(
                f"LoRA target {short!r} has no tensor in the base GGUF{why}; "
                f"choose targets among the base's matrices"
            )


def permute_rows(w, n_head: int, n_head_kv: int | None = None):
    """llama.cpp's q/k row permutation (convert_hf_to_gguf ``LlamaModel.permute``)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def lora_tensors(state: Mapping[str, Any], base: BaseInfo) -> dict[str, Any]:
    """PEFT LoRA state dict -> {gguf tensor name: float32 numpy array} in llama.cpp's layout."""
    import numpy as np

    pairs: dict[str, dict[str, Any]] = {}
    for key, value in state.items():
        m = _PEFT_KEY.match(key)
        if m is None:
            raise UsageError(f"unexpected tensor in LoRA state: {key}")
        pairs.setdefault(m["module"], {})[m["ab"]] = value
    out: dict[str, Any] = {}
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise UsageError(f"LoRA module {module} lacks its A or B matrix")
        name = gguf_tensor_name(module, base)
        if name is None or name not in base.tensor_names:
            check_targets([module], base)
        a = (
            ab["A"].detach().float().cpu().numpy()
            if hasattr(ab["A"], "detach")
            else np.asarray(ab["A"], np.float32)
        )
        b = (
            ab["B"].detach().float().cpu().numpy()
            if hasattr(ab["B"], "detach")
            else np.asarray(ab["B"], np.float32)
        )
        if base.arch in PERMUTED_QK_ARCHS:
            if name.endswith("attn_q.weight"):
                b = permute_rows(b, base.n_head, base.n_head)
            elif name.endswith("attn_k.weight"):
                b = permute_rows(b, base.n_head, base.n_head_kv)
        out[name + ".lora_a"] = np.ascontiguousarray(a, dtype=np.float32)
        out[name + ".lora_b"] = np.ascontiguousarray(b, dtype=np.float32)
    if not out:
        raise UsageError("the LoRA state holds no adapted matrices")
    return out


def write_lora_gguf(
    path: str | Path,
    state: Mapping[str, Any],
    base: BaseInfo,
    *,
    alpha: float,
    name: str = "adapter",
    dtype: str = "f32",
) -> Path:
    """Write ``state`` (PEFT LoRA weights) as a GGUF LoRA adapter at ``path``."""
    import gguf
    import numpy as np

    if dtype not in ("f32", "f16"):
        raise UsageError("adapter dtype must be f32 or f16")
    tensors = lora_tensors(state, base)
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), base.arch)
    writer.add_string(gguf.Keys.General.TYPE, gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.General.NAME, name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    for tname, arr in tensors.items():
        writer.add_tensor(tname, arr.astype(np.float16) if dtype == "f16" else arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
