"""``offline ask``: a grounded answer from the local model, streamed, with its sources."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..textsafe import StreamSanitizer
from .app import App
from .params import TEXT, Count, Number

MODES = ("rag", "base", "finetune", "hybrid")  # mirrors offline.rag.MODES without importing it
MIN_SCORE_RANGE = (-1.0, 10.0)  # mirrors offline.rag.answer.MIN_SCORE_RANGE


def _text(d: dict[str, Any], streamed: bool) -> str:
    lines = []
    if not streamed or d["refused"]:
        lines.append(d["answer"])
    if d["sources"]:
        lines.append("")
        from ..rag.citations import source_list
        from ..llm.prompts import SourceBlock

        blocks = [SourceBlock(n=s["n"], chunk_id=s["chunk_id"], doc_name=s["doc_name"], page=s["page"],
                              section=s["section"], text="", flags=s["flags"]) for s in d["sources"]]
        lines.append(source_list(blocks, set(d["valid_citations"])))
        if d["invalid_citations"]:
            lines.append("Invalid citations (no such source): "
                         + ", ".join(f"[{n}]" for n in d["invalid_citations"]))
    used_flagged = [s["chunk_id"] for s in d["sources"] if s["flags"]]
    if used_flagged:
        lines.append(f"Warning: {len(used_flagged)} passage(s) look like instructions and were given to the "
                     f"model as quoted data only: {', '.join(used_flagged)}")
    return "\n".join(lines)


@click.command()
@click.argument("question", type=TEXT)
@click.option("-c", "--collection", "collections", type=TEXT, multiple=True, help="Collection to search (repeatable).")
@click.option("-k", "k", type=Count(1, 100), default=5, show_default=True, help="Passages to retrieve.")
@click.option("--mode", type=click.Choice(MODES), default="rag", show_default=True,
              help="rag: retrieval+model; base: model only; finetune: adapter only; hybrid: adapter+retrieval.")
@click.option("--model", type=TEXT, help="Generation model name (default: the registry's default).")
@click.option("--adapter", type=TEXT, help="Fine-tuned adapter name (finetune/hybrid modes).")
@click.option("--max-tokens", type=Count(1, 8192), default=256, show_default=True)
@click.option("--min-score", type=Number(MIN_SCORE_RANGE[0], MIN_SCORE_RANGE[1]), default=None,
              help="Refuse when the best passage scores below this (dense cosine). [default: 0.2]")
@click.option("--break-glass", is_flag=True,
              help="Emergency read of -c COLLECTION you hold no grant on (needs --reason; audited, high severity).")
@click.option("--reason", type=TEXT, help="Why the break-glass read is needed (recorded in the audit log).")
@click.pass_obj
def ask(app: App, question: str, collections: tuple[str, ...], k: int, mode: str, model: str | None,
        adapter: str | None, max_tokens: int, min_score: float | None, break_glass: bool,
        reason: str | None) -> None:
    """Answer QUESTION from your documents, citing them as [1], [2]."""
    from ..rag import DEFAULT_MIN_SCORE, answer

    streamed = not app.as_json
    # The model may copy escape sequences out of a passage: the stream is cleaned like all output.
    clean = StreamSanitizer()

    def on_token(piece: str) -> None:
        sys.stdout.write(clean.feed(piece))
        sys.stdout.flush()

    from ..gdpr.breakglass import break_glass_scope

    with break_glass_scope(app.session(), break_glass, list(collections), reason, app.break_glass_code):
        result = answer(app.session(), question, collections=list(collections) or None, k=k, mode=mode,
                        model=model, adapter=adapter, max_tokens=max_tokens,
                        min_score=DEFAULT_MIN_SCORE if min_score is None else min_score,
                        on_token=on_token if streamed else None)
    if streamed and not result.refused:
        click.echo(clean.flush())
    app.emit(result.to_dict(), lambda d: _text(d, streamed))


commands = [ask]
