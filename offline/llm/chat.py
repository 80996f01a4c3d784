"""Plain chat with a local model (no retrieval): for the agent, ``compare`` and fine-tuning checks.

Messages here are trusted (written by the kit or typed by the user); untrusted text must go through
:mod:`offline.llm.prompts` first. Use :func:`offline.rag.answer` for anything that touches the vault.
"""

from __future__ import annotations

from collections.abc import Callable

from . import engine as eng
from .engine import Generation
from .resolve import resolve_generate_model


def complete(
    messages: list[dict[str, str]],
    *,
    model: str | None = None,
    lora_path: str | None = None,
    adapter_sha256: str | None = None,
    n_ctx: int | None = None,
    max_tokens: int = 256,
    on_token: Callable[[str], None] | None = None,
    **sampling: object,
) -> Generation:
    """Stream one chat completion from ``model`` (default: the registry's default generation model).

    ``lora_path``/``adapter_sha256``: an already decrypted adapter file and its hash (see
    :func:`offline.finetune.store.open_adapter`). Sampling defaults to greedy
    (:data:`offline.llm.engine.DEFAULT_SAMPLING`); keyword overrides go to llama-cpp-python.
    """
    gm = resolve_generate_model(model)
    engine = eng.load(gm.path, n_ctx=n_ctx, lora_path=lora_path, adapter_sha256=adapter_sha256)
    return engine.stream_chat(messages, max_tokens=max_tokens, on_token=on_token, **sampling)
