#!/usr/bin/env python
"""The README's comparison, end to end, with the default models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2).

1. A fresh vault in WORKDIR; collection ``squad`` gets every paragraph of a few SQuAD v1.1 dev
   articles (one document per paragraph, so the rest of each article acts as distractors).
2. The questions of those articles are split per article, deterministically: ``--questions`` are
   held out for the comparison, ``--unanswerable`` more are made unanswerable by leaving their gold
   paragraph out of the collection (``offline.eval.qa.pick_gold_removed``, as ``eval qa`` and
   ``scripts/eval_reader.py`` do; never a paragraph a held-out question needs), the others (up to
   ``--train-max``) train a LoRA adapter ``squad-qa``
   (closed-book: question -> gold answer, with the same system prompt ``--mode finetune`` uses;
   ``--raft``: RAFT-style on the prompts ``ask`` builds from the collection, the right hybrid).
3. ``offline compare`` (the library call) runs base, rag, finetune and hybrid on the held-out
   questions, then measures the cost of an update and the freshness probe.
4. The charts go to docs/img/compare-*.png and a copy of results.json without the per-question
   rows to docs/compare-results.json; the full report stays in WORKDIR/report.

    scripts/example_compare.py [--questions 200] [--unanswerable 20] [--steps 60]
                               [--articles Victoria_(Australia),...]
                               [--workdir DIR] [--max-tokens 32] [--no-docs]

Data: ../shared/data/squad-v1.1-dev-part-a.json (SQuAD v1.1 dev, CC BY-SA 4.0).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if (REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file():
    os.environ.setdefault("OFFLINE_MODELS_DIR", str(REPO / "models"))
SQUAD = REPO.parent / "shared" / "data" / "squad-v1.1-dev-part-a.json"
ARTICLES = "Victoria_(Australia),1973_oil_crisis,Black_Death,Harvard_University"

T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def split_questions(articles: list[dict], n_eval: int, train_max: int, seed: int) -> tuple[list, list]:
    """Per article: shuffle its questions, hold out an equal share for evaluation, train on the rest."""
    per = [n_eval // len(articles) + (1 if i < n_eval % len(articles) else 0) for i in range(len(articles))]
    evals, trains = [], []
    for art, k in zip(articles, per, strict=True):
        qas = [qa for p in art["paragraphs"] for qa in p["qas"] if qa["answers"]]
        random.Random(f"{seed}-{art['title']}").shuffle(qas)
        evals += [
            {"id": qa["id"], "question": qa["question"], "answers": [a["text"] for a in qa["answers"]]}
            for qa in qas[:k]
        ]
        trains += qas[k:]
    random.Random(seed).shuffle(trains)
    return evals, trains[:train_max]


def gold_removed(
    articles: list[dict], keep: set[str], n: int, seed: int
) -> tuple[list[dict], set[tuple[str, int]]]:
    """``n`` questions (none in ``keep``) that no paragraph answers once their own is left out, and
    the paragraphs to leave out; a paragraph that hosts a question in ``keep`` is never one of them."""
    from offline.eval.qa import pick_gold_removed

    paragraphs = {(a["title"], i): p["context"] for a in articles for i, p in enumerate(a["paragraphs"])}
    needed = {
        (a["title"], i)
        for a in articles
        for i, p in enumerate(a["paragraphs"])
        if any(qa["id"] in keep for qa in p["qas"])
    }
    pool = [
        ((a["title"], i), qa)
        for a in articles
        for i, p in enumerate(a["paragraphs"])
        for qa in p["qas"]
        if (a["title"], i) not in needed and qa["id"] not in keep and qa["answers"]
    ]
    random.Random(f"{seed}-unanswerable").shuffle(pool)
    picked, removed = pick_gold_removed(
        [(key, [x["text"] for x in qa["answers"]]) for key, qa in pool], paragraphs, n
    )
    return [
        {"id": pool[j][1]["id"], "question": pool[j][1]["question"], "answers": []} for j in picked
    ], removed


def compare_phase(work: Path, max_tokens: int, update_steps: int, run_compare) -> int:
    """The measured part, in its own process: open the vault, run every mode, write the report."""
    from offline.vault import open_session

    def progress(label: str, done: int, total: int) -> None:
        if done == total or done % 10 == 0:
            log(f"{label}: {done}/{total}")

    with open_session(work / "vault", "analyst", os.environ["OFFLINE_PASSPHRASE"]) as session:
        run_compare(
            session,
            work / "heldout.jsonl",
            "squad",
            out=work / "report",
            adapter="squad-qa",
            max_tokens=max_tokens,
            update_steps=update_steps,
            progress=progress,
        )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--articles", default=ARTICLES)
    ap.add_argument(
        "--unanswerable",
        type=int,
        default=20,
        help="questions asked with their gold paragraph left out of the collection (refusal rate)",
    )
    ap.add_argument(
        "--train-max", type=int, default=320, help="training questions (others of the same articles)"
    )
    ap.add_argument("--steps", type=int, default=80, help="adapter training steps")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--update-steps", type=int, default=10)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--no-docs", action="store_true", help="do not copy charts and results into docs/")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--raft",
        action="store_true",
        help="train the hybrid adapter RAFT-style on the collection "
        "(offline finetune create --raft) instead of closed-book",
    )
    ap.add_argument("--phase", choices=["all", "compare"], default="all", help=argparse.SUPPRESS)
    args = ap.parse_args()

    from offline.compare import run_compare  # first: sets OMP_WAIT_POLICY before torch loads

    if args.phase == "compare":
        return compare_phase(args.workdir, args.max_tokens, args.update_steps, run_compare)
    from offline.finetune.pipeline import create_adapter
    from offline.finetune.train import TrainConfig
    from offline.ingest import TextRecord, ingest_records
    from offline.llm.prompts import SYSTEM_BASE
    from offline.vault import create_vault
    from offline.vault.collections import create_collection

    work = args.workdir or Path(tempfile.mkdtemp(prefix="offline-compare-example-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OFFLINE_HOME", str(work / "home"))
    titles = [t.strip() for t in args.articles.split(",") if t.strip()]
    data = {a["title"]: a for a in json.loads(SQUAD.read_text(encoding="utf-8"))["data"]}
    missing = [t for t in titles if t not in data]
    if missing:
        print(f"error: no such article(s): {', '.join(missing)}", file=sys.stderr)
        return 2
    articles = [data[t] for t in titles]
    evals, trains = split_questions(articles, args.questions, args.train_max, args.seed)
    gone, removed = gold_removed(
        articles, {q["id"] for q in evals} | {qa["id"] for qa in trains}, args.unanswerable, args.seed
    )
    qa_file = work / "heldout.jsonl"
    qa_file.write_text("".join(json.dumps(q) + "\n" for q in evals + gone), encoding="utf-8")
    train_file = work / "train.jsonl"
    train_file.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "system", "content": SYSTEM_BASE},
                        {"role": "user", "content": qa["question"]},
                        {"role": "assistant", "content": qa["answers"][0]["text"]},
                    ]
                }
            )
            + "\n"
            for qa in trains
        ),
        encoding="utf-8",
    )
    log(
        f"{len(evals)} held-out questions (+{len(gone)} with their gold paragraph left out), "
        f"{len(trains)} training questions over {len(articles)} articles"
    )

    vault = work / "vault"
    if vault.exists():
        shutil.rmtree(vault)
    passphrase = secrets.token_urlsafe(24)
    session = create_vault(vault, "analyst", passphrase)
    try:
        create_collection(session, "squad")
        recs = [
            TextRecord(source=f"{a['title']}/p{i:03d}", name=f"{a['title']}-p{i:03d}.txt", text=p["context"])
            for a in articles
            for i, p in enumerate(a["paragraphs"])
            if (a["title"], i) not in removed
        ]
        t = time.perf_counter()
        rep = ingest_records(session, recs, "squad")
        log(
            f"ingested {len(rep['added'])} paragraphs, {rep['chunks']} chunks "
            f"in {time.perf_counter() - t:.1f} s"
        )
        t = time.perf_counter()
        if args.raft:  # the right hybrid: trained on the prompts `ask` builds from this collection
            raft_file = work / "train-qa.jsonl"
            raft_file.write_text(
                "".join(
                    json.dumps({"question": qa["question"], "answers": [a["text"] for a in qa["answers"]]})
                    + "\n"
                    for qa in trains
                ),
                encoding="utf-8",
            )
            cfg = TrainConfig(
                rank=8,
                alpha=16,
                lr=8e-4,
                max_steps=args.steps,
                batch_size=4,
                max_len=896,
                eval_split=0.1,
                seed=args.seed,
            )
            info = create_adapter(
                session, "squad-qa", raft_qa=raft_file, raft_collection="squad", cfg=cfg, progress=False
            )
        else:
            cfg = TrainConfig(
                rank=8,
                alpha=16,
                lr=5e-4,
                max_steps=args.steps,
                batch_size=8,
                max_len=128,
                eval_split=0.1,
                seed=args.seed,
            )
            info = create_adapter(session, "squad-qa", data=train_file, cfg=cfg, progress=False)
        log(
            f"adapter squad-qa: {info['meta']['steps']} steps in {time.perf_counter() - t:.1f} s, eval loss "
            f"{info['eval_loss_before']:.3f} -> {info['eval_loss_after']:.3f}"
        )
    finally:
        session.close()
    # The comparison runs in a fresh process, as `offline compare` would: the training above must
    # not inflate its memory figures (torch keeps what it allocated).
    out = work / "report"
    env = {**os.environ, "OFFLINE_PASSPHRASE": passphrase}
    cmd = [
        sys.executable,
        __file__,
        "--phase",
        "compare",
        "--workdir",
        str(work),
        "--max-tokens",
        str(args.max_tokens),
        "--update-steps",
        str(args.update_steps),
    ]
    if subprocess.run(cmd, env=env).returncode != 0:
        return 1
    res = json.loads((out / "results.json").read_text())
    log(f"report: {out / 'report.md'}")
    if not args.no_docs:
        img = REPO / "docs" / "img"
        img.mkdir(parents=True, exist_ok=True)
        for c in res["charts"]:
            shutil.copyfile(out / c, img / f"compare-{c}")
        slim = {k: v for k, v in res.items() if k not in ("per_question", "files")}
        slim["example"] = {
            "articles": titles,
            "held_out_questions": len(evals),
            "training_questions": len(trains),
            "unanswerable_questions": len(gone),
            "paragraphs_left_out": len(removed),
            "adapter_recipe": "raft" if args.raft else "closed-book",
            "adapter_steps": args.steps,
            "adapter_eval_loss": [info["eval_loss_before"], info["eval_loss_after"]],
        }
        (REPO / "docs" / "compare-results.json").write_text(json.dumps(slim, indent=2, sort_keys=True) + "\n")
        log("charts -> docs/img/compare-*.png, figures -> docs/compare-results.json")
    print((out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
