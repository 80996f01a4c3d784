"""Local models: the pinned defaults (``models/manifest.toml``), user imports, integrity checks.

Callers use :func:`resolve_model` to get a verified :class:`ModelInfo` and load ``info.path``
themselves (llama.cpp for ``kind == "gguf"``, sentence-transformers for ``kind == "st-folder"``).
Nothing here imports a heavy library at module level.
"""

from __future__ import annotations

from .catalog import all_models, list_models, resolve_model, verify_models
from .info import ModelInfo


def fetch_defaults(*args, **kwargs):  # noqa: ANN002, ANN003 - thin lazy wrapper
    """See :func:`offline.models.fetch.fetch_defaults`."""
    from .fetch import fetch_defaults as _f

    return _f(*args, **kwargs)


def import_model(*args, **kwargs):  # noqa: ANN002, ANN003
    """See :func:`offline.models.importer.import_model`."""
    from .importer import import_model as _f

    return _f(*args, **kwargs)


__all__ = [
    "ModelInfo",
    "all_models",
    "fetch_defaults",
    "import_model",
    "list_models",
    "resolve_model",
    "verify_models",
]
