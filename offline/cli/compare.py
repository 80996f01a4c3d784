"""``offline compare``: base vs RAG vs fine-tune vs hybrid, measured on your own data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .app import App
from .params import TEXT, Count, FsPath, K


def _text(r: dict[str, Any]) -> str:
    lines = [
        f"Compared {', '.join(r['run_order'])} on {r['qa']['questions']} questions "
        f"in {r['duration_s']} s; report in {r['files']['dir']}/report.md"
    ]
    for m in r["modes_order"]:
        f = r["modes"][m]
        if f.get("status") != "ok":
            lines.append(f"  {m:<9} skipped: {f.get('note')}")
            continue
        ttft = f["ttft_s"]["p50"]
        lines.append(
            f"  {m:<9} contains {f['answer_contains']:.3f}  F1 {f['f1']:.3f}  EM {f['exact_match']:.3f}  "
            f"TTFT p50 {'-' if ttft is None else f'{ttft:.2f}s'}  peak RSS {f['peak_rss_mb']} MiB"
        )
    upd = r.get("update") or {}
    if upd.get("status") == "ok":
        u = upd["update_cost"]
        lines.append(
            f"  update: ingest {u['ingest_s']:.2f}s vs fine-tune {u['finetune_s']:.1f}s; new fact "
            f"answered by: {', '.join(m for m, a in upd['after'].items() if a['answered']) or 'none'}"
        )
    elif upd:
        lines.append(f"  update and freshness probe skipped: {upd.get('note')}")
    lines.append(r["recommendation"])
    return "\n".join(lines)


@click.command("compare")
@click.option(
    "--qa",
    "qa",
    required=True,
    type=FsPath(dir_okay=False, path_type=Path),
    help='Questions, in any format `finetune` reads: SQuAD JSON, or JSONL of {"question", "answers": [...]} '
    '(answers empty: unanswerable), {"prompt", "completion"} or {"messages": [...]}.',
)
@click.option(
    "-c",
    "--collection",
    type=TEXT,
    required=True,
    help="Collection holding the documents the questions are about.",
)
@click.option("--adapter", type=TEXT, help="LoRA adapter for the finetune and hybrid modes.")
@click.option("--modes", default="base,rag,finetune,hybrid", show_default=True, help="Comma-separated modes.")
@click.option("--limit", type=Count(1), default=None, help="Ask only the first N questions.")
@click.option(
    "--out",
    "out",
    required=True,
    type=FsPath(file_okay=False, path_type=Path),
    help="Folder for report.md, results.json and the charts.",
)
@click.option("-k", "k", type=K, default=None, help="Chunks retrieved (default: ask's default).")
@click.option(
    "--no-reader", is_flag=True, help="rag: the plain model instead of its retrieval-trained reader."
)
@click.option("--max-tokens", type=Count(1, 2048), default=48, show_default=True)
@click.option("--model", type=TEXT, help="Generation model (default: the kit's default).")
@click.option(
    "--update-steps",
    type=Count(1, 10000),
    default=10,
    show_default=True,
    help="Steps of the one-document fine-tune that measures the cost of an update.",
)
@click.option(
    "--probe",
    "probe",
    type=FsPath(dir_okay=False, path_type=Path),
    help='JSON {"document", "question", "answers"} for the freshness probe (default: a made-up fact).',
)
@click.option("--no-freshness", is_flag=True, help="Skip the update-cost measurement and freshness probe.")
@click.option(
    "--answers",
    "with_answers",
    is_flag=True,
    help="Also write each question, gold and predicted answer into results.json (plaintext).",
)
@click.pass_obj
def compare(
    app: App,
    qa: Path,
    collection: str,
    adapter: str | None,
    modes: str,
    limit: int | None,
    out: Path,
    k: int | None,
    no_reader: bool,
    max_tokens: int,
    model: str | None,
    update_steps: int,
    probe: Path | None,
    no_freshness: bool,
    with_answers: bool,
) -> None:
    """Measure accuracy, latency, memory, update cost and freshness of each mode."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..compare import run_compare
    from ..compare.data import load_probe

    session = app.session()
    probe_obj = load_probe(probe) if probe else None
    bars = Progress(
        TextColumn("{task.description:<20}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(file=app.err),
        transient=True,
        disable=not app.err.isatty(),
    )
    tasks: dict[str, Any] = {}

    def progress(label: str, done: int, total: int) -> None:
        if label not in tasks:
            tasks[label] = bars.add_task(label, total=total)
        bars.update(tasks[label], completed=done, total=total)

    with bars:
        result = run_compare(
            session,
            qa,
            collection,
            out=out,
            adapter=adapter,
            modes=modes,
            limit=limit,
            k=k,
            max_tokens=max_tokens,
            model=model,
            probe=probe_obj,
            freshness=not no_freshness,
            update_steps=update_steps,
            with_answers=with_answers,
            progress=progress,
            reader=not no_reader,
        )
    app.emit({k: v for k, v in result.items() if k != "per_question"}, _text)


commands = [compare]
