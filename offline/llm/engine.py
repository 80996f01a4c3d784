"""llama.cpp through llama-cpp-python: load once per (model, adapter, n_ctx), tokenise, stream.

A loaded :class:`Engine` is cached in-process so the agent (a long-lived process) pays the load
once. llama.cpp's own logging never reaches the terminal: ``verbose=False`` plus an fd-level
redirect of stderr while the native library loads the model (some backends print before the
Python log callback is installed).

Notes on llama-cpp-python 0.3.x: the high-level ``Llama`` applies at most one LoRA adapter
(``lora_path``); ``lora_base`` is ignored; loading a LoRA turns mmap off, so an adapter costs the
base model's size in RAM.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidInput, NotFound, OfflineError
from .prompts import defang_pieces
from .specials import Specials, is_special, vocab_specials
from .threads import Threads
from .threads import choose as choose_threads

# OMP_WAIT_POLICY=PASSIVE (spinning OpenMP threads made first tokens 10x slower on busy cores) is
# set in offline/__init__.py, which runs before anything imports torch or llama_cpp. The thread
# counts that make PASSIVE cost nothing are chosen in offline/llm/threads.py.

DEFAULT_N_CTX = 4096
# Greedy decoding: grounded answers should be reproducible and stick to the sources. A mild
# repetition penalty stops the small default model from looping.
DEFAULT_SAMPLING: dict[str, Any] = {
    "temperature": 0.0,
    "top_k": 1,
    "top_p": 1.0,
    "min_p": 0.0,
    "repeat_penalty": 1.1,
}

_cache: dict[tuple[str, str, int], Engine] = {}
_cache_lock = threading.Lock()


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence stderr for the duration: fd 2 (native code writes there directly) and ``sys.stderr``
    (llama-cpp-python's log callback prints through it)."""
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            sys.__stderr__.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no real fd 2 (embedded interpreters)
            yield
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


@dataclass
class Generation:
    """What one streamed completion produced, with its timings."""

    text: str
    tokens: int
    prompt_tokens: int
    ttft_s: float
    decode_s: float
    total_s: float
    finish_reason: str | None = None

    @property
    def decode_tok_s(self) -> float:
        """Tokens per second after the first token (the first one's latency is prompt processing)."""
        return (self.tokens - 1) / self.decode_s if self.tokens > 1 and self.decode_s > 0 else 0.0

    def timings(self) -> dict[str, float | int]:
        return {
            "prompt_s": round(self.ttft_s, 4),
            "ttft_s": round(self.ttft_s, 4),
            "decode_s": round(self.decode_s, 4),
            "tokens": self.tokens,
            "prompt_tokens": self.prompt_tokens,
            "decode_tok_s": round(self.decode_tok_s, 2),
        }


@dataclass
class Engine:
    """One loaded model (optionally with one LoRA adapter)."""

    llm: Any
    model_path: str
    adapter_sha256: str | None
    n_ctx: int
    load_s: float
    threads: Threads = field(default_factory=lambda: Threads(1, 1))
    _formatter: Any = field(default=None, repr=False)
    _specials: Specials | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- tokenizer ---------------------------------------------------------------------------
    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Token ids the way the chat handler will see ``text`` (``special=True``: control tokens parse)."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def count(self, text: str) -> int:
        return len(self.tokenize(text))

    def special_ids(self, text: str) -> list[int]:
        """The special tokens (see :func:`offline.llm.specials.is_special`) ``text`` tokenizes to,
        with special parsing on, as llama.cpp tokenizes a rendered prompt."""
        model = self.llm._model
        return [
            t
            for t in self.tokenize(text, special=True)
            if is_special(model.token_get_attr(t), model.token_get_text(t))
        ]

    def special_pieces(self, text: str) -> list[str]:
        """Substrings of ``text`` that this model's tokenizer turns into special tokens."""
        with_special = self.tokenize(text, special=True)
        if with_special == self.tokenize(text, special=False):
            return []
        model = self.llm._model
        return [model.token_get_text(t) for t in self.special_ids(text)]

    @property
    def specials(self) -> Specials:
        """Every special-token string of this model's vocabulary (read once per engine)."""
        if self._specials is None:
            self._specials = Specials.of(vocab_specials(self.llm._model))
        return self._specials

    def defang(self, text: str) -> str:
        """``text`` with every special token of this model's vocabulary made inert, confirmed by
        the tokenizer itself; fails closed if it cannot be made clean."""
        text = self.specials.defang(text)
        for _ in range(3):  # the vocabulary pass should leave nothing; the tokenizer has the last word
            pieces = self.special_pieces(text)
            if not pieces:
                return text
            text = defang_pieces(text, pieces)
        raise InvalidInput("text holds this model's control tokens that could not be neutralised; refused")

    def check_prompt(self, messages: list[dict[str, str]]) -> None:
        """Fail closed unless the rendered prompt holds exactly the special tokens the chat template
        itself writes (the same messages with placeholder content): none may come from the content,
        not even one formed across the boundary of two pieces of text."""
        own = [{**m, "content": "x"} for m in messages]
        if sorted(self.special_ids(self.render(messages))) != sorted(self.special_ids(self.render(own))):
            raise InvalidInput("the prompt would carry control tokens from its content; refused")

    # -- chat template -------------------------------------------------------------------------
    @property
    def has_template(self) -> bool:
        return "tokenizer.chat_template" in self.llm.metadata

    def render(self, messages: list[dict[str, str]]) -> str:
        """The exact prompt text the chat handler sends for ``messages`` (the same formatter)."""
        if self._formatter is None:
            self._formatter = chat_formatter(self.llm)
        return self._formatter(messages=messages).prompt

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return self.count(self.render(messages))

    # -- generation ----------------------------------------------------------------------------
    def stream_chat(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int = 256,
        on_token: Callable[[str], None] | None = None,
        **sampling: Any,
    ) -> Generation:
        """Stream a chat completion through the model's chat template; ``on_token`` gets each piece."""
        params = {**DEFAULT_SAMPLING, **sampling}
        with self._lock:  # one llama context: one generation at a time
            t0 = time.perf_counter()
            first = last = None
            pieces: list[str] = []
            n = 0
            finish = None
            stream = self.llm.create_chat_completion(
                messages=messages, stream=True, max_tokens=max_tokens, **params
            )
            for chunk in stream:
                choice = chunk["choices"][0]
                finish = choice.get("finish_reason") or finish
                piece = choice["delta"].get("content")
                if not piece:
                    continue
                now = time.perf_counter()
                if first is None:
                    first = now
                last = now
                n += 1
                pieces.append(piece)
                if on_token is not None:
                    on_token(piece)
            end = time.perf_counter()
        first = first if first is not None else end
        last = last if last is not None else end
        return Generation(
            text="".join(pieces),
            tokens=n,
            prompt_tokens=self.prompt_tokens(messages),
            ttft_s=first - t0,
            decode_s=last - first,
            total_s=end - t0,
            finish_reason=finish,
        )


# A GGUF without a chat template is treated as a base (non-instruct) model: turn tokens it was never
# trained on produce noise (seen with the base Gemma 3 270M), while a plain "Answer:" completion
# works. The blank line that ends a short answer is its stop string.
PLAIN_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}Answer: {{ m['content'] | trim }}\n\n"
    "{% else %}{{ m['content'] | trim }}\n\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}Answer:{% endif %}"
)


def chat_formatter(llm: Any) -> Any:
    """The model's own chat template as a formatter; a plain completion format if it has none."""
    from llama_cpp import llama_chat_format

    model = llm._model
    eos, bos = llm.token_eos(), llm.token_bos()
    eos_text = model.token_get_text(eos) if eos != -1 else ""
    bos_text = model.token_get_text(bos) if bos != -1 else ""
    template = llm.metadata.get("tokenizer.chat_template")
    if template:
        return llama_chat_format.Jinja2ChatFormatter(
            template=template, eos_token=eos_text, bos_token=bos_text
        )
    return _plain_formatter(bos_text)


def _plain_formatter(bos_text: str) -> Any:
    from llama_cpp import llama_chat_format

    class PlainFormatter(llama_chat_format.Jinja2ChatFormatter):
        """Base models run on into a "Question:"/"Source:" line of their own making: stop there too."""

        def __call__(self, **kwargs: Any) -> Any:
            response = super().__call__(**kwargs)
            response.stop = ["\n\n", "\nQuestion:", "\nSource:", "\nSources:"]
            return response

    return PlainFormatter(template=PLAIN_TEMPLATE, eos_token="\n\n", bos_token=bos_text)


def cached(
    model_path: str | os.PathLike[str], *, n_ctx: int | None = None, adapter_sha256: str | None = None
) -> Engine | None:
    """The engine :func:`load` would return, if it is already loaded; else None."""
    key = (str(Path(model_path).resolve()), adapter_sha256 or "", int(n_ctx) if n_ctx else 0)
    with _cache_lock:
        return _cache.get(key)


def load(
    model_path: str | os.PathLike[str],
    *,
    n_ctx: int | None = None,
    lora_path: str | None = None,
    adapter_sha256: str | None = None,
) -> Engine:
    """The cached engine for (model, adapter, n_ctx), loading it on first use.

    ``n_ctx`` defaults to :data:`DEFAULT_N_CTX` capped at the model's training context.
    ``adapter_sha256`` identifies the adapter in the cache key (the decrypted file path is temporary).
    Thread counts come from :func:`offline.llm.threads.choose` (settings, environment, else the
    measured rule); a bad configured count is a :class:`UsageError` before anything loads.
    """
    path = Path(model_path)
    if not path.is_file():
        raise NotFound(f"model file not found: {path}")
    if lora_path is not None and adapter_sha256 is None:
        raise OfflineError("internal: an adapter needs its sha256 to be cached")
    want = int(n_ctx) if n_ctx else 0
    key = (str(path.resolve()), adapter_sha256 or "", want)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            return hit
        choose_threads()  # fail on a bad setting before paying for the load
        from .. import status

        status.loading("language model")
        from llama_cpp import Llama

        t0 = time.perf_counter()
        kwargs: dict[str, Any] = {"verbose": False}
        if lora_path is not None:
            kwargs["lora_path"] = str(lora_path)
        try:
            with quiet_stderr():
                llm = Llama(str(path), n_ctx=want or DEFAULT_N_CTX, **kwargs)
                train = llm._model.n_ctx_train()
                if not want and 0 < train < llm.n_ctx():  # never default past the training context
                    llm.close()
                    llm = Llama(str(path), n_ctx=train, **kwargs)
        except (ValueError, RuntimeError) as exc:
            what = "adapter" if lora_path else "model"
            raise InvalidInput(f"llama.cpp could not load the {what} ({path.name}): {exc}") from None
        # The rule needs the model's size, known once it is loaded; llama.cpp takes new counts on
        # a live context (they apply from the next decode).
        threads = choose_threads(llm._model.n_params())
        llm._ctx.set_n_threads(threads.decode, threads.batch)
        llm.n_threads, llm.n_threads_batch = threads.decode, threads.batch
        # One formatter renders the prompt we count and the prompt llama.cpp sees: the GGUF's own
        # template, never a format llama-cpp-python guesses (it picks "llama-2" for a GGUF without one).
        formatter = chat_formatter(llm)
        llm.chat_handler = formatter.to_chat_handler()
        engine = Engine(
            llm=llm,
            model_path=str(path),
            adapter_sha256=adapter_sha256,
            n_ctx=llm.n_ctx(),
            load_s=time.perf_counter() - t0,
            threads=threads,
        )
        engine._formatter = formatter
        if not _cache:
            # Free native models before interpreter teardown (llama-cpp-python's __del__ then
            # finds its ctypes bindings already gone and prints a traceback).
            atexit.register(clear_cache)
        _cache[key] = engine
        return engine


def clear_cache() -> None:
    """Drop every cached engine (frees model memory)."""
    with _cache_lock:
        for eng in _cache.values():
            with contextlib.suppress(Exception):
                eng.llm.close()
        _cache.clear()


def unload(engine: Engine) -> None:
    """Drop one engine from the cache and free its model (others stay loaded)."""
    with _cache_lock:
        for key in [k for k, e in _cache.items() if e is engine]:
            del _cache[key]
        with contextlib.suppress(Exception):
            engine.llm.close()
