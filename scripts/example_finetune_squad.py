#!/usr/bin/env python
"""Worked example: fine-tune the default model on SQuAD for a few minutes; exact match before/after.

Data: ../shared/data/squad-v1.1-dev-part-a.json. Each item is "Text: <the sentence holding the answer
and its neighbours> / Question: ... / Answer with a short phrase from the text." -> the gold answer.
Training questions come from the first half of the articles, held-out questions from the second
half, so no test paragraph is ever seen in training.

What it runs is the real pipeline: a fresh encrypted vault, ``create_adapter`` (the library call
behind ``offline finetune create``), then the adapter decrypted by ``open_adapter`` and served by
llama.cpp on the Q4_1 GGUF base, greedy decoding, against the same base without the adapter.

    scripts/example_finetune_squad.py [--train 400] [--test 60] [--steps 60] [--json]

Equivalent commands for your own vault:

    scripts/example_finetune_squad.py --write-data squad-train.jsonl   # writes the training JSONL
    offline finetune create squad --data squad-train.jsonl --max-steps 60 --batch-size 8 \\
        --lr 1e-3 --max-len 256
    offline ask --mode finetune --adapter squad \\
        "Text: ... Question: ... Answer with a short phrase from the text."
"""

from __future__ import annotations

import argparse
import json
import os
import re
import string
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SQUAD = REPO.parent / "shared" / "data" / "squad-v1.1-dev-part-a.json"
if (REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file():
    os.environ.setdefault("OFFLINE_MODELS_DIR", str(REPO / "models"))


def normalize(s: str) -> str:
    """SQuAD's official answer normalisation."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1(pred: str, gold: str) -> float:
    p, g = normalize(pred).split(), normalize(gold).split()
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    prec, rec = common / len(p), common / len(g)
    return 2 * prec * rec / (prec + rec)


def score(llm, test: list[dict]) -> dict:
    em = f1s = 0.0
    samples = []
    t0 = time.perf_counter()
    for it in test:
        out = llm.create_chat_completion(
            messages=[{"role": "user", "content": it["prompt"]}],
            max_tokens=24,
            temperature=0.0,
            top_k=1,
            seed=0,
        )
        pred = out["choices"][0]["message"]["content"].strip().split("\n")[0]
        em += max(normalize(pred) == normalize(a) for a in it["answers"])
        f1s += max(f1(pred, a) for a in it["answers"])
        if len(samples) < 5:
            samples.append(
                {
                    "question": it["prompt"].split("Question: ")[1].split("\n")[0],
                    "pred": pred,
                    "gold": it["answers"],
                }
            )
    n = len(test)
    return {
        "exact_match": round(100 * em / n, 1),
        "f1": round(100 * f1s / n, 1),
        "n": n,
        "seconds": round(time.perf_counter() - t0, 1),
        "samples": samples,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description="Fine-tune the default model on SQuAD; EM before/after.")
    ap.add_argument("--train", type=int, default=400, help="training pairs (from the first 12 articles)")
    ap.add_argument("--test", type=int, default=60, help="held-out questions (from the last 12 articles)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--write-data", type=Path, help="only write the training JSONL here and exit")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import random

    from offline import netguard
    from offline.finetune.data import squad_answer_pairs

    netguard.install()
    data = json.loads(SQUAD.read_text())["data"]
    train, test = squad_answer_pairs(data[:12]), squad_answer_pairs(data[12:])
    random.Random(0).shuffle(train)
    random.Random(1).shuffle(test)
    train, test = train[: args.train], test[: args.test]
    lines = (
        "\n".join(json.dumps({"prompt": t["prompt"], "completion": t["completion"]}) for t in train) + "\n"
    )
    if args.write_data:
        args.write_data.write_text(lines)
        print(f"wrote {len(train)} training pairs to {args.write_data}")
        return

    from llama_cpp import Llama

    from offline.finetune import store
    from offline.finetune.base import resolve_base
    from offline.finetune.pipeline import create_adapter
    from offline.finetune.train import TrainConfig
    from offline.vault import create_vault

    base = resolve_base(None)
    kw = {"n_ctx": 512, "verbose": False, "n_threads": os.cpu_count() or 2}
    with tempfile.TemporaryDirectory(prefix="offline-squad-") as tmp:
        datafile = Path(tmp) / "squad-train.jsonl"
        datafile.write_text(lines)
        session = create_vault(Path(tmp) / "vault", "analyst", os.urandom(16).hex())
        llm = Llama(str(base.path), **kw)
        before = score(llm, test)
        llm.close()
        t0 = time.perf_counter()
        cfg = TrainConfig(
            rank=args.rank,
            alpha=2 * args.rank,
            lr=args.lr,
            max_steps=args.steps,
            batch_size=args.batch_size,
            max_len=256,
            eval_split=0.1,
            dropout=0.05,
        )
        info = create_adapter(session, "squad", data=datafile, cfg=cfg, progress=not args.json)
        train_s = time.perf_counter() - t0
        with store.open_adapter(session, "squad") as (path, _):
            llm = Llama(str(base.path), lora_path=str(path), **kw)
        after = score(llm, test)
        llm.close()
        session.close()
    out = {
        "exact_match_before": before["exact_match"],
        "exact_match_after": after["exact_match"],
        "f1_before": before["f1"],
        "f1_after": after["f1"],
        "test_questions": len(test),
        "train_pairs": len(train),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "train_wall_s": round(train_s, 1),
        "train_tokens_per_s": info["meta"]["tokens_per_s"],
        "eval_loss_before": info["eval_loss_before"],
        "eval_loss_after": info["eval_loss_after"],
        "adapter_sha256": info["sha256"],
        "samples_before": before["samples"],
        "samples_after": after["samples"],
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"exact match {out['exact_match_before']}% -> {out['exact_match_after']}%, "
            f"F1 {out['f1_before']} -> {out['f1_after']} on {len(test)} held-out questions"
        )
        print(
            f"training: {args.steps} steps in {out['train_wall_s']} s, eval loss "
            f"{out['eval_loss_before']:.3f} -> {out['eval_loss_after']:.3f}"
        )


if __name__ == "__main__":
    main()
