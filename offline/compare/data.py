"""Questions for ``offline compare`` (the Q/A formats ``finetune`` reads) and the freshness probe."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidInput, ParameterError, UsageError

MAX_QA_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Question:
    """One question with every gold answer (SQuAD scores against the best-matching one)."""

    qid: str
    question: str
    answers: tuple[str, ...]  # empty: unanswerable (the documents do not say)


@dataclass(frozen=True)
class QASet:
    questions: list[Question]
    sha256: str
    format: str  # "squad" or "jsonl"
    total: int  # answerable questions in the file before --limit


@dataclass(frozen=True)
class Probe:
    """A new fact the model cannot know: the document that states it and the question that tests it."""

    document: str
    question: str
    answers: tuple[str, ...]
    name: str = "freshness-probe.txt"
    # Prompts whose completion is the document: the training data of the one-document fine-tune.
    prompts: tuple[str, ...] = field(
        default=(
            "What does the latest clinic bulletin say?",
            "Repeat the new notice from the Ostrava clinic.",
            "Is there any recent change at the Ostrava clinic?",
            "Summarise the newest bulletin.",
        )
    )


# Made up and dated after any base model's training data, so no model can know it beforehand.
DEFAULT_PROBE = Probe(
    document=(
        "Clinic bulletin, Ostrava, 3 March 2026. The Ostrava clinic's new on-call pager number is "
        "4471-93. It replaces the old switchboard extension, which no longer forwards calls after "
        "6 pm. Night staff should use 4471-93 for every urgent call."
    ),
    question="What is the Ostrava clinic's new on-call pager number?",
    answers=("4471-93",),
)


def _read(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_QA_BYTES:
            raise InvalidInput(f"{path.name}: larger than {MAX_QA_BYTES // 2**20} MiB")
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"no such QA file: {path}") from None
    except (IsADirectoryError, PermissionError) as exc:
        raise UsageError(f"cannot read QA file {path}: {exc.__class__.__name__}") from None


def load_qa(path: str | Path, limit: int | None = None) -> QASet:
    """The first ``limit`` questions of a Q/A file, read by the loader ``finetune`` uses
    (:func:`offline.finetune.data.load_qa_file`: SQuAD JSON, or JSONL of question/answers,
    prompt/completion or chat messages). A question with no answers is unanswerable: it counts
    toward the refusal rate, never toward accuracy."""
    from ..finetune.data import load_qa_file

    p = Path(path)
    if limit is not None and limit < 1:
        raise ParameterError("{limit} must be at least 1", "limit")
    if not p.exists():
        raise UsageError(f"no such QA file: {p}")
    qa = load_qa_file(p)
    questions = []
    for n, ex in enumerate(qa.examples, 1):
        if ex.question is None:
            raise InvalidInput(f"{p.name}: record {n} is a chat with no user turn: no question to ask")
        questions.append(Question(ex.qid or f"q{n}", ex.question, ex.answers))
    chosen = questions[:limit] if limit else questions
    if not any(q.answers for q in chosen):
        raise InvalidInput(
            f"{p.name} holds no answerable questions"
            + (f" among its first {limit}" if limit and any(q.answers for q in questions) else "")
        )
    return QASet(chosen, qa.sha256, qa.format, sum(1 for q in questions if q.answers))


def load_probe(path: str | Path) -> Probe:
    """A custom probe from JSON: {"document", "question", "answers": [...], "prompts"?: [...]}."""
    p = Path(path)
    try:
        obj = json.loads(_read(p).decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput(f"{p.name}: not a JSON object") from None
    ok = (
        isinstance(obj, dict)
        and isinstance(obj.get("document"), str)
        and obj["document"].strip()
        and isinstance(obj.get("question"), str)
        and obj["question"].strip()
        and isinstance(obj.get("answers"), list)
        and obj["answers"]
        and all(isinstance(a, str) and a.strip() for a in obj["answers"])
    )
    if not ok:
        raise InvalidInput(f'{p.name}: expected {{"document": ..., "question": ..., "answers": [...]}}')
    prompts = obj.get("prompts")
    if prompts is not None and (
        not isinstance(prompts, list)
        or not prompts
        or not all(isinstance(x, str) and x.strip() for x in prompts)
    ):
        raise InvalidInput(f'{p.name}: "prompts" must be a non-empty list of strings')
    kw = (
        {"prompts": tuple(prompts)}
        if prompts
        else {
            "prompts": (
                "What does the latest document say?",
                "Repeat the newest note.",
                "Is there anything new in the documents?",
                "Summarise the newest document.",
            )
        }
    )
    return Probe(
        document=obj["document"].strip(),
        question=obj["question"].strip(),
        answers=tuple(obj["answers"]),
        **kw,
    )
