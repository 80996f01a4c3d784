"""The embedding model: one loaded copy per process, behind :func:`get_embedder`.

The model is found and hash-verified through ``offline.models.resolve_model(name, "embed")``
(never loaded from anywhere the manifest or registry does not vouch for). A collection records
the model's name and sha256 when it is first indexed; searching it with any other model is refused,
because vectors from different models are not comparable.

Loading is split by need: a query is embedded in numpy (:mod:`offline.retrieval.minilm`) when the
model has the layout that module implements, so ``search`` and ``ask`` never import torch;
sentence-transformers (torch) loads only when batches are encoded (ingest, eval) or the tokenizer
is asked for, or for any other model layout.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_ALIASES = {"all-minilm-l6-v2", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
BATCH_SIZE = 64
QUERY_CACHE = 256

_lock = threading.Lock()
_cache: dict[str, Embedder] = {}


@dataclass
class Embedder:
    """A loaded sentence-embedding model with its tokenizer and identity."""

    name: str
    path: Path
    sha256: str
    dim: int
    max_tokens: int  # word pieces per input, special tokens included
    _model: Any = field(default=None, repr=False)
    _query_model: Any = field(default=None, repr=False)
    _tokenizer: Any = field(default=None, repr=False)
    _query_cache: dict[str, Any] = field(default_factory=dict, repr=False)
    _load_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def model(self) -> Any:
        """The sentence-transformers model (loaded on first use: it imports torch)."""
        with self._load_lock:
            if self._model is None:
                self._model = _load_st(self.path)
            return self._model

    @property
    def query_model(self) -> Any:
        """The numpy encoder for single queries, or None if this model's layout is not supported."""
        with self._load_lock:
            if self._query_model is None and self._model is None:
                from . import minilm

                if minilm.supports(self.path):
                    from .. import status

                    status.loading("embedding model")
                    self._query_model = minilm.MiniLM(self.path, self.max_tokens)
            return self._query_model

    @property
    def tokenizer(self) -> Any:
        """A ``tokenizers.Tokenizer`` with truncation and padding off (for chunking by tokens)."""
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_str(self.model.tokenizer.backend_tokenizer.to_str())
            tok.no_truncation()
            tok.no_padding()
            self._tokenizer = tok
        return self._tokenizer

    def encode(self, texts: list[str], batch_size: int = BATCH_SIZE) -> Any:
        """Unit-length float32 vectors, shape (len(texts), dim)."""
        import numpy as np

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self.model.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def encode_query(self, text: str) -> Any:
        """One query's vector; recent queries are remembered (a retry or a second mode is free)."""
        cache = self._query_cache
        vec = cache.pop(text, None)
        if vec is None:
            fast = self._model is None and self.query_model
            vec = fast.encode_one(text) if fast else self.encode([text])[0]
            vec.setflags(write=False)
            while len(cache) >= QUERY_CACHE:
                cache.pop(next(iter(cache)))
        cache[text] = vec  # most recent last
        return vec


def _resolve(model_name: str | None) -> tuple[str, Path, str]:
    """(name, folder, sha256) of the requested embedding model, verified by the model registry."""
    from ..models import resolve_model

    info = resolve_model(None if model_name in _ALIASES else model_name, "embed")
    path = Path(info.path)
    return info.name, (path if path.is_dir() else path.parent), info.sha256


def _load_st(folder: Path) -> Any:
    """The sentence-transformers model in ``folder``, offline, quietly."""
    from .. import netguard, status

    status.loading("embedding model")
    netguard.set_offline_env()
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar on stderr

    # Two cores shared with the rest of the machine: more threads than cores only thrashes.
    if torch.get_num_threads() > 8:
        torch.set_num_threads(8)
    return SentenceTransformer(str(folder), device="cpu", local_files_only=True)


def _shape(folder: Path) -> tuple[int, int] | None:
    """(dim, max_tokens) of a numpy-served model, read from its own config files; else None."""
    from .minilm import supports

    if not supports(folder):
        return None
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        st = json.loads((folder / "sentence_bert_config.json").read_text(encoding="utf-8"))
        return int(cfg["hidden_size"]), int(st.get("max_seq_length") or 256)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def get_embedder(model_name: str | None = None, *, queries_only: bool = False) -> Embedder:
    """The embedding model ``model_name`` (default: the kit's pinned one), loaded once per process.

    ``queries_only``: the caller only embeds queries (``search``): when the model's layout is the
    numpy-served one nothing heavy loads here (dimension and token limit come from its config
    files) and torch is never imported. Otherwise sentence-transformers is loaded now.
    """
    key = model_name or ""
    with _lock:
        emb = _cache.get(key)
        if emb is None:
            name, folder, sha = _resolve(model_name)
            shape = _shape(folder) if queries_only else None
            if shape is not None:
                emb = Embedder(name=name, path=folder, sha256=sha, dim=shape[0], max_tokens=shape[1])
            else:
                model = _load_st(folder)
                dim_fn = (
                    getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
                )
                emb = Embedder(
                    name=name,
                    path=folder,
                    sha256=sha,
                    dim=int(dim_fn()),
                    max_tokens=int(model.max_seq_length or 256),
                    _model=model,
                )
            _cache[key] = emb
        elif not queries_only:
            emb.model  # noqa: B018  (a query-only embedder met a caller that encodes batches: load now)
        return emb
