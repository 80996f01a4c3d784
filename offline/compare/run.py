"""Run the comparison: every mode over the same questions, then the update cost and the freshness probe.

Method (also written into every report):

- Modes run one after another in one process, lightest first (base, finetune, rag, hybrid), each
  through :func:`offline.rag.answer` exactly as ``offline ask`` runs it, with greedy decoding, and
  each answer is scored by :func:`offline.eval.grounded.score_answer` (as ``eval qa`` scores).
- hybrid is the adapter served with retrieval on ask's own prompt (system rules, ``[n]`` sources,
  question): the prompt ``finetune create --raft`` trains on, so a RAFT adapter is served as it was
  trained. A closed-book adapter never saw that prompt; the report says so.
- Questions with no gold answer are unanswerable: they give the refusal rate, never accuracy.
- Before each mode the cached llama.cpp engines are dropped, so a mode's peak RSS holds its own
  model (and adapter) only. torch and the embedding model cannot be unloaded from a running Python
  process: once retrieval has run they stay resident, which is why the retrieval modes run last.
- Update cost: one new document is ingested into the collection (embedding model already loaded),
  and separately a LoRA is fine-tuned on that document alone for a few steps with the full
  ``offline finetune create`` pipeline (load base, train, export GGUF, encrypt). Both are undone
  afterwards: the document is removed and the update adapter deleted, so the vault is as before.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import AccessDenied, OfflineError, ParameterError, UsageError
from ..eval import metrics
from ..limits import check_k
from ..rag.citations import strip_citations
from . import measure
from .data import DEFAULT_PROBE, Probe, Question, load_qa

MODE_ORDER = ("base", "finetune", "rag", "hybrid")  # execution order: lightest resident set first
DISPLAY_ORDER = ("base", "rag", "finetune", "hybrid")
ADAPTER_MODES = ("finetune", "hybrid")
RETRIEVAL_MODES = ("rag", "hybrid")
DEFAULT_MAX_TOKENS = 48
DEFAULT_UPDATE_STEPS = 10
UPDATE_LR = 1e-3  # a few steps at the default 2e-4 barely move a LoRA; give the update a fair chance
RESULTS_VERSION = 1

# (label, done, total): the CLI draws rich progress bars from these calls.
Progress = Callable[[str, int, int], None]


def parse_modes(modes: str | Sequence[str] | None) -> list[str]:
    """``"base,rag"`` or a list -> validated mode names in the order given, without repeats."""
    if modes is None:
        return list(DISPLAY_ORDER)
    items = modes.split(",") if isinstance(modes, str) else list(modes)
    out: list[str] = []
    for m in (x.strip().lower() for x in items):
        if not m:
            continue
        if m not in DISPLAY_ORDER:
            raise UsageError(f"unknown mode {m!r} (modes: {', '.join(DISPLAY_ORDER)})")
        if m not in out:
            out.append(m)
    if not out:
        raise ParameterError("{modes} names no mode", "modes")
    return out


def prepare_out(out: str | Path) -> Path:
    """Create the output folder (0700 when new) and prove it is writable before the long run starts."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ParameterError("{out} {path} exists and is not a folder", "out", path=p)
    try:
        p.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ParameterError(
            "cannot write to {out} {path}: {why}", "out", path=p, why=exc.__class__.__name__
        ) from None
    return p


def _score(ans: Any, q: Question, with_answer: bool) -> dict[str, Any]:
    from ..eval.grounded import score_answer

    row = {"id": q.qid, "answerable": bool(q.answers), **score_answer(ans, q.answers)}
    pred = row.pop("prediction")
    if with_answer:
        row.update(question=q.question, prediction=pred, gold=list(q.answers))
    return row


def _aggregate(rows: list[dict[str, Any]], retrieving: bool) -> dict[str, Any]:
    """Quality figures from :func:`offline.eval.grounded.summarise` (one definition for compare,
    eval qa and scripts/eval_reader.py), then speed."""
    from ..eval.grounded import summarise

    g = summarise(rows)
    answerable = [r for r in rows if r["answerable"]]
    n = len(answerable)
    answered = [r for r in rows if not r["refused"]]
    loads = [r["load_s"] for r in rows if r.get("load_s") is not None]
    return {
        "questions": n,
        "unanswerable_questions": len(rows) - n,
        "exact_match": g["em"],
        "f1": g["f1"],
        "answer_contains": g["contains"],
        "refused_rate": round(sum(r["refused"] for r in answerable) / n, 4) if n else None,
        "citation_hit_rate": g["citation_hit"],
        "cited_rate": g["cited"],
        "retrieval_hit_rate": g["retrieval_hit"],
        "false_refusal_rate": g["false_refusal"],
        # Without retrieval nothing refuses: a refusal rate on unanswerable questions says nothing then.
        "refusal_unanswerable_rate": g["refusal_unanswerable"] if retrieving else None,
        "cite_correct_rate": g["cite_correct"],
        "support_mean": g["support"],
        # Every question the model saw (a grounding refusal comes after generation; only a refusal
        # for low relevance has no first token).
        "ttft_s": measure.spread(r["ttft_s"] for r in rows if r["ttft_s"] is not None and r["tokens"]),
        "total_s": measure.spread(r["total_s"] for r in rows if r["total_s"] is not None),
        "decode_tok_s": measure.spread(r["decode_tok_s"] for r in answered if (r["tokens"] or 0) > 1),
        "tokens_mean": round(sum(r["tokens"] or 0 for r in answered) / len(answered), 1)
        if answered
        else None,
        "prompt_tokens_mean": (
            round(sum(r["prompt_tokens"] or 0 for r in answered) / len(answered), 1) if answered else None
        ),
        # The first call loads the model (and adapter); later calls hit the engine cache.
        "model_load_s": round(max(loads), 3) if loads else None,
    }


def _ask(
    session: Any,
    question: str,
    mode: str,
    *,
    collection: str,
    adapter: str | None,
    k: int,
    max_tokens: int,
    model: str | None,
    min_score: float,
    reader: bool = True,
) -> Any:
    from ..rag import answer

    return answer(
        session,
        question,
        collections=[collection] if mode in RETRIEVAL_MODES else None,
        k=k,
        mode=mode,
        model=model,
        adapter=adapter if mode in ADAPTER_MODES else None,
        max_tokens=max_tokens,
        min_score=min_score,
        reader=reader,
    )


def _drop_engines() -> None:
    from ..llm.engine import clear_cache

    clear_cache()
    gc.collect()


def run_mode(
    session: Any,
    mode: str,
    questions: list[Question],
    *,
    collection: str,
    adapter: str | None,
    k: int,
    max_tokens: int,
    model: str | None,
    min_score: float,
    with_answers: bool = False,
    progress: Progress | None = None,
    reader: bool = True,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Ask every question under ``mode``; (figures, per-question rows)."""
    retrieving = mode in RETRIEVAL_MODES
    _drop_engines()
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with measure.RSSSampler() as rss:
        for i, q in enumerate(questions):
            ans = _ask(
                session,
                q.question,
                mode,
                collection=collection,
                adapter=adapter,
                k=k,
                max_tokens=max_tokens,
                model=model,
                min_score=min_score,
                reader=reader,
            )
            rows.append(_score(ans, q, with_answers))
            if progress is not None:
                progress(mode, i + 1, len(questions))
    figures = {
        "status": "ok",
        **_aggregate(rows, retrieving),
        "wall_s": round(time.perf_counter() - t0, 2),
        "rss_start_mb": measure.mb(rss.start_bytes),
        "peak_rss_mb": measure.mb(rss.peak_bytes),
    }
    return figures, rows


def _probe_answer(ans: Any, probe: Probe, source: str) -> dict[str, Any]:
    text = "" if ans.refused else strip_citations(ans.answer)
    hits = ans.hits or []
    cited_ids = {c["chunk_id"] for c in ans.citations if c.get("valid")}
    return {
        "answer": ans.answer,
        "answered": metrics.best_over(metrics.contains, text, list(probe.answers)) > 0,
        "refused": bool(ans.refused),
        "retrieved_fact": any(h.source == source for h in hits),
        "cited_fact": any(h.source == source and str(h.chunk_id) in cited_ids for h in hits),
    }


def _training_file(folder: Path, probe: Probe) -> Path:
    from ..llm.prompts import SYSTEM_BASE

    path = folder / "update.jsonl"
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM_BASE},
                    {"role": "user", "content": p},
                    {"role": "assistant", "content": probe.document},
                ]
            }
        )
        for p in probe.prompts
    ]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def update_and_probe(
    session: Any,
    *,
    run_id: str,
    collection: str,
    modes: list[str],
    adapter: str | None,
    probe: Probe,
    k: int,
    max_tokens: int,
    model: str | None,
    min_score: float,
    update_steps: int,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Ask the probe, ingest its document (timed), ask again, fine-tune on it (timed), ask that adapter.

    The vault is left as it was: the probe document is removed and the update adapter deleted.
    """
    from ..finetune.pipeline import create_adapter
    from ..finetune.store import private_tmp_dir, remove_adapter
    from ..finetune.train import TrainConfig
    from ..ingest import TextRecord, ingest_records
    from ..ingest.docs import remove_document
    from ..retrieval import get_embedder
    from ..vault.collections import open_collection

    try:
        open_collection(session, collection, "write")
    except AccessDenied:
        return {
            "status": "skipped",
            "note": f"needs a write grant on collection {collection!r} "
            "(the probe document is ingested there, then removed)",
        }
    source = f"offline-compare/{run_id}/{probe.name}"

    def ask(m: str, a: str | None = adapter) -> Any:
        return _ask(
            session,
            probe.question,
            m,
            collection=collection,
            adapter=a,
            k=k,
            max_tokens=max_tokens,
            model=model,
            min_score=min_score,
        )

    steps_total = 2 * len(modes) + 3
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress("update + freshness", done, steps_total)

    out: dict[str, Any] = {
        "status": "ok",
        "fact": probe.document,
        "question": probe.question,
        "answers": list(probe.answers),
        "before": {},
        "after": {},
    }
    ingested = False
    update_name = f"compare-update-{run_id}"
    created = False
    tmp = Path(tempfile.mkdtemp(prefix="offline-compare-", dir=private_tmp_dir(session)))
    try:
        _drop_engines()
        for m in modes:
            out["before"][m] = _probe_answer(ask(m), probe, source)
            tick()
        get_embedder()  # loaded already when retrieval ran; the timing below is the ingest alone
        t0 = time.perf_counter()
        with measure.RSSSampler() as rss_ingest:
            rep = ingest_records(
                session, [TextRecord(source=source, name=probe.name, text=probe.document)], collection
            )
        ingest_s = time.perf_counter() - t0
        if rep["failed"]:
            raise OfflineError(f"ingesting the probe document failed: {rep['failed'][0]['reason']}")
        ingested = True
        tick()
        for m in modes:
            out["after"][m] = _probe_answer(ask(m), probe, source)
            tick()
        _drop_engines()
        data = _training_file(tmp, probe)
        cfg = TrainConfig(
            max_steps=update_steps, lr=UPDATE_LR, batch_size=len(probe.prompts), eval_split=0.0, seed=0
        )
        t0 = time.perf_counter()
        with measure.RSSSampler() as rss_ft:
            info = create_adapter(session, update_name, data=data, base=model, cfg=cfg, progress=False)
        finetune_s = time.perf_counter() - t0
        created = True
        tick()
        updated = _probe_answer(ask("finetune", update_name), probe, source)
        tick()
        _drop_engines()
        meta = info.get("meta") or {}
        out["finetune_updated"] = updated
        out["update_cost"] = {
            "ingest_s": round(ingest_s, 3),
            "ingest_chunks": rep["chunks"],
            "ingest_peak_rss_mb": measure.mb(rss_ingest.peak_bytes),
            "finetune_s": round(finetune_s, 3),
            "finetune_steps": meta.get("steps"),
            "finetune_train_s": meta.get("train_seconds"),
            "finetune_examples": meta.get("train_examples"),
            "finetune_tokens": meta.get("tokens"),
            "finetune_lr": cfg.lr,
            "finetune_rank": cfg.rank,
            "finetune_peak_rss_mb": measure.mb(rss_ft.peak_bytes),
            "update_adapter_bytes": info.get("size"),
            "ratio_finetune_over_ingest": round(finetune_s / ingest_s, 1) if ingest_s > 0 else None,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            remove_adapter(session, update_name)
        if ingested:
            remove_document(session, collection, source)
    return out


def _adapter_file_bytes(session: Any, info: dict[str, Any]) -> int | None:
    from ..errors import IntegrityError
    from ..finetune.store import adapter_path

    try:
        p = adapter_path(session, info)
    except IntegrityError:
        return None
    return p.stat().st_size if p.is_file() else None


def disk_footprint(
    session: Any,
    collection: str,
    model_path: Path,
    adapter_info: dict[str, Any] | None,
    embedder_loaded: bool,
) -> dict[str, Any]:
    """Bytes on disk: vault, the collection's database, adapter, generation and embedding models."""
    from ..vault.collections import open_collection

    emb = None
    if embedder_loaded:
        from ..retrieval import get_embedder

        emb = measure.tree_bytes(Path(get_embedder().path))
    return {
        "vault_bytes": measure.tree_bytes(session.vault_dir),
        "collection_bytes": measure.db_bytes(open_collection(session, collection, "read").path),
        "adapter_bytes": _adapter_file_bytes(session, adapter_info) if adapter_info else None,
        "model_bytes": model_path.stat().st_size,
        "embedder_bytes": emb,
    }


def mode_disk(disk: dict[str, Any], mode: str) -> int | None:
    """What a mode needs on disk to answer: model, plus index and embedder, plus adapter."""
    parts = ["model_bytes"]
    if mode in RETRIEVAL_MODES:
        parts += ["collection_bytes", "embedder_bytes"]
    if mode in ADAPTER_MODES:
        parts.append("adapter_bytes")
    vals = [disk.get(p) for p in parts]
    return None if any(v is None for v in vals) else sum(vals)


def run_compare(
    session: Any,
    qa: str | Path,
    collection: str,
    *,
    out: str | Path,
    adapter: str | None = None,
    modes: str | Sequence[str] | None = None,
    limit: int | None = None,
    k: int | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    model: str | None = None,
    min_score: float | None = None,
    probe: Probe | None = None,
    freshness: bool = True,
    update_steps: int = DEFAULT_UPDATE_STEPS,
    with_answers: bool = False,
    progress: Progress | None = None,
    reader: bool = True,
) -> dict[str, Any]:
    """Measure base / rag / finetune / hybrid on ``qa`` over ``collection``; write report.md,
    results.json and charts into ``out``; return the results. Audited: compare.start, one
    compare.mode per mode, compare.end."""
    from ..finetune.raft import adapter_recipe
    from ..finetune.store import show_adapter
    from ..llm.resolve import resolve_generate_model
    from ..rag import DEFAULT_K, DEFAULT_MIN_SCORE
    from ..vault.collections import open_collection
    from . import report

    k = DEFAULT_K if k is None else k
    check_k(k)
    if not 1 <= max_tokens <= 2048:
        raise ParameterError("{max_tokens} must be between 1 and 2048", "max_tokens")
    if update_steps < 1:
        raise ParameterError("{update_steps} must be at least 1", "update_steps")
    requested = parse_modes(modes)
    skipped = {m: "needs --adapter NAME" for m in requested if m in ADAPTER_MODES and not adapter}
    active = [m for m in MODE_ORDER if m in requested and m not in skipped]
    if not active:
        raise ParameterError("no mode left to run: finetune and hybrid need {adapter} NAME", "adapter")
    qaset = load_qa(qa, limit)
    open_collection(session, collection, "read")  # fail closed before any model loads
    adapter_info = show_adapter(session, adapter) if adapter else None
    gm = resolve_generate_model(model)
    existed = Path(out).exists()
    out_dir = prepare_out(out)  # last check: a run refused above leaves no folder behind
    floor = DEFAULT_MIN_SCORE if min_score is None else min_score
    probe = probe or DEFAULT_PROBE
    run_id = secrets.token_hex(4)
    started = time.time()
    load_start = _machine()["load_avg_1m"]
    settings = {
        "k": k,
        "max_tokens": max_tokens,
        "min_score": floor,
        "limit": limit,
        "reader": reader,
        "update_steps": update_steps,
        "freshness": freshness,
    }
    session.audit(
        "compare.start",
        run=run_id,
        qa_sha256=qaset.sha256,
        qa_format=qaset.format,
        questions=len(qaset.questions),
        collection=collection,
        adapter=adapter,
        adapter_sha256=adapter_info["sha256"] if adapter_info else None,
        model_sha256=gm.sha256,
        modes=active,
        skipped=sorted(skipped),
        **settings,
    )
    try:
        results_modes: dict[str, Any] = {
            m: {"status": "skipped", "note": note} for m, note in skipped.items()
        }
        per_question: dict[str, list[dict[str, Any]]] = {}
        for m in active:
            figures, rows = run_mode(
                session,
                m,
                qaset.questions,
                collection=collection,
                adapter=adapter,
                k=k,
                max_tokens=max_tokens,
                model=model,
                min_score=floor,
                with_answers=with_answers,
                progress=progress,
                reader=reader,
            )
            results_modes[m] = figures
            per_question[m] = rows
            session.audit("compare.mode", run=run_id, mode=m, **figures)
        fresh = (
            update_and_probe(
                session,
                run_id=run_id,
                collection=collection,
                modes=active,
                adapter=adapter,
                probe=probe,
                k=k,
                max_tokens=max_tokens,
                model=model,
                min_score=floor,
                update_steps=update_steps,
                progress=progress,
            )
            if freshness
            else {"status": "skipped", "note": "--no-freshness"}
        )
        embedder_loaded = any(m in RETRIEVAL_MODES for m in active) or fresh.get("status") == "ok"
        disk = disk_footprint(session, collection, gm.path, adapter_info, embedder_loaded)
        for m, fig in results_modes.items():
            if fig.get("status") == "ok":
                fig["disk_bytes"] = mode_disk(disk, m)
        results = {
            "version": RESULTS_VERSION,
            "run": run_id,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "duration_s": None,
            "qa": {
                "file": Path(qa).name,
                "sha256": qaset.sha256,
                "format": qaset.format,
                "questions": len(qaset.questions),
                "available": qaset.total,
                "unanswerable": sum(1 for q in qaset.questions if not q.answers),
            },
            "collection": collection,
            "model": {"name": gm.name, "sha256": gm.sha256, "file": gm.path.name},
            "adapter": (
                {
                    "name": adapter,
                    "sha256": adapter_info["sha256"],
                    "recipe": adapter_recipe(adapter_info),
                    "train_duration_s": (adapter_info.get("meta") or {}).get("duration_s"),
                    "train_examples": (adapter_info.get("meta") or {}).get("train_examples"),
                    "steps": (adapter_info.get("meta") or {}).get("steps"),
                    "hyperparameters": adapter_info.get("hyperparameters"),
                }
                if adapter_info
                else None
            ),
            "settings": settings,
            "modes_order": [m for m in DISPLAY_ORDER if m in results_modes],
            "run_order": active,
            "modes": {m: results_modes[m] for m in DISPLAY_ORDER if m in results_modes},
            "update": fresh,
            "disk": disk,
            "machine": _machine() | {"load_avg_1m_start": load_start},
            "method": report.METHOD,
            "probe": asdict(probe) | {"answers": list(probe.answers), "prompts": list(probe.prompts)},
            "per_question": per_question,
        }
        results["duration_s"] = round(time.time() - started, 1)
        files = report.write_outputs(out_dir, results)
        results["files"] = files
    except BaseException as exc:
        session.audit(
            "compare.end", severity="warning", run=run_id, status="failed", error=exc.__class__.__name__
        )
        if not existed:
            with contextlib.suppress(OSError):  # only if nothing was written into it
                out_dir.rmdir()
        raise
    upd = fresh.get("update_cost") or {}
    session.audit(
        "compare.end",
        run=run_id,
        status="ok",
        duration_s=results["duration_s"],
        update_cost=upd or None,
        freshness={
            m: {"before": fresh["before"][m]["answered"], "after": fresh["after"][m]["answered"]}
            for m in fresh.get("after", {})
        }
        or None,
        finetune_updated_answered=(fresh.get("finetune_updated") or {}).get("answered"),
        disk=disk,
        results_sha256=files.get("results_sha256"),
    )
    return results


def _machine() -> dict[str, Any]:
    import platform

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
