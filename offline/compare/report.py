"""``report.md`` and ``results.json`` of a comparison: the measured decision matrix and its detail."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from . import charts

METHOD = {
    "answers": "each question goes through offline.rag.answer as `offline ask` runs it (greedy decoding); "
    "[n] citation markers are removed before scoring; a refusal scores as an empty answer",
    "exact_match_f1": "official SQuAD v1.1 normalisation (lower case, no punctuation or articles), best over "
    "the gold answers",
    "answer_contains": "the normalised gold answer appears inside the normalised answer (word bounds)",
    "citation_hit_rate": "share of questions where a chunk the answer cited (a valid [n], written or "
    "inferred) holds a gold answer",
    "cited_rate": "of answered questions, the share whose answer holds a valid [n] the model wrote itself "
    "(inferred ones excluded)",
    "cite_correct_rate": "of answered questions that carry a citation, the share whose cited chunk holds "
    "a gold answer",
    "support": "offline.rag.grounding: share of the answer's content words found in its cited chunk, weakest "
    "sentence; mean over answered questions",
    "false_refusal_rate": "share of (answerable) questions refused: low relevance, the reader declined, or "
    "support under the threshold",
    "refusal_unanswerable_rate": "share of unanswerable questions (no gold answer in the QA file) refused; "
    "retrieval modes only",
    "scoring": "one scorer for compare, eval qa and scripts/eval_reader.py: "
    "offline.eval.grounded.score_answer",
    "hybrid": "the adapter served with retrieval on the prompt `ask` builds, the prompt `finetune create "
    "--raft` trains on; a closed-book adapter is served a prompt it was never trained on",
    "recommendation": "the mode with the best answer-contains rate (a retrieval mode within 0.05 of it is "
    "preferred: it cites and learns a document by ingest); good enough means answer "
    "contains >= 0.60 and, where measured, citation correct >= 0.85, refusal on unanswerable "
    ">= 0.80, false refusal <= 0.10 (the goals of scripts/eval_reader.py)",
    "retrieval_hit_rate": "share of questions where any retrieved chunk holds a gold answer",
    "ttft": "seconds from the request to the first streamed token (prompt processing), over every question "
    "the model saw (also drafts the grounding checks refused)",
    "decode_tok_s": "tokens after the first divided by the time after the first token",
    "peak_rss": "psutil RSS of this process sampled every 50 ms while the mode answered; cached llama.cpp "
    "engines are dropped before each mode; torch and the embedding model stay resident once "
    "loaded, so modes run base, finetune, rag, hybrid (lightest first)",
    "disk": "bytes of the files a mode needs to answer: generation model, plus collection database and "
    "embedding model (retrieval), plus the encrypted adapter (fine-tune)",
    "update_cost": "ingest: offline.ingest.ingest_records of the probe document into the collection, "
    "embedding model already loaded; fine-tune: offline.finetune.create_adapter on that "
    "document alone (load base, train the given steps, export GGUF, encrypt); both undone after",
    "freshness": "the probe question is asked under each mode before and after the update; answered = the "
    "gold answer appears in the answer",
}


def _f(v: Any, digits: int = 3, unit: str = "") -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}{unit}"
    return f"{v}{unit}"


def _mib(n: int | None) -> str:
    return "–" if n is None else f"{n / 2**20:.0f} MiB"


def _ok(results: dict[str, Any]) -> list[str]:
    return [m for m in results["modes_order"] if results["modes"][m].get("status") == "ok"]


def _best(
    results: dict[str, Any], key: str, sub: str | None = None, low: bool = False
) -> tuple[str, float] | None:
    vals = []
    for m in _ok(results):
        v = results["modes"][m].get(key)
        v = v.get(sub) if sub and isinstance(v, dict) else v
        if v is not None:
            vals.append((m, float(v)))
    if not vals:
        return None
    return min(vals, key=lambda x: x[1]) if low else max(vals, key=lambda x: x[1])


def _freshness_cell(fresh: dict[str, Any], m: str) -> str:
    if fresh.get("status") != "ok" or m not in fresh.get("after", {}):
        return "–"
    b, a = fresh["before"][m]["answered"], fresh["after"][m]["answered"]
    return f"before {'✔' if b else '✘'} / after {'✔' if a else '✘'}"


def _update_cell(results: dict[str, Any], m: str) -> str:
    upd = (results.get("update") or {}).get("update_cost")
    if not upd:
        return "–"
    if m == "base":
        return "cannot learn it"
    if m == "rag":
        return f"ingest {upd['ingest_s']:.2f} s"
    if m == "finetune":
        return f"fine-tune {upd['finetune_s']:.1f} s"
    return f"ingest {upd['ingest_s']:.2f} s (adapter frozen)"


def verdicts(results: dict[str, Any]) -> dict[str, str]:
    """One measured sentence per matrix row (no adjectives that the numbers do not carry)."""
    ms = results["modes"]
    out: dict[str, str] = {}
    fast = _best(results, "ttft_s", "p50", low=True)
    slow = _best(results, "ttft_s", "p50")
    if fast and slow and fast[0] != slow[0] and fast[1] > 0:
        out["speed"] = (
            f"{fast[0]} reaches the first token soonest ({fast[1]:.2f} s p50); "
            f"{slow[0]} takes {slow[1]:.2f} s ({slow[1] / fast[1]:.1f}×), mostly prompt processing "
            f"of {_f(ms[slow[0]].get('prompt_tokens_mean'), 0)} vs "
            f"{_f(ms[fast[0]].get('prompt_tokens_mean'), 0)} prompt tokens"
        )
    elif fast:
        out["speed"] = f"{fast[0]}: {fast[1]:.2f} s to first token (p50)"
    upd = (results.get("update") or {}).get("update_cost")
    if upd:
        out["cost"] = (
            f"adding one document: ingest {upd['ingest_s']:.2f} s vs fine-tune "
            f"{upd['finetune_s']:.1f} s ({upd['finetune_steps']} steps, "
            f"{_f(upd.get('ratio_finetune_over_ingest'), 0)}× longer)"
        )
        full = (results.get("adapter") or {}).get("train_duration_s")
        if full:
            out["cost"] += f"; training the compared adapter took {full:.0f} s"
    fresh = results.get("update") or {}
    if fresh.get("status") == "ok":
        yes = [m for m in fresh["after"] if fresh["after"][m]["answered"]]
        no = [m for m in fresh["after"] if not fresh["after"][m]["answered"]]
        upd_ans = (fresh.get("finetune_updated") or {}).get("answered")
        out["adaptability"] = (
            f"after the update the new fact was answered by {', '.join(yes) or 'no mode'}"
            f"{'; not by ' + ', '.join(no) if no else ''}; the adapter fine-tuned on the "
            f"document {'did' if upd_ans else 'did not'} answer it"
        )
    best = _best(results, "answer_contains")
    bf1 = _best(results, "f1")
    if best and bf1:
        rest = ", ".join(f"{m} {ms[m]['answer_contains']:.2f}" for m in _ok(results) if m != best[0])
        out["accuracy"] = (
            f"{best[0]} answers most questions ({best[1]:.2f} contain the gold answer"
            f"{'; ' + rest if rest else ''}); best token F1: {bf1[0]} {bf1[1]:.3f}"
        )
    lo = _best(results, "peak_rss_mb", low=True)
    hi = _best(results, "peak_rss_mb")
    if lo and hi:
        out["memory"] = (
            f"peak RSS from {lo[1]:.0f} MiB ({lo[0]}) to {hi[1]:.0f} MiB ({hi[0]}); on disk "
            + ", ".join(f"{m} {_mib(ms[m].get('disk_bytes'))}" for m in _ok(results))
        )
    return out


# What "good enough" means (scripts/eval_reader.py's goals for the reader).
GOALS = {
    "answer_contains": ("answer contains", ">=", 0.60),
    "cite_correct_rate": ("citation correct", ">=", 0.85),
    "refusal_unanswerable_rate": ("refusal on unanswerable", ">=", 0.80),
    "false_refusal_rate": ("false refusal", "<=", 0.10),
}
RETRIEVAL = ("rag", "hybrid")
NEAR = 0.05  # a retrieval mode this close to the best is preferred: it cites, and an ingest updates it


def missed_goals(fig: dict[str, Any]) -> list[str]:
    """The goals of :data:`GOALS` a mode's figures miss (unmeasured figures are not held against it)."""
    out = []
    for key, (label, op, goal) in GOALS.items():
        v = fig.get(key)
        if v is not None and not (v >= goal if op == ">=" else v <= goal):
            out.append(f"{label} {v:.2f} (goal {op} {goal:.2f})")
    return out


def recommendation(results: dict[str, Any]) -> str:
    """One line, derived from the figures only: which mode to use on this data and why, or that none
    is good enough (and what misses)."""
    ms = results["modes"]
    ok = [m for m in _ok(results) if ms[m].get("answer_contains") is not None]
    if not ok:
        return "Recommendation: none — no mode produced figures."
    top = max(ok, key=lambda m: (ms[m]["answer_contains"], -(ms[m]["ttft_s"].get("p50") or 0)))
    pick = top
    near = [m for m in ok if m in RETRIEVAL and ms[m]["answer_contains"] >= ms[top]["answer_contains"] - NEAR]
    if top not in RETRIEVAL and near:
        pick = max(near, key=lambda m: ms[m]["answer_contains"])
    f = ms[pick]
    why = [f"answer contains {f['answer_contains']:.2f}"]
    for key in ("cite_correct_rate", "refusal_unanswerable_rate", "false_refusal_rate"):
        if f.get(key) is not None and pick in RETRIEVAL:  # without retrieval nothing cites or refuses
            why.append(f"{GOALS[key][0]} {f[key]:.2f}")
    if f["ttft_s"].get("p50") is not None:
        why.append(f"TTFT p50 {f['ttft_s']['p50']:.2f} s")
    if pick != top:
        why.append(f"within {NEAR:.2f} of {top} ({ms[top]['answer_contains']:.2f}), and it cites its sources")
    elif len(ok) > 1:
        second = max((m for m in ok if m != pick), key=lambda m: ms[m]["answer_contains"])
        why.append(f"next best {second} {ms[second]['answer_contains']:.2f}")
    missed = missed_goals(f)
    if missed:
        return (
            f"Recommendation: no mode is good enough on this data; the best is {pick} "
            f"({', '.join(why)}), which misses {', '.join(missed)}."
        )
    return f"Recommendation: use {pick} on this data ({', '.join(why)})."


def render_markdown(results: dict[str, Any], chart_files: list[str]) -> str:
    """The report: setup, decision matrix, detail tables, freshness probe, charts, method."""
    ms = results["modes"]
    ok = _ok(results)
    v = verdicts(results)
    qa = results["qa"]
    ad = results.get("adapter")
    mach = results.get("machine") or {}
    lines = [
        "# RAG vs fine-tuning vs hybrid, measured",
        "",
        f"{qa['questions']} questions ({qa.get('unanswerable') or 0} of them unanswerable) "
        f"from `{qa['file']}` "
        f"({qa['format']}, sha256 {qa['sha256'][:12]}…) over "
        f"collection `{results['collection']}`; model `{results['model']['name']}` "
        f"({results['model']['file']}); adapter "
        + (
            f"`{ad['name']}` ({ad.get('recipe')}, {_f(ad.get('train_examples'))} examples, "
            f"{_f(ad.get('steps'))} steps)"
            if ad
            else "none"
        )
        + f"; k={results['settings']['k']}, max {results['settings']['max_tokens']} new tokens. "
        f"Run {results['run']} at {results['created_at']}, {results['duration_s']} s on "
        f"{mach.get('cpus')} CPUs (1-min load average {mach.get('load_avg_1m_start')} at start, "
        f"{mach.get('load_avg_1m')} at end).",
        "",
    ]
    skipped = [m for m in results["modes_order"] if ms[m].get("status") != "ok"]
    for m in skipped:
        lines.append(f"> mode `{m}` skipped: {ms[m].get('note')}")
    if skipped:
        lines.append("")
    lines += [
        "## Decision matrix",
        "",
        "| | " + " | ".join(ok) + " | what it shows |",
        "|---|" + "---|" * len(ok) + "---|",
    ]

    def row(title: str, cell, key: str) -> None:
        lines.append(f"| **{title}** | " + " | ".join(cell(m) for m in ok) + f" | {v.get(key, '–')} |")

    row(
        "Inference speed (TTFT p50 / p95, decode)",
        lambda m: (
            f"{_f(ms[m]['ttft_s']['p50'], 2)} / {_f(ms[m]['ttft_s']['p95'], 2)} s, "
            f"{_f(ms[m]['decode_tok_s']['mean'], 0)} tok/s"
        ),
        "speed",
    )
    row("Cost of an update (one new document)", lambda m: _update_cell(results, m), "cost")
    row(
        "Adaptability (new fact answered)",
        lambda m: _freshness_cell(results.get("update") or {}, m),
        "adaptability",
    )
    row(
        "Accuracy (contains / F1 / EM)",
        lambda m: f"{ms[m]['answer_contains']:.2f} / {ms[m]['f1']:.3f} / {ms[m]['exact_match']:.2f}",
        "accuracy",
    )
    row(
        "Memory (peak RSS / disk)",
        lambda m: f"{_f(ms[m]['peak_rss_mb'], 0)} MiB / {_mib(ms[m].get('disk_bytes'))}",
        "memory",
    )
    lines += [
        "",
        "## Accuracy",
        "",
        "| mode | questions (+ unanswerable) | exact match | token F1 | answer contains | "
        "citation hit | cited in text | citation correct | support | retrieval hit | false refusal | "
        "refusal, unanswerable |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in ok:
        f = ms[m]
        lines.append(
            f"| {m} | {f['questions']} (+{f.get('unanswerable_questions') or 0}) | "
            f"{_f(f['exact_match'])} | {_f(f['f1'])} | "
            f"{_f(f['answer_contains'])} | {_f(f['citation_hit_rate'])} | {_f(f['cited_rate'])} | "
            f"{_f(f.get('cite_correct_rate'))} | {_f(f.get('support_mean'))} | "
            f"{_f(f['retrieval_hit_rate'])} | {_f(f['false_refusal_rate'])} | "
            f"{_f(f.get('refusal_unanswerable_rate'))} |"
        )
    if ad and "hybrid" in ok and ad.get("recipe") != "raft":
        lines += [
            "",
            f"> hybrid served `{ad['name']}`, a {ad.get('recipe')} adapter, on ask's retrieval prompt, "
            "which it was never trained on; `offline finetune create --raft` trains on that prompt.",
        ]
    lines += [
        "",
        "## Speed and memory",
        "",
        "| mode | TTFT p50 | TTFT p95 | total p50 | total p95 | decode tok/s "
        "(mean) | prompt tokens (mean) | model load | peak RSS | RSS at start | wall |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in ok:
        f = ms[m]
        lines.append(
            f"| {m} | {_f(f['ttft_s']['p50'], 3, ' s')} | {_f(f['ttft_s']['p95'], 3, ' s')} | "
            f"{_f(f['total_s']['p50'], 3, ' s')} | {_f(f['total_s']['p95'], 3, ' s')} | "
            f"{_f(f['decode_tok_s']['mean'], 1)} | {_f(f['prompt_tokens_mean'], 0)} | "
            f"{_f(f['model_load_s'], 2, ' s')} | {_f(f['peak_rss_mb'], 0, ' MiB')} | "
            f"{_f(f['rss_start_mb'], 0, ' MiB')} | {_f(f['wall_s'], 1, ' s')} |"
        )
    d = results["disk"]
    lines += [
        "",
        f"Disk: vault {_mib(d['vault_bytes'])} (collection database {_mib(d['collection_bytes'])}), "
        f"adapter {_mib(d['adapter_bytes'])}, generation model {_mib(d['model_bytes'])}, "
        f"embedding model {_mib(d['embedder_bytes'])}.",
        "",
    ]
    fresh = results.get("update") or {}
    lines += ["## Update cost and freshness probe", ""]
    if fresh.get("status") != "ok":
        lines += [f"Not measured: {fresh.get('note')}", ""]
    else:
        u = fresh["update_cost"]
        lines += [
            f"New fact: _{fresh['fact']}_",
            "",
            f"Question: _{fresh['question']}_ (gold: {', '.join(fresh['answers'])})",
            "",
            f"- ingest the document: **{u['ingest_s']:.2f} s** ({u['ingest_chunks']} chunk(s))",
            f"- fine-tune a LoRA on it: **{u['finetune_s']:.1f} s** ({u['finetune_steps']} steps, "
            f"{_f(u['finetune_train_s'], 1)} s of it training, lr {u['finetune_lr']}, rank "
            f"{u['finetune_rank']}; peak RSS {_f(u['finetune_peak_rss_mb'], 0)} MiB)",
            "",
            "| mode | before update | after update | fact retrieved | answer after update |",
            "|---|---|---|---|---|",
        ]
        for m in fresh["after"]:
            b, a = fresh["before"][m], fresh["after"][m]
            lines.append(
                f"| {m} | {_f(b['answered'])} | {_f(a['answered'])} | {_f(a['retrieved_fact'])} | "
                f"{_excerpt(a['answer'])} |"
            )
        fu = fresh.get("finetune_updated")
        if fu:
            lines.append(
                f"| finetune, adapter trained on the document | – | {_f(fu['answered'])} | no retrieval | "
                f"{_excerpt(fu['answer'])} |"
            )
        lines.append("")
    lines += ["## Charts", ""]
    lines += [f"![{c}]({c})" for c in chart_files]
    lines += ["", "## Method", ""]
    lines += [f"- **{k}**: {t}" for k, t in METHOD.items()]
    lines += ["", results.get("recommendation") or recommendation(results), ""]
    return "\n".join(lines)


def _excerpt(text: str, n: int = 90) -> str:
    t = " ".join((text or "").split()).replace("|", "\\|")
    return t if len(t) <= n else t[: n - 1] + "…"


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # O_CREAT would keep an old file's mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


def write_outputs(out: Path, results: dict[str, Any]) -> dict[str, Any]:
    """Charts, then results.json, then report.md (each written to a temp name and renamed)."""
    chart_files = charts.write_charts(out, results)
    results["charts"] = chart_files
    results["recommendation"] = recommendation(results)
    blob = json.dumps(results, indent=2, sort_keys=True, default=str).encode("utf-8")
    _write(out / "results.json", blob)
    _write(out / "report.md", render_markdown(results, chart_files).encode("utf-8"))
    return {
        "dir": str(out),
        "report": "report.md",
        "results": "results.json",
        "charts": chart_files,
        "results_sha256": hashlib.sha256(blob).hexdigest(),
    }
