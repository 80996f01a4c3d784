"""Finding and loading the GGUF base model for training (dequantised to float32 by transformers)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidInput, NotFound, ParameterError, UsageError
from .export_gguf import BaseInfo, gguf_reader, read_base_info, shared_readers

# Projections LoRA adapts by default; MLP projections are opt-in (--targets all).
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
FALLBACK_BASE = Path(__file__).resolve().parents[2] / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class BaseModel:
    """A resolved base: its name, GGUF path, sha256 and exporter metadata."""

    name: str
    path: Path
    sha256: str
    info: BaseInfo


def resolve_base(base: str | None) -> BaseModel:
    """A registered generate model by name (default: the kit's default), or a path to a .gguf file."""
    if base and (base.endswith(".gguf") or os.sep in base) and Path(base).is_file():
        from ..models.hashing import sha256_file

        path = Path(base).resolve()
        name, sha = path.name, sha256_file(path)
    else:
        try:
            from ..models import resolve_model
        except ImportError:  # models package not present: fall back to the pinned default file
            if base:
                raise NotFound(f"unknown base model {base!r}") from None
            path, name = FALLBACK_BASE, FALLBACK_BASE.name
            import hashlib

            sha = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            m = resolve_model(base, "generate")
            if m.kind != "gguf":
                raise UsageError(f"base model {m.name!r} is not a GGUF model")
            path, name, sha = m.path, m.name, m.sha256
    info = read_base_info(path)
    return BaseModel(name=name, path=Path(path), sha256=sha, info=info)


def _gguf_field(path: Path, key: str) -> Any:
    f = gguf_reader(path).fields.get(key)
    return None if f is None else f.contents()


_TOKENIZERS: dict[tuple[str, str, str], Any] = {}


def _tokenizer(folder: str, file: str, sha256: str) -> Any:
    # Building a fast tokenizer from GGUF metadata takes seconds; it is immutable once built.
    key = (folder, file, sha256)
    if key not in _TOKENIZERS:
        from transformers import AutoTokenizer

        _TOKENIZERS[key] = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    return _TOKENIZERS[key]


def load_base(base: BaseModel, *, device: str = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer) from the GGUF through transformers, float32, on ``device``.

    transformers' GGUF loader leaves gemma3's ``query_pre_attn_scalar`` at its default (256), which
    is only right when head_dim is 256; llama.cpp scales by 1/sqrt(head_dim) (n_embd/n_head for the
    62-layer 27B), so we set it from the GGUF metadata to train what llama.cpp will serve.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    folder, file = str(base.path.parent), base.path.name
    # The GGUF loader draws its own tqdm bar on stderr (tqdm reads TQDM_* only at import); ours is
    # the training bar, so silence that one for the duration of the load.
    import functools

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    prev_tqdm = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(prev_tqdm, disable=True)
    readers = shared_readers()
    readers.__enter__()
    try:
        cfg = AutoConfig.from_pretrained(folder, gguf_file=file)
        if base.info.arch == "gemma3":
            arch = base.info.arch
            key_len = _gguf_field(base.path, f"{arch}.attention.key_length")
            n_embd = _gguf_field(base.path, f"{arch}.embedding_length")
            if base.info.n_blocks == 62 and n_embd and base.info.n_head:
                cfg.query_pre_attn_scalar = n_embd // base.info.n_head
            elif key_len:
                cfg.query_pre_attn_scalar = int(key_len)
        tok = _tokenizer(folder, file, base.sha256)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, config=cfg, dtype=torch.float32)
    except (ValueError, KeyError, OSError) as exc:
        raise InvalidInput(
            f"transformers cannot load {file} for training "
            f"(architecture {base.info.arch}): {str(exc).splitlines()[0][:160]}"
        ) from None
    finally:
        gguf_utils.tqdm = prev_tqdm
        readers.__exit__(None, None, None)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.to(device)
    return model, tok


def pick_device(requested: str | None = None) -> str:
    """``cuda`` when present (or asked for), else ``cpu``."""
    import torch

    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise ParameterError("{device} cuda requested but no CUDA device is available", "device")
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def target_modules(model: Any, targets: list[str]) -> list[str]:
    """Full names of the Linear modules whose short name is in ``targets`` (in model order)."""
    import torch

    out = [
        n
        for n, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and n.rsplit(".", 1)[-1] in targets
    ]
    shorts = {n.rsplit(".", 1)[-1] for n in out}
    missing = [t for t in targets if t not in shorts]
    if missing:
        if "lm_head" in missing and getattr(model.config, "tie_word_embeddings", False):
            raise UsageError(
                "LoRA target 'lm_head' has no tensor in the base GGUF "
                "(this base ties its output layer to the token embeddings)"
            )
        raise UsageError(f"LoRA target {missing[0]!r} is not a linear layer of this base model")
    return out
