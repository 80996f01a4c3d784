"""A sentence-transformers BERT model (mean pooling, unit length) run in numpy, for queries.

Why: a search embeds one short query. Through sentence-transformers that costs importing torch,
transformers, sklearn and peft (2-4 s of a cold ``offline search`` on the 2-core target) for
a few milliseconds of arithmetic. The same model's weights (the verified ``model.safetensors``)
and tokenizer (``tokenizer.json``, through ``tokenizers``) run here with numpy alone; the
vectors match sentence-transformers' to float32 rounding (tests/test_retrieval.py checks it),
so they are comparable with the vectors ingest stored.

Only the exact layout this file implements is accepted (:func:`supports`): a BERT encoder with
absolute positions and GELU, then mean pooling, then normalisation. Any other embedding model
goes through sentence-transformers as before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

_MODULES = [
    "sentence_transformers.models.Transformer",
    "sentence_transformers.models.Pooling",
    "sentence_transformers.models.Normalize",
]


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def supports(folder: Path) -> bool:
    """True if ``folder`` holds a model with exactly the layout :class:`MiniLM` computes."""
    modules = _json(folder / "modules.json")
    if not isinstance(modules, list) or [m.get("type") for m in modules if isinstance(m, dict)] != _MODULES:
        return False
    pool_dir = next((m.get("path") for m in modules if m.get("type") == _MODULES[1]), None)
    pool = _json(folder / str(pool_dir) / "config.json") if pool_dir else None
    cfg = _json(folder / "config.json")
    if not isinstance(pool, dict) or not isinstance(cfg, dict):
        return False
    pooling = {k: v for k, v in pool.items() if k.startswith("pooling_mode")}
    return (
        pooling.get("pooling_mode_mean_tokens") is True
        and not any(v for k, v in pooling.items() if k != "pooling_mode_mean_tokens")
        and cfg.get("model_type") == "bert"
        and cfg.get("hidden_act") == "gelu"
        and cfg.get("position_embedding_type", "absolute") == "absolute"
        and (folder / "model.safetensors").is_file()
        and (folder / "tokenizer.json").is_file()
    )


def _erf(x: np.ndarray) -> np.ndarray:
    # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7, below float32 resolution of GELU's output).
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    y = 1.0 - (
        ((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592
    ) * t * np.exp(-a * a)
    return s * y


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / np.float32(np.sqrt(2.0))))


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


class MiniLM:
    """The encoder of one verified model folder (see :func:`supports`)."""

    def __init__(self, folder: Path, max_tokens: int):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        cfg = _json(folder / "config.json")
        self.heads = int(cfg["num_attention_heads"])
        self.layers = int(cfg["num_hidden_layers"])
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        self.w = load_file(str(folder / "model.safetensors"))
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tok.no_padding()
        tok.enable_truncation(max_tokens)  # sentence-transformers truncates at max_seq_length
        self.tokenizer = tok
        self.dim = int(cfg["hidden_size"])

    def _p(self, name: str) -> np.ndarray:
        return self.w[name]

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]

    def encode_one(self, text: str) -> np.ndarray:
        """The unit-length float32 vector of ``text``, as sentence-transformers computes it."""
        ids = np.asarray(self.tokenizer.encode(text).ids, dtype=np.int64)
        n = len(ids)
        x = (
            self._p("embeddings.word_embeddings.weight")[ids]
            + self._p("embeddings.position_embeddings.weight")[:n]
            + self._p("embeddings.token_type_embeddings.weight")[0]
        )
        x = _layer_norm(
            x, self._p("embeddings.LayerNorm.weight"), self._p("embeddings.LayerNorm.bias"), self.eps
        )
        d = self.dim // self.heads
        scale = np.float32(1.0 / np.sqrt(d))
        for i in range(self.layers):
            pre = f"encoder.layer.{i}"
            q, k, v = (
                self._linear(x, f"{pre}.attention.self.{m}").reshape(n, self.heads, d).transpose(1, 0, 2)
                for m in ("query", "key", "value")
            )
            scores = (q @ k.transpose(0, 2, 1)) * scale
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            probs = scores / scores.sum(-1, keepdims=True)
            ctx = (probs @ v).transpose(1, 0, 2).reshape(n, self.dim)
            x = _layer_norm(
                self._linear(ctx, f"{pre}.attention.output.dense") + x,
                self._p(f"{pre}.attention.output.LayerNorm.weight"),
                self._p(f"{pre}.attention.output.LayerNorm.bias"),
                self.eps,
            )
            h = _gelu(self._linear(x, f"{pre}.intermediate.dense"))
            x = _layer_norm(
                self._linear(h, f"{pre}.output.dense") + x,
                self._p(f"{pre}.output.LayerNorm.weight"),
                self._p(f"{pre}.output.LayerNorm.bias"),
                self.eps,
            )
        vec = x.mean(0)  # one unpadded sequence: every token counts
        vec = vec / max(float(np.linalg.norm(vec)), 1e-12)
        return np.ascontiguousarray(vec, dtype=np.float32)
