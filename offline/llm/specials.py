"""The loaded model's own special tokens, read from its vocabulary, and how to make text miss them.

llama.cpp tokenizes the rendered chat prompt with special-token parsing on (the chat template
itself is written with ``<|im_start|>`` ...), so any substring of untrusted text that equals the
text of a control token *becomes* that token. Which strings are dangerous depends on the model:
SmolLM2 inherits StarCoder's ``<file_sep>``, ``<issue_start>``, ``<jupyter_code>`` ...; Gemma 3
has ``<start_of_turn>`` and 6,000 ``<unusedN>``. A fixed list (``prompts.CONTROL_RE``) cannot know
them, so every model's list is read from its vocabulary when it is loaded:

* every token whose attributes include ``LLAMA_TOKEN_ATTR_CONTROL`` (turn markers, BOS/EOS,
  unused slots), and
* every ``LLAMA_TOKEN_ATTR_USER_DEFINED`` token except pure whitespace (Gemma 3 adds ``<table>``,
  ``[multimodal]`` ... as user-defined; it also has ``"\\n\\n"`` tokens, which are just text).

:meth:`Specials.defang` rewrites each occurrence into a look-alike that the tokenizer reads as
ordinary characters (see :func:`offline.llm.prompts.defang_piece`). The engine then confirms the
result with the model's own tokenizer (:meth:`offline.llm.engine.Engine.defang`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


def is_special(attr: int, text: str) -> bool:
    """Whether a token with attributes ``attr`` and text ``text`` must never come from data."""
    import llama_cpp

    if not text:
        return False
    if attr & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL:
        return True
    return bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED) and not text.isspace()


def vocab_specials(model: Any) -> list[str]:
    """The text of every special token in a loaded llama-cpp-python model (``Llama._model``)."""
    import llama_cpp

    mask = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
    out = []
    for tok in range(model.n_vocab()):
        attr = model.token_get_attr(tok)
        if attr & mask:  # skip the text lookup for the other 99.9 %
            text = model.token_get_text(tok)
            if is_special(attr, text):
                out.append(text)
    return out


def _trie_regex(words: Iterable[str]) -> re.Pattern[str] | None:
    """One regex matching any of ``words``, longest first, built as a prefix tree.

    A plain alternation of Gemma's 6,000+ specials tries each one at every position; the tree
    tries only the branches the next character allows.
    """
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict[str, Any]) -> str:
        branches = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    pattern = build(trie)
    return re.compile(pattern) if pattern else None


@dataclass
class Specials:
    """The special-token strings of one vocabulary and a matcher for all of them."""

    pieces: frozenset[str]
    _regex: re.Pattern[str] | None = field(default=None, repr=False)

    @classmethod
    def of(cls, pieces: Iterable[str]) -> Specials:
        unique = frozenset(p for p in pieces if p)
        return cls(unique, _trie_regex(unique))

    def find(self, text: str) -> list[str]:
        """Special-token strings occurring in ``text`` (in order, with repeats)."""
        if self._regex is None:
            return []
        return [m.group(0) for m in self._regex.finditer(text)]

    def defang(self, text: str) -> str:
        """``text`` with every occurrence of a special-token string made inert."""
        if self._regex is None or not text:
            return text
        from .prompts import defang_piece

        return self._regex.sub(lambda m: defang_piece(m.group(0)), text)
