"""Training data: validate Q/A files, read collection text, tokenise.

One loader, :func:`load_qa_file`, reads every question/answer format the kit takes, for
``finetune create --data`` / ``--raft --qa`` and for ``offline compare --qa`` alike: JSONL lines of
``{"messages": [...]}``, ``{"prompt", "completion"}`` or ``{"question", "answers": [...]}``
(``answers`` empty: unanswerable, for the refusal rate), or a SQuAD JSON file (v1.1, or v2 with
``is_impossible``). A training chat is a question (its last user turn) with the assistant's reply
as the answer.

Loss is on completion tokens only: for chat data every assistant turn is learned and everything else
(system, user, template markup) is masked with -100, found by rendering the model's chat template
and mapping character spans to tokens. Collection text (continued training) is learned in full.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidInput, ParameterError, UsageError

ROLES = {"system", "user", "assistant"}
MAX_FILE_BYTES = 512 * 1024 * 1024
IGNORE = -100


@dataclass
class Example:
    """One training item: chat messages, or raw text (continued training). From a Q/A file also the
    question and its gold answers (none: unanswerable, and no messages to learn)."""

    messages: list[dict[str, str]] | None = None
    text: str | None = None
    question: str | None = None
    answers: tuple[str, ...] = ()
    qid: str | None = None


@dataclass(frozen=True)
class QAFile:
    """A validated Q/A file: every record in file order, its sha256 and format (squad or jsonl)."""

    examples: list[Example]
    sha256: str
    format: str
    name: str


@dataclass
class Dataset:
    """Validated examples plus what lineage needs to know about them."""

    examples: list[Example]
    sha256: str
    source: str
    source_doc_ids: list[dict[str, Any]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _ask_of(msgs: list[dict[str, str]]) -> tuple[str | None, str]:
    """(the user turn before the last assistant reply, that reply): a chat as a question and answer."""
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant" and m["content"].strip())
    users = [m["content"] for m in msgs[:last] if m["role"] == "user" and m["content"].strip()]
    return (users[-1].strip() if users else None), msgs[last]["content"].strip()


def _parse_line(obj: Any, where: str) -> Example:
    if not isinstance(obj, dict):
        raise InvalidInput(
            f'{where}: expected a JSON object with "messages", "prompt"/"completion" or "question"/"answers"'
        )
    qid = str(obj["id"]) if "id" in obj else None
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise InvalidInput(f'{where}: "messages" must be a non-empty list')
        clean = []
        for i, m in enumerate(msgs, 1):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str):
                raise InvalidInput(f'{where}: message {i} needs a string "content"')
            if m.get("role") not in ROLES:
                raise InvalidInput(
                    f"{where}: message {i} has role {m.get('role')!r} (use system, user, assistant)"
                )
            clean.append({"role": m["role"], "content": m["content"]})
        if not any(m["role"] == "assistant" and m["content"].strip() for m in clean):
            raise InvalidInput(f"{where}: no non-empty assistant message to learn from")
        question, reply = _ask_of(clean)
        return Example(messages=clean, question=question, answers=(reply,), qid=qid)
    if "prompt" in obj or "completion" in obj:
        p, c = obj.get("prompt"), obj.get("completion")
        if not isinstance(p, str) or not isinstance(c, str):
            raise InvalidInput(f'{where}: "prompt" and "completion" must both be strings')
        if not c.strip():
            raise InvalidInput(f'{where}: empty "completion"')
        return Example(
            messages=[{"role": "user", "content": p}, {"role": "assistant", "content": c}],
            question=p.strip() or None,
            answers=(c.strip(),),
            qid=qid,
        )
    if "question" in obj:
        q, answers = obj["question"], obj.get("answers")
        if not isinstance(q, str) or not q.strip():
            raise InvalidInput(f'{where}: "question" must be a non-empty string')
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, list) or not all(isinstance(a, str) and a.strip() for a in answers):
            raise InvalidInput(
                f'{where}: "answers" must be a list of non-empty strings (empty: unanswerable)'
            )
        answers = tuple(a.strip() for a in answers)
        msgs = (
            [{"role": "user", "content": q.strip()}, {"role": "assistant", "content": answers[0]}]
            if answers
            else None
        )
        return Example(messages=msgs, question=q.strip(), answers=answers, qid=qid)
    raise InvalidInput(
        f'{where}: expected {{"messages": [...]}}, {{"prompt": ..., "completion": ...}} '
        'or {"question": ..., "answers": [...]}'
    )


def _squad(raw: Any, where: str) -> list[Example]:
    out: list[Example] = []
    try:
        for art in raw["data"]:
            for para in art["paragraphs"]:
                for qa in para["qas"]:
                    q = str(qa["question"]).strip()
                    golds = tuple(
                        dict.fromkeys(
                            str(a["text"]).strip() for a in qa.get("answers", []) if str(a["text"]).strip()
                        )
                    )
                    if not q or (not golds and not qa.get("is_impossible")):
                        continue  # v1.1 with no answer: nothing to score
                    msgs = (
                        [{"role": "user", "content": q}, {"role": "assistant", "content": golds[0]}]
                        if golds
                        else None
                    )
                    out.append(Example(messages=msgs, question=q, answers=golds, qid=str(qa["id"])))
    except (KeyError, TypeError):
        raise InvalidInput(f"{where} is not a SQuAD JSON file (bad article/paragraph/qas layout)") from None
    return out


def _read_bytes(p: Path) -> bytes:
    try:
        if p.stat().st_size > MAX_FILE_BYTES:
            raise InvalidInput(f"{p.name}: larger than {MAX_FILE_BYTES // 2**20} MiB")
        return p.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"no such data file: {p}") from None
    except (IsADirectoryError, PermissionError) as exc:
        raise UsageError(f"cannot read data file {p}: {exc.__class__.__name__}") from None


def load_qa_file(path: str | Path) -> QAFile:
    """Read and validate a Q/A file in any format of the module docstring; errors name the file and line."""
    p = Path(path)
    raw = _read_bytes(p)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"{p.name}: not UTF-8 text") from None
    sha = hashlib.sha256(raw).hexdigest()
    try:  # one JSON document with "data": SQuAD (JSONL fails at its second line, cheaply)
        whole = json.loads(text)
    except ValueError:
        whole = None
    if isinstance(whole, dict) and "data" in whole:
        return QAFile(_squad(whole, p.name), sha, "squad", p.name)
    examples = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{p.name} line {n}"
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise InvalidInput(f"{where}: invalid JSON ({exc.msg})") from None
        examples.append(_parse_line(obj, where))
    return QAFile(examples, sha, "jsonl", p.name)


def load_jsonl(path: str | Path) -> Dataset:
    """Training data from a Q/A file (:func:`load_qa_file`); unanswerable questions teach nothing
    closed-book and are left out (counted in ``meta``)."""
    qa = load_qa_file(path)
    examples = [e for e in qa.examples if e.messages]
    if not examples:
        raise InvalidInput(f"{qa.name}: no training examples")
    return Dataset(
        examples,
        qa.sha256,
        f"file:{qa.name}",
        meta={"format": qa.format, "unanswerable_skipped": len(qa.examples) - len(examples)},
    )


def load_collection(session: Any, name: str, *, max_chunks: int | None = None) -> Dataset:
    """Chunk text of a collection the caller may read (grant and label limits enforced)."""
    from ..vault.collections import open_collection

    handle = open_collection(session, name, need="read")
    rows = handle.conn.execute(
        "SELECT c.doc_id, c.text, d.label FROM chunks c JOIN documents d ON d.id = c.doc_id"
        " ORDER BY c.doc_id, c.ord"
    ).fetchall()
    texts, doc_ids, labels = [], [], set()
    for doc_id, text, label in rows:
        if not handle.label_allowed(label or "") or not text.strip():
            continue
        texts.append(text)
        if not doc_ids or doc_ids[-1] != doc_id:
            doc_ids.append(doc_id)
        labels.add(label or "")
        if max_chunks and len(texts) >= max_chunks:
            break
    if not texts:
        raise InvalidInput(f"collection {name!r} has no text you may read")
    digest = hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode()).hexdigest()
    # The labels trained on decide who may use the adapter: a reader limited to other labels may not.
    sources = [
        {
            "collection": name,
            "collection_id": handle.id,
            "doc_ids": sorted(set(doc_ids)),
            "labels": sorted(labels),
        }
    ]
    return Dataset(
        [Example(text=t) for t in texts],
        digest,
        f"collection:{name}",
        sources,
        {"chunks": len(texts), "documents": len(set(doc_ids))},
    )


def split(examples: list[Any], eval_split: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Deterministic shuffle, then hold out ``eval_split`` of the items (at least one when > 0)."""
    if not 0 <= eval_split < 1:
        raise ParameterError("{eval_split} must be in [0, 1)", "eval_split")
    items = list(examples)
    random.Random(seed).shuffle(items)
    n_eval = 0 if eval_split == 0 or len(items) < 2 else max(1, round(len(items) * eval_split))
    return items[n_eval:], items[:n_eval]


# -- tokenisation -----------------------------------------------------------------------------


def _render(tok: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _spans(tok: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """Full rendered text and the character spans of every assistant reply (with its end marker)."""
    full = _render(tok, messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = _render(tok, messages[:i], True)
        upto = _render(tok, messages[: i + 1], False)
        if not full.startswith(upto) or not upto.startswith(prompt):
            raise InvalidInput(
                "the model's chat template does not render conversations incrementally; "
                'use {"prompt", "completion"} data'
            )
        spans.append((len(prompt), len(upto)))
    return full, spans


def _plain_prompt(messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """Fallback when the tokenizer has no chat template: 'role: text' lines."""
    text, spans = "", []
    for m in messages:
        if m["role"] == "assistant":
            text += "assistant: "
            start = len(text)
            text += m["content"] + "\n"
            spans.append((start, len(text)))
        else:
            text += f"{m['role']}: {m['content']}\n"
    return text, spans


def encode(tok: Any, ex: Example, max_len: int) -> tuple[list[int], list[int]] | None:
    """(input_ids, labels) with non-learned positions at -100; None when nothing learnable fits."""
    if ex.text is not None:
        ids = tok(ex.text, add_special_tokens=False)["input_ids"]
        if tok.eos_token_id is not None:
            ids = ids + [tok.eos_token_id]
        ids = ids[:max_len]
        return (ids, list(ids)) if len(ids) >= 2 else None
    assert ex.messages is not None
    if getattr(tok, "chat_template", None):
        text, spans = _spans(tok, ex.messages)
    else:
        text, spans = _plain_prompt(ex.messages)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE] * len(ids)
    for j, (s, e) in enumerate(offsets):
        if e > s and any(a <= s < b for a, b in spans):
            labels[j] = ids[j]
    ids, labels = ids[:max_len], labels[:max_len]
    if all(x == IGNORE for x in labels[1:]):
        return None
    return ids, labels


def encode_all(
    tok: Any, examples: list[Example], max_len: int
) -> tuple[list[tuple[list[int], list[int]]], int]:
    """Encode every example; returns (encoded, number skipped because nothing learnable fit)."""
    out, skipped = [], 0
    for ex in examples:
        r = encode(tok, ex, max_len)
        if r is None:
            skipped += 1
        else:
            out.append(r)
    return out, skipped


def squad_answer_pairs(articles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SQuAD articles -> {"prompt", "completion", "answers"} rows: the sentences around the answer
    plus the question, completed by the short gold answer (the worked example and the benchmark)."""
    out = []
    for art in articles:
        for p in art["paragraphs"]:
            sents = re.split(r"(?<=[.!?])\s+", p["context"])
            for qa in p["qas"]:
                ans = qa["answers"][0]
                pos, i = 0, 0
                for i, s in enumerate(sents):  # noqa: B007 (i is read after the loop)
                    if pos + len(s) >= ans["answer_start"]:
                        break
                    pos += len(s) + 1
                ctx = " ".join(sents[max(0, i - 1) : i + 2])
                out.append(
                    {
                        "prompt": f"Text: {ctx}\n\nQuestion: {qa['question']}\nAnswer with a short phrase "
                        "from the text.",
                        "completion": ans["text"],
                        "answers": sorted({a["text"] for a in qa["answers"]}),
                    }
                )
    return out
