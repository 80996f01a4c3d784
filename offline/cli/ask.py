"""``offline ask``: a grounded answer from the local model, checked against its sources, then printed."""

from __future__ import annotations

from typing import Any

import click

from ..textsafe import StreamSanitizer, one_line
from .app import App
from .params import TEXT, Count, K, Number

MODES = ("rag", "base", "finetune", "hybrid")  # mirrors offline.rag.MODES without importing it
RETRIEVAL_MODES = ("rag", "hybrid")
MIN_SCORE_RANGE = (-1.0, 10.0)  # mirrors offline.rag.answer.MIN_SCORE_RANGE
DEFAULT_K = 3  # mirrors offline.rag.DEFAULT_K (the k that measured best with the reader)


def _closest(d: dict[str, Any]) -> list[str]:
    lines = ["", "Closest passages:"]
    for i, c in enumerate(d["closest"], 1):
        loc = ", ".join(str(x) for x in (f"p. {c['page']}" if c.get("page") else None, c.get("section")) if x)
        lines.append(one_line(f" {i}. {c['doc_name']}{', ' + loc if loc else ''} (chunk {c['chunk_id']})"))
        lines.append(one_line(f"    {c['text']}"))
    return lines


def _text(d: dict[str, Any], streamed: bool) -> str:
    lines = []
    if not streamed or d["refused"]:
        lines.append(d["answer"])
    if d["refused"]:
        # A conflicting value: where the model read it, then what the source gives for the question.
        if d.get("quote"):
            lines.append(one_line(f'The model read it from [{d["quote"]["n"]}]: "{d["quote"]["text"]}"'))
        for c in ((d.get("grounding") or {}).get("conflicts") or [])[:1]:
            words = ", ".join(c["for"])
            lines.append(one_line(f'For "{words}", source [{c["n"]}] says: "{c["sentence"]}"'))
        return "\n".join(lines + (_closest(d) if d.get("closest") else []))
    for c in d["citations"]:
        if c.get("corrected_from"):
            was = ", ".join(f"[{n}]" for n in c["corrected_from"])
            lines.append(f"(citation corrected: {was} does not hold this; [{c['n']}] does)")
        elif c.get("inferred"):
            lines.append(f"(citation inferred, the model wrote none: [{c['n']}] supports it best)")
    if d.get("quote"):
        lines.append(one_line(f'Source [{d["quote"]["n"]}] says: "{d["quote"]["text"]}"'))
    if d.get("support") is not None:
        lines.append(f"Support: {d['support']:.2f} (share of the answer's words found in the cited passage)")
    if d.get("unsupported"):
        lines.append(
            "Warning: not found in any retrieved passage, check before relying on it: "
            + ", ".join(d["unsupported"])
        )
    if d["sources"]:
        lines.append("")
        from ..llm.prompts import SourceBlock
        from ..rag.citations import source_list

        blocks = [
            SourceBlock(
                n=s["n"],
                chunk_id=s["chunk_id"],
                doc_name=s["doc_name"],
                page=s["page"],
                section=s["section"],
                text="",
                flags=s["flags"],
            )
            for s in d["sources"]
        ]
        lines.append(source_list(blocks, set(d["valid_citations"])))
        if d["invalid_citations"]:
            lines.append(
                "Invalid citations (no such source): " + ", ".join(f"[{n}]" for n in d["invalid_citations"])
            )
    used_flagged = [s["chunk_id"] for s in d["sources"] if s["flags"]]
    if used_flagged:
        lines.append(
            f"Warning: {len(used_flagged)} passage(s) look like instructions and were given to the "
            f"model as quoted data only: {', '.join(used_flagged)}"
        )
    return "\n".join(lines)


@click.command()
@click.argument("question", type=TEXT)
@click.option(
    "-c", "--collection", "collections", type=TEXT, multiple=True, help="Collection to search (repeatable)."
)
@click.option("-k", "k", type=K, default=DEFAULT_K, show_default=True, help="Passages to retrieve.")
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default="rag",
    show_default=True,
    help="rag: retrieval+model; base: model only; finetune: adapter only; hybrid: adapter+retrieval.",
)
@click.option("--model", type=TEXT, help="Generation model name (default: the registry's default).")
@click.option("--adapter", type=TEXT, help="Fine-tuned adapter name (finetune/hybrid modes).")
@click.option(
    "--no-reader", is_flag=True, help="rag: serve the plain model, not its retrieval-trained reader."
)
@click.option("--max-tokens", type=Count(1, 8192), default=256, show_default=True)
@click.option(
    "--min-score",
    type=Number(MIN_SCORE_RANGE[0], MIN_SCORE_RANGE[1]),
    default=None,
    help="Refuse when the best passage scores below this (dense cosine). [default: 0.2]",
)
@click.option(
    "--min-support",
    type=Number(0.0, 1.0),
    default=None,
    help="Refuse when the answer's support in its cited passage is below this. [default: 0.5]",
)
@click.option(
    "--break-glass",
    is_flag=True,
    help="Emergency read of -c COLLECTION you hold no grant on (needs --reason; audited, high severity).",
)
@click.option("--reason", type=TEXT, help="Why the break-glass read is needed (recorded in the audit log).")
@click.pass_obj
def ask(
    app: App,
    question: str,
    collections: tuple[str, ...],
    k: int,
    mode: str,
    model: str | None,
    adapter: str | None,
    no_reader: bool,
    max_tokens: int,
    min_score: float | None,
    min_support: float | None,
    break_glass: bool,
    reason: str | None,
) -> None:
    """Answer QUESTION from your documents, citing them as [1], [2].

    With retrieval the answer is checked against its sources before it is printed, so a guess the
    passages do not support is replaced by a refusal and never shown.
    """
    from ..llm.threads import check as check_threads
    from ..rag import DEFAULT_MIN_SCORE, DEFAULT_MIN_SUPPORT, answer

    check_threads()  # a bad OFFLINE_N_THREADS fails now, not after the vault is unlocked

    # Retrieval answers are short and must pass the grounding checks first: only the model-only
    # modes stream. The model may copy escape sequences out of a passage: output is cleaned.
    streamed = not app.as_json and mode not in RETRIEVAL_MODES
    clean = StreamSanitizer()

    def on_token(piece: str) -> None:
        app.out.write(clean.feed(piece))
        app.out.flush()

    from ..gdpr.breakglass import break_glass_scope

    with break_glass_scope(app.session(), break_glass, list(collections), reason, app.break_glass_code):
        result = answer(
            app.session(),
            question,
            collections=list(collections) or None,
            k=k,
            mode=mode,
            model=model,
            adapter=adapter,
            max_tokens=max_tokens,
            reader=not no_reader,
            min_score=DEFAULT_MIN_SCORE if min_score is None else min_score,
            min_support=DEFAULT_MIN_SUPPORT if min_support is None else min_support,
            on_token=on_token if streamed else None,
        )
    if streamed and not result.refused:
        app.echo(clean.flush())
    app.emit(result.to_dict(), lambda d: _text(d, streamed))


commands = [ask]
