"""Questions for ``offline compare`` (SQuAD JSON or JSONL) and the freshness probe."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidInput, ParameterError, UsageError

MAX_QA_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Question:
    """One question with every gold answer (SQuAD scores against the best-matching one)."""

    qid: str
    question: str
    answers: tuple[str, ...]


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
    prompts: tuple[str, ...] = field(default=(
        "What does the latest clinic bulletin say?",
        "Repeat the new notice from the Ostrava clinic.",
        "Is there any recent change at the Ostrava clinic?",
        "Summarise the newest bulletin.",
    ))


# Made up and dated after any base model's training data, so no model can know it beforehand.
DEFAULT_PROBE = Probe(
    document=("Clinic bulletin, Ostrava, 3 March 2026. The Ostrava clinic's new on-call pager number is "
              "4471-93. It replaces the old switchboard extension, which no longer forwards calls after "
              "6 pm. Night staff should use 4471-93 for every urgent call."),
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


def _squad(raw: Any, where: str) -> list[Question]:
    out: list[Question] = []
    try:
        for art in raw["data"]:
            for para in art["paragraphs"]:
                for qa in para["qas"]:
                    golds = tuple(str(a["text"]) for a in qa.get("answers", []) if str(a["text"]).strip())
                    if golds and str(qa["question"]).strip():
                        out.append(Question(str(qa["id"]), str(qa["question"]).strip(), golds))
    except (KeyError, TypeError):
        raise InvalidInput(f"{where} is not a SQuAD v1.1 JSON file (bad article/paragraph/qas layout)") from None
    return out


def _jsonl(text: str, where: str) -> list[Question]:
    out: list[Question] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise InvalidInput(f"{where}:{n}: not valid JSON") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("question"), str) or not obj["question"].strip():
            raise InvalidInput(f"{where}:{n}: expected {{\"question\": \"...\", \"answers\": [\"...\"]}}")
        answers = obj.get("answers")
        if isinstance(answers, str):
            answers = [answers]
        if (not isinstance(answers, list) or not answers
                or not all(isinstance(a, str) and a.strip() for a in answers)):
            raise InvalidInput(f"{where}:{n}: \"answers\" must be a non-empty list of strings")
        out.append(Question(str(obj.get("id", f"q{n}")), obj["question"].strip(), tuple(answers)))
    return out


def load_qa(path: str | Path, limit: int | None = None) -> QASet:
    """The first ``limit`` questions of a SQuAD v1.1 JSON file or a JSONL file of question/answers."""
    p = Path(path)
    if limit is not None and limit < 1:
        raise ParameterError("{limit} must be at least 1", "limit")
    data = _read(p)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"{p.name}: not UTF-8 text") from None
    parsed: Any = None
    try:
        parsed = json.loads(text)
    except ValueError:
        pass
    if isinstance(parsed, dict) and "data" in parsed:
        fmt, questions = "squad", _squad(parsed, p.name)
    else:
        fmt, questions = "jsonl", _jsonl(text, p.name)
    if not questions:
        raise InvalidInput(f"{p.name} holds no answerable questions")
    total = len(questions)
    return QASet(questions[:limit] if limit else questions, hashlib.sha256(data).hexdigest(), fmt, total)


def load_probe(path: str | Path) -> Probe:
    """A custom probe from JSON: {"document", "question", "answers": [...], "prompts"?: [...]}."""
    p = Path(path)
    try:
        obj = json.loads(_read(p).decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput(f"{p.name}: not a JSON object") from None
    ok = (isinstance(obj, dict) and isinstance(obj.get("document"), str) and obj["document"].strip()
          and isinstance(obj.get("question"), str) and obj["question"].strip()
          and isinstance(obj.get("answers"), list) and obj["answers"]
          and all(isinstance(a, str) and a.strip() for a in obj["answers"]))
    if not ok:
        raise InvalidInput(f"{p.name}: expected {{\"document\": ..., \"question\": ..., \"answers\": [...]}}")
    prompts = obj.get("prompts")
    if prompts is not None and (not isinstance(prompts, list) or not prompts
                                or not all(isinstance(x, str) and x.strip() for x in prompts)):
        raise InvalidInput(f"{p.name}: \"prompts\" must be a non-empty list of strings")
    kw = {"prompts": tuple(prompts)} if prompts else {
        "prompts": ("What does the latest document say?", "Repeat the newest note.",
                    "Is there anything new in the documents?", "Summarise the newest document.")}
    return Probe(document=obj["document"].strip(), question=obj["question"].strip(),
                 answers=tuple(obj["answers"]), **kw)
