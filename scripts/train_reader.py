#!/usr/bin/env python
"""Reproduce the kit's RAFT reader adapter for the default model (models/smollm2-135m-reader.lora.gguf).

Data: ``../shared/data/squad-v1.1-dev-part-a.json`` (SQuAD v1.1 dev, CC BY-SA 4.0), every article
except the held-out ones (``HELD_OUT``, which ``scripts/eval_reader.py`` evaluates on), turned into
RAFT chats by :func:`offline.finetune.raft.squad_examples`: the exact prompt ``ask`` builds, the gold
paragraph at a random position among the most similar other paragraphs of its article, absent in a
quarter of the examples (target: the refusal), else target ``<gold span> [n]``.

Training is the kit's own pipeline (``create_adapter`` in a throw-away encrypted vault: PEFT LoRA on
the dequantised GGUF base, GGUF LoRA export); the adapter is then decrypted and written to
``--out`` with a lineage file beside it (seed, data hashes, hyperparameters, losses, timings).

    nice scripts/train_reader.py [--examples 288] [--batch-size 4] [--lr 8e-4] [--seed 0] [--out models/...]

Batch 4 at up to 896 tokens peaks at about 11.5 GB RSS on CPU (batch 8 at 1024 passed 18 GB); the
shipped adapter took 68 steps, 975 s on 2 shared cores (146 tok/s). ``offline models fetch`` then
merges it into the base (``models/manifest.toml`` ``[[reader]]``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SQUAD = REPO.parent / "shared" / "data" / "squad-v1.1-dev-part-a.json"
# Whole articles never trained on: the four scripts/example_compare.py ingests, plus two more.
HELD_OUT = (
    "Victoria_(Australia)",
    "1973_oil_crisis",
    "Black_Death",
    "Harvard_University",
    "Pharmacy",
    "Private_school",
)
DEFAULT_OUT = REPO / "models" / "smollm2-135m-reader.lora.gguf"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=288)
    ap.add_argument("--steps", type=int, default=None, help="default: one epoch")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=8e-4)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-len", type=int, default=896)
    ap.add_argument("--squad", type=Path, default=SQUAD)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--write-data", type=Path, help="only write the training JSONL here and exit")
    args = ap.parse_args()

    from offline import netguard
    from offline.finetune import raft

    netguard.install()
    raw = args.squad.read_bytes()
    articles = [a for a in json.loads(raw)["data"] if a["title"] not in HELD_OUT]
    rows = raft.squad_examples(articles, n=args.examples, seed=args.seed)
    if args.write_data:
        sha = raft.write_jsonl(rows, args.write_data)
        print(f"wrote {len(rows)} RAFT examples to {args.write_data} (sha256 {sha})")
        return

    from offline.finetune import store
    from offline.finetune.pipeline import create_adapter
    from offline.finetune.train import TrainConfig
    from offline.vault import create_vault

    steps = args.steps or max(1, round(len(rows) * 0.95 / args.batch_size))
    cfg = TrainConfig(
        rank=args.rank,
        alpha=2 * args.rank,
        lr=args.lr,
        max_steps=steps,
        batch_size=args.batch_size,
        max_len=args.max_len,
        eval_split=0.05,
        seed=args.seed,
    )
    with tempfile.TemporaryDirectory(prefix="offline-reader-") as tmp:
        datafile = Path(tmp) / "raft-train.jsonl"
        data_sha = raft.write_jsonl(rows, datafile)
        session = create_vault(Path(tmp) / "vault", "trainer", os.urandom(16).hex())
        t0 = time.perf_counter()
        info = create_adapter(session, "reader", data=datafile, cfg=cfg, progress=True, dtype="f16")
        wall = time.perf_counter() - t0
        gguf_bytes, _ = store.read_adapter_bytes(session, "reader")
        session.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(gguf_bytes)
    lineage = {
        "adapter": args.out.name,
        "sha256": hashlib.sha256(gguf_bytes).hexdigest(),
        "size": len(gguf_bytes),
        "base_model": info["base_model"],
        "base_sha256": info["base_sha256"],
        "recipe": (
            "RAFT: offline.finetune.raft.squad_examples "
            "(p_absent 0.25, 1-3 sources, gold at a random position)"
        ),
        "data": {
            "file": "squad-v1.1-dev-part-a.json",
            "sha256": hashlib.sha256(raw).hexdigest(),
            "licence": "CC BY-SA 4.0 (Rajpurkar et al. 2016)",
            "held_out_articles": list(HELD_OUT),
            "train_articles": [a["title"] for a in articles],
            "examples": len(rows),
            "examples_jsonl_sha256": data_sha,
        },
        "hyperparameters": info["hyperparameters"],
        "seed": args.seed,
        "command": "scripts/train_reader.py " + " ".join(sys.argv[1:]),
        "eval_loss_before": info["eval_loss_before"],
        "eval_loss_after": info["eval_loss_after"],
        "loss_curve": info.get("loss_curve"),
        "train_wall_s": round(wall, 1),
        "meta": info.get("meta"),
    }
    lineage_path = args.out.with_suffix(".lineage.json")
    lineage_path.write_text(json.dumps(lineage, indent=2, sort_keys=True) + "\n")
    print(
        json.dumps(
            {
                k: lineage[k]
                for k in ("sha256", "size", "eval_loss_before", "eval_loss_after", "train_wall_s")
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
