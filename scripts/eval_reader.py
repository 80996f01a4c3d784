#!/usr/bin/env python
"""Issue 16's figures: the RAFT reader against the plain model, same run, same questions, same retrieval.

A throw-away encrypted vault holds three collections:

- ``squad``: every paragraph of the held-out SQuAD articles (``scripts/train_reader.py``'s
  ``HELD_OUT``, never trained on), one document per paragraph as ``scripts/example_compare.py``
  ingests them;
- ``squad_nogold``: the same minus the gold paragraphs of the "gold removed" questions (questions
  whose answer still occurs in another paragraph are not used for it);
- ``clinic``: ``examples/sample-corpus``, asked ``tests/data/clinic-qa.jsonl`` (answerable) and
  ``tests/data/clinic-unanswerable.jsonl`` (the corpus does not say).

Every question goes through ``offline.rag.answer`` exactly as ``offline ask`` runs it (greedy, the
grounding checks on) with the reader (``reader=True``) and without (``reader=False``, the baseline).
Figures are defined in :mod:`offline.eval.grounded`. Also: unsupported numbers flagged on
``tests/data/clinic-invented.jsonl``; decode tok/s of the reader vs the base model on the same
prompt and time to first token vs the plain model on one rag prompt (alternating rounds, fresh
engines); ``--ks`` sweeps k with the reader.

    nice scripts/eval_reader.py [--squad 40] [--gone 20] [--k 3] [--ks 1,2,3,5] [--json] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
SQUAD = REPO.parent / "shared" / "data" / "squad-v1.1-dev-part-a.json"
DATA = REPO / "tests" / "data"
GOALS = {
    "contains": (">=", 0.60),
    "f1": (">=", 0.55),
    "cited": (">=", 0.95),
    "cite_correct": (">=", 0.85),
    "refusal_unanswerable": (">=", 0.80),
    "false_refusal": ("<=", 0.10),
}
FIGURES = [
    ("contains", "answer contains gold"),
    ("f1", "token F1"),
    ("cited", "in-text citation present"),
    ("cite_correct", "citation correct"),
    ("refusal_unanswerable", "refusal, gold removed / unanswerable"),
    ("false_refusal", "false refusal (answerable)"),
    ("support", "support (answered)"),
    ("draft_contains", "model's draft contains gold"),
    ("retrieval_hit", "gold in the prompt"),
    ("ttft_p50_s", "TTFT p50 (s), this run's order"),
    ("own_cite_correct", "model's own [n] correct"),
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def squad_sets(articles: list[dict], n_answerable: int, n_gone: int, seed: int):
    """(answerable, gone, removed paragraph sources): disjoint questions, seeded; the gone ones
    chosen by the library's :func:`offline.eval.qa.pick_gold_removed` (as ``eval qa`` does)."""
    from offline.eval.qa import pick_gold_removed

    rng = random.Random(seed)
    items = [
        (a["title"], i, qa["question"], sorted({x["text"] for x in qa["answers"]}))
        for a in articles
        for i, p in enumerate(a["paragraphs"])
        for qa in p["qas"]
    ]
    rng.shuffle(items)
    paragraphs = {(a["title"], i): p["context"] for a in articles for i, p in enumerate(a["paragraphs"])}
    picked, removed = pick_gold_removed([((t, i), golds) for t, i, _, golds in items], paragraphs, n_gone)
    gone = [(items[n][2], []) for n in picked]
    answerable = [(q, golds) for t, i, q, golds in items if (t, i) not in removed][:n_answerable]
    return answerable, gone, removed


def jsonl(path: Path) -> list[tuple[str, list[str]]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(r["question"], list(r.get("answers") or [])) for r in rows]


def run_set(session, questions, collection: str, *, k: int, reader: bool, model: str | None, max_tokens: int):
    from offline.eval.grounded import score_answer
    from offline.rag import answer

    rows = []
    for q, golds in questions:
        a = answer(
            session, q, collections=[collection], k=k, reader=reader, model=model, max_tokens=max_tokens
        )
        rows.append({**score_answer(a, golds), "question": q, "answer": a.answer, "draft": a.draft})
    return rows


def invented_recall(session, k: int) -> dict:
    from offline.rag.grounding import unsupported_facts
    from offline.retrieval import search

    items = [
        json.loads(line) for line in (DATA / "clinic-invented.jsonl").read_text().splitlines() if line.strip()
    ]
    want = got = false = 0
    for it in items:
        hits = search(session, it["question"], collections=["clinic"], k=k, audit=False).hits
        flagged = unsupported_facts(it["draft"], [h.text for h in hits], it["question"])
        want += len(it["invented"])
        got += len(set(flagged) & set(it["invented"]))
        false += len(set(flagged) - set(it["invented"]))
    return {
        "drafts": len(items),
        "invented": want,
        "flagged": got,
        "recall": round(got / want, 3),
        "false_flags": false,
    }


def speed(model: str | None, rounds: int, rag_prompt: list[dict[str, str]]) -> dict:
    """Decode tok/s and time to first token of the base model and of its reader, alternating rounds
    on the same prompts (a fresh engine each time, so no prompt cache is shared): decode on a long
    generation, TTFT on a real rag prompt of the SQuAD set."""
    from offline.llm import engine as eng
    from offline.llm.prompts import base_messages
    from offline.llm.reader import reader_for
    from offline.llm.resolve import resolve_generate_model

    gm = resolve_generate_model(model)
    rd = reader_for(gm)
    if rd is None:
        return {"note": f"no reader pinned for {gm.name}"}
    story = base_messages("Write a long, detailed story about a lighthouse keeper and a storm.")
    engines = {
        "base": lambda: eng.load(gm.path, n_ctx=4096),
        "reader": (lambda: eng.load(rd.model.path, n_ctx=4096))
        if rd.lora_path is None
        else (
            lambda: eng.load(
                gm.path, n_ctx=4096, lora_path=str(rd.lora_path), adapter_sha256=rd.spec.adapter_sha256
            )
        ),
    }
    dec: dict[str, list[float]] = {"base": [], "reader": []}
    ttft: dict[str, list[float]] = {"base": [], "reader": []}
    for _ in range(rounds):
        for name, make in engines.items():
            e = make()
            ttft[name].append(e.stream_chat(rag_prompt, max_tokens=1).ttft_s)
            g = e.stream_chat(story, max_tokens=96)
            if g.tokens >= 16:
                dec[name].append(g.decode_tok_s)
            eng.clear_cache()
    b, r = median(dec["base"]), median(dec["reader"])
    tb, tr = median(ttft["base"]), median(ttft["reader"])
    return {
        "base_tok_s": round(b, 1),
        "reader_tok_s": round(r, 1),
        "ratio": round(r / b, 3),
        "base_ttft_s": round(tb, 4),
        "reader_ttft_s": round(tr, 4),
        "ttft_ratio": round(tr / tb, 3),
        "merged": rd.lora_path is None,
        "rounds": rounds,
        "decode_samples": dec,
        "ttft_samples": ttft,
    }


def build_vault(tmp: Path, articles: list[dict], removed: set):
    from offline.ingest import TextRecord, ingest_paths, ingest_records
    from offline.vault import create_vault
    from offline.vault.collections import create_collection

    session = create_vault(tmp / "vault", "analyst", os.urandom(16).hex())
    recs = [
        TextRecord(source=f"{a['title']}/p{i:03d}", name=f"{a['title']}-p{i:03d}.txt", text=p["context"])
        for a in articles
        for i, p in enumerate(a["paragraphs"])
    ]
    gone = {f"{t}/p{i:03d}" for t, i in removed}
    for name, rs in (("squad", recs), ("squad_nogold", [r for r in recs if r.source not in gone])):
        create_collection(session, name)
        ingest_records(session, rs, name)
    create_collection(session, "clinic")
    ingest_paths(session, [REPO / "examples" / "sample-corpus"], "clinic")
    return session


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--squad", type=int, default=40, help="answerable held-out SQuAD questions")
    ap.add_argument(
        "--gone", type=int, default=20, help="SQuAD questions asked with their gold paragraph removed"
    )
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--ks", default="", help="also sweep these k with the reader (e.g. 1,2,3,5)")
    ap.add_argument("--model", default=None, help="generation model (default: the kit's default)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the plain-model runs")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=7, help="alternating speed rounds (decode, TTFT)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", type=Path, help="write every figure and per-question row here")
    args = ap.parse_args()

    from train_reader import HELD_OUT

    from offline import netguard
    from offline.eval.grounded import summarise

    netguard.install()
    t_all = time.perf_counter()
    articles = [a for a in json.loads(SQUAD.read_text(encoding="utf-8"))["data"] if a["title"] in HELD_OUT]
    answerable, gone, removed = squad_sets(articles, args.squad, args.gone, args.seed)
    clinic_q, clinic_none = jsonl(DATA / "clinic-qa.jsonl"), jsonl(DATA / "clinic-unanswerable.jsonl")
    out: dict = {
        "held_out_articles": list(HELD_OUT),
        "k": args.k,
        "model": args.model or "default",
        "sets": {
            "squad": len(answerable),
            "squad_gold_removed": len(gone),
            "clinic": len(clinic_q),
            "clinic_unanswerable": len(clinic_none),
        },
        "results": {},
        "rows": {},
    }
    with tempfile.TemporaryDirectory(prefix="offline-eval-reader-") as tmp:
        os.environ.setdefault("OFFLINE_HOME", str(Path(tmp) / "home"))
        session = build_vault(Path(tmp), articles, removed)
        log(
            f"vault ready: {len(answerable)} + {len(gone)} SQuAD questions, "
            f"{len(clinic_q)} + {len(clinic_none)} clinic"
        )
        systems = [("reader", True)] + ([] if args.no_baseline else [("plain", False)])
        for sys_name, reader in systems:
            for set_name, parts in (
                ("squad", [(answerable, "squad"), (gone, "squad_nogold")]),
                ("clinic", [(clinic_q, "clinic"), (clinic_none, "clinic")]),
            ):
                t = time.perf_counter()
                rows = [
                    r
                    for qs, coll in parts
                    for r in run_set(
                        session,
                        qs,
                        coll,
                        k=args.k,
                        reader=reader,
                        model=args.model,
                        max_tokens=args.max_tokens,
                    )
                ]
                out["results"][f"{sys_name}/{set_name}"] = summarise(rows)
                out["rows"][f"{sys_name}/{set_name}"] = rows
                log(
                    f"{sys_name}/{set_name}: {time.perf_counter() - t:.0f} s "
                    f"{out['results'][f'{sys_name}/{set_name}']}"
                )
        for k in [int(x) for x in args.ks.split(",") if x.strip() and int(x) != args.k]:
            rows = [
                r
                for qs, coll in [(answerable, "squad"), (gone, "squad_nogold")]
                for r in run_set(
                    session, qs, coll, k=k, reader=True, model=args.model, max_tokens=args.max_tokens
                )
            ]
            out["results"][f"reader/squad/k={k}"] = summarise(rows)
            log(f"reader k={k}: {out['results'][f'reader/squad/k={k}']}")
        out["invented"] = invented_recall(session, args.k)
        from offline.rag import answer

        rag_prompt = answer(session, answerable[0][0], collections=["squad"], k=args.k, max_tokens=2).prompt
        session.close()
    out["decode"] = speed(args.model, args.rounds, rag_prompt)
    out["wall_s"] = round(time.perf_counter() - t_all, 1)
    if args.out:
        args.out.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    if args.json:
        print(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=2, sort_keys=True))
    else:
        print(report(out))
    return 0


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


def _met(key: str, v) -> str:
    if key not in GOALS or v is None:
        return ""
    op, goal = GOALS[key]
    ok = v >= goal if op == ">=" else v <= goal
    return f"{op} {goal:.2f} {'✔' if ok else '✘'}"


def report(out: dict) -> str:
    """The figures as a markdown table: reader next to the plain-model baseline of the same run."""
    lines = [
        f"held-out SQuAD articles: {', '.join(out['held_out_articles'])}; k={out['k']}; sets {out['sets']}",
        "",
    ]
    res = out["results"]
    for set_name in ("squad", "clinic"):
        r, b = res.get(f"reader/{set_name}", {}), res.get(f"plain/{set_name}", {})
        lines += [
            f"### {set_name}",
            "",
            "| figure | reader | plain model (baseline) | goal |",
            "|---|---|---|---|",
        ]
        for key, label in FIGURES:
            lines.append(f"| {label} | {_fmt(r.get(key))} | {_fmt(b.get(key))} | {_met(key, r.get(key))} |")
        lines.append("")
    sweep = {k: v for k, v in res.items() if "/k=" in k}
    if sweep:
        lines += [
            "### k sweep (reader, squad)",
            "",
            "| k | contains | F1 | refusal gold removed | false refusal |",
            "|---|---|---|---|---|",
        ]
        main_r = res.get("reader/squad", {})
        for k, v in sorted(
            {**sweep, f"reader/squad/k={out['k']}": main_r}.items(), key=lambda kv: int(kv[0].split("=")[1])
        ):
            lines.append(
                f"| {k.split('=')[1]} | {_fmt(v.get('contains'))} | {_fmt(v.get('f1'))} | "
                f"{_fmt(v.get('refusal_unanswerable'))} | {_fmt(v.get('false_refusal'))} |"
            )
        lines.append("")
    inv, dec = out["invented"], out["decode"]
    lines.append(
        f"unsupported numbers/names flagged: {inv['flagged']}/{inv['invented']} = {inv['recall']:.2f} "
        f"(goal 1.00 {'✔' if inv['recall'] >= 1 else '✘'}), false flags {inv['false_flags']}, "
        f"{inv['drafts']} drafts"
    )
    if "ratio" in dec:
        lines.append(
            f"decode: reader {dec['reader_tok_s']} tok/s vs base {dec['base_tok_s']} tok/s "
            f"= {dec['ratio']:.2f}x "
            f"(goal >= 0.95 {'✔' if dec['ratio'] >= 0.95 else '✘'}; merged={dec['merged']}; "
            f"median of {dec['rounds']} alternating rounds)"
        )
        lines.append(
            f"TTFT, same rag prompt: reader {dec['reader_ttft_s']} s vs plain {dec['base_ttft_s']} s = "
            f"{dec['ttft_ratio']:.2f}x (goal <= 1.10 {'✔' if dec['ttft_ratio'] <= 1.1 else '✘'})"
        )
    else:
        lines.append(f"decode: {dec['note']}")
    lines.append(f"wall time {out['wall_s']} s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
