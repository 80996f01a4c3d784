"""Merge a GGUF LoRA into its GGUF base and re-quantise, with the ``gguf`` package alone.

llama.cpp applies a LoRA at every decode step (two extra small matmuls per adapted projection),
which cut the default model's decode from 43 to 25 tok/s. Folding ``W + (alpha / r) * B @ A`` into
the base weights removes that cost: the merged file is served like any model.

- Only the adapted tensors change; every other tensor is copied byte for byte, and every metadata
  key (tokenizer, chat template, hyperparameters) is copied, plus ``offline.reader.*`` keys that
  name the base and adapter sha256.
- Each adapted tensor is dequantised, the delta added, and quantised again: to the base tensor's
  own type by default, or to ``qtype``. A LoRA delta is small next to a 4-bit grid step, so
  re-quantising to Q4_1 rounds much of it away; Q8_0 keeps it (the attention projections are about
  a third of the weights, so the file grows by a fifth).
- Deterministic: the delta is summed rank by rank in float64 (no BLAS, whose summation order
  varies across CPUs), and nothing time- or host-dependent is written, so ``scripts/setup`` rebuilds
  the same bytes and the manifest can pin their sha256.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import InvalidInput

_REQUANTISABLE = ("F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def lora_pairs(adapter: Path) -> tuple[dict[str, tuple], float]:
    """{base tensor name: (A (r, in), B (out, r))} as float64, and the adapter's alpha."""
    import gguf
    import numpy as np

    r = gguf.GGUFReader(str(adapter))
    f = r.fields.get(gguf.Keys.Adapter.LORA_ALPHA)
    if f is None or r.fields.get(gguf.Keys.Adapter.TYPE) is None:
        raise InvalidInput(f"{adapter.name} is not a GGUF LoRA adapter")
    alpha = float(f.contents())
    parts: dict[str, dict[str, object]] = {}
    for t in r.tensors:
        base, _, ab = t.name.rpartition(".lora_")
        if ab not in ("a", "b"):
            raise InvalidInput(f"{adapter.name}: unexpected tensor {t.name}")
        parts.setdefault(base, {})[ab] = np.asarray(t.data, dtype=np.float64)
    return {n: (p["a"], p["b"]) for n, p in parts.items()}, alpha


def delta(a, b, alpha: float):
    """``(alpha / r) * B @ A`` summed rank by rank in float64 (a fixed order: same bits everywhere)."""
    import numpy as np

    r = a.shape[0]
    out = np.zeros((b.shape[0], a.shape[1]), dtype=np.float64)
    for j in range(r):
        out += np.multiply.outer(b[:, j], a[j, :])
    return out * (alpha / r)


def target_types(qtype: str | None) -> dict[str, str]:
    """``"Q8_0"`` (every merged tensor) or ``"attn_v:Q8_0,attn_output:Q8_0"`` (by tensor kind) ->
    {kind or "*": type}; empty: each tensor keeps its own type."""
    if not qtype:
        return {}
    out = {}
    for part in qtype.split(","):
        kind, _, t = part.strip().rpartition(":")
        if t not in _REQUANTISABLE:
            raise InvalidInput(f"unsupported merge type {t!r} (use one of {', '.join(_REQUANTISABLE)})")
        out[kind or "*"] = t
    return out


def merge_lora(base: Path, adapter: Path, out: Path, qtype: str | None = None) -> str:
    """Write ``base`` + ``adapter`` merged and re-quantised to ``out``; return its sha256. ``qtype``
    (:func:`target_types`) sets the type of merged tensors; by default each keeps its own."""
    import gguf
    import numpy as np
    from gguf import quants

    types = target_types(qtype)
    pairs, alpha = lora_pairs(adapter)
    reader = gguf.GGUFReader(str(base))
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(str(out), arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    writer.add_string("offline.reader.base_sha256", _sha256(base))
    writer.add_string("offline.reader.adapter_sha256", _sha256(adapter))
    writer.add_string("offline.reader.merge_type", qtype or "same")
    seen = set()
    for t in reader.tensors:
        if t.name not in pairs:
            writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
            continue
        if t.tensor_type.name not in _REQUANTISABLE:
            raise InvalidInput(f"cannot re-quantise {t.name} of type {t.tensor_type.name}")
        a, b = pairs[t.name]
        w = quants.dequantize(t.data, t.tensor_type).astype(np.float64)
        if w.shape != (b.shape[0], a.shape[1]):
            raise InvalidInput(
                f"adapter tensor for {t.name} has shape {b.shape[0]}x{a.shape[1]}, base {w.shape}"
            )
        merged = (w + delta(a, b, alpha)).astype(np.float32)
        kind = t.name.split(".")[-2] if t.name.count(".") >= 2 else t.name
        name = types.get(kind, types.get("*"))
        target = gguf.GGMLQuantizationType[name] if name else t.tensor_type
        if target == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(t.name, merged)
        else:
            writer.add_tensor(t.name, quants.quantize(merged, target), raw_dtype=target)
        seen.add(t.name)
    missing = set(pairs) - seen
    if missing:
        raise InvalidInput(f"adapter tensors not in the base: {', '.join(sorted(missing)[:3])}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return _sha256(out)
