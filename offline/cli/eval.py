"""``offline eval ...``: measured quality on public data sets (never on the user's vault)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .app import App
from .params import TEXT, Count, FsPath, K, Number


@click.group("eval")
def eval_group() -> None:
    """Evaluate retrieval (BEIR) and answers (SQuAD) in a temporary vault."""


def _qa_text(r: dict[str, Any]) -> str:
    lat = r["latency_s"]

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}s"

    ad = r.get("adapter")
    lines = [
        f"SQuAD QA, mode {r['mode']}, {r['questions']} questions, k={r['k']}, "
        f"{r['indexed_documents']} paragraphs indexed"
        + (f", adapter {ad['name']} ({ad['recipe']})" if ad else ""),
        f"  exact match        {r['exact_match']:.3f}",
        f"  F1                 {r['f1']:.3f}",
        f"  answer contains    {r['answer_contains']:.3f}",
    ]
    if r["retrieval_hit_rate"] is not None:
        lines += [
            f"  retrieval hit rate {r['retrieval_hit_rate']:.3f}  (a retrieved chunk holds a gold answer)",
            f"  gold paragraph     {r['gold_paragraph_rate']:.3f}",
            f"  refused            {r['refused_rate']:.3f}",
        ]
        g = r.get("grounding") or {}
        fig = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        lines += [
            f"  reader             {'yes' if r.get('reader') else 'no (plain model)'}",
            f"  cited in text      {fig(g.get('cited'))}  (of answered; the model wrote a valid [n])",
            f"  citation correct   {fig(g.get('cite_correct'))}  (the cited chunk holds a gold answer)",
            f"  support            {fig(g.get('support'))}",
            f"  false refusal      {fig(g.get('false_refusal'))}  (answerable questions refused)",
            f"  refusal, no gold   {fig(g.get('refusal_unanswerable'))}  "
            f"({r['unanswerable_questions']} questions asked with their gold paragraph removed)",
        ]
    lines.append(
        f"  latency total p50 {fmt(lat['total']['p50'])} p95 {fmt(lat['total']['p95'])}; "
        f"ttft p50 {fmt(lat['ttft']['p50'])}; retrieval p50 {fmt(lat['retrieval']['p50'])}; "
        f"decode {r['decode_tok_s_mean']} tok/s"
    )
    return "\n".join(lines)


@eval_group.command("qa")
@click.option(
    "--squad",
    "squad",
    required=True,
    type=FsPath(exists=True, dir_okay=False, path_type=Path),
    help="SQuAD v1.1 JSON file.",
)
@click.option("--limit", type=Count(1), default=100, show_default=True, help="Questions to ask.")
@click.option(
    "--mode",
    type=click.Choice(["rag", "base", "finetune", "hybrid"]),
    default="rag",
    show_default=True,
    help="hybrid: --adapter with retrieval (the prompt `finetune create --raft` trains on).",
)
@click.option("--adapter", type=TEXT, help="finetune/hybrid: a LoRA adapter from your vault.")
@click.option(
    "--unanswerable",
    type=Count(0, 10000),
    default=10,
    show_default=True,
    help="rag/hybrid: also ask N questions with their gold paragraph removed (refusal rate).",
)
@click.option("-k", "k", type=K, default=None, help="Passages retrieved (default: ask's default).")
@click.option("--max-tokens", type=Count(1, 2048), default=48, show_default=True)
@click.option("--model", type=TEXT, help="Generation model name.")
@click.option(
    "--no-reader", is_flag=True, help="rag: the plain model instead of its retrieval-trained reader."
)
@click.pass_obj
def eval_qa(
    app: App,
    squad: Path,
    limit: int,
    mode: str,
    adapter: str | None,
    unanswerable: int,
    k: int | None,
    max_tokens: int,
    model: str | None,
    no_reader: bool,
) -> None:
    """Exact match, F1, citations, support, refusals, retrieval hit rate and latencies on SQuAD paragraphs."""
    from ..eval.qa import evaluate_squad

    # Only an adapter needs the vault (it is read from there); SQuAD itself never enters it.
    session = app.session() if adapter else None
    kw = dict(
        k=k,
        max_tokens=max_tokens,
        model=model,
        reader=not no_reader,
        adapter=adapter,
        session=session,
        unanswerable=unanswerable,
    )
    if app.as_json:
        result = evaluate_squad(squad, limit, mode, **kw)
    else:
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task("questions", total=limit)
            result = evaluate_squad(
                squad, limit, mode, **kw, progress=lambda i, n: bar.update(task, completed=i, total=n)
            )
    app.emit(result, _qa_text)


def _beir_text(r: dict[str, Any]) -> str:
    lines = [
        f"BEIR {r['dataset']} ({r['split']}): {r['queries']} queries, {r['documents']} documents, "
        f"{r['chunks']} chunks; model {r['embedding_model']}",
        f"  {'mode':<8} {'nDCG@10':>8} {'Recall@100':>11} {'MRR@10':>8} {'p50 ms':>8}",
    ]
    for mode, m in r["metrics"].items():
        lines.append(
            f"  {mode:<8} {m['ndcg@10']:>8.4f} {m['recall@100']:>11.4f} {m['mrr@10']:>8.4f} "
            f"{r['timings']['search_ms_p50'][mode]:>8.2f}"
        )
    return "\n".join(lines)


@eval_group.command("retrieval")
@click.option(
    "--beir",
    "beir",
    required=True,
    type=FsPath(exists=True, file_okay=False, path_type=Path),
    help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/test.tsv.",
)
@click.option("--limit", type=Count(1), default=None, help="Evaluate at most N queries.")
@click.option("--rrf-k", type=Number(0, 1e6), default=60.0, show_default=True)
@click.option("--w-dense", type=Number(0, 1e6), default=1.0, show_default=True)
@click.option("--w-bm25", type=Number(0, 1e6), default=1.0, show_default=True)
@click.pass_obj
def eval_retrieval(
    app: App, beir: Path, limit: int | None, rrf_k: float, w_dense: float, w_bm25: float
) -> None:
    """nDCG@10, Recall@100 and MRR@10 of dense, BM25 and hybrid retrieval on a BEIR folder."""
    from ..eval.retrieval import evaluate_beir

    result = evaluate_beir(beir, limit=limit, rrf_k=rrf_k, w_dense=w_dense, w_bm25=w_bm25)
    app.emit(result, _beir_text)


commands = [eval_group]
