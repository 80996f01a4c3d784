#!/usr/bin/env python
"""Training throughput of the kit's LoRA loop against a plain transformers+PEFT loop, same run.

Both train the same LoRA (same seed, rank, targets, lr schedule, AdamW, clipping, batch size,
completion-only labels) on the same SQuAD-derived prompt/completion data and the same GGUF base
(dequantised to float32 by transformers), for the same number of steps. The baseline is the
textbook loop: shuffled batches padded to their longest item, ``model(..., labels=...)``. The
kit's loop groups batches by length and projects to the vocabulary only where a label is.
Rounds alternate the order (baseline first, then kit first, ...) so drift in machine load
(other processes on the same cores) does not favour either side.

    scripts/bench_finetune.py [--steps 4] [--rounds 2] [--json]

Keys: tokens_per_s, baseline_tokens_per_s, ratio, eval_loss_before, eval_loss_after, peak_rss_mb, ...
Tokens are non-padding tokens processed by training steps (both loops count the same way).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SQUAD = REPO.parent / "shared" / "data" / "squad-v1.1-dev-part-a.json"
if (REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file():
    os.environ.setdefault("OFFLINE_MODELS_DIR", str(REPO / "models"))


def squad_pairs(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` shuffled context window + question -> short answer pairs."""
    from offline.finetune.data import squad_answer_pairs

    rows = squad_answer_pairs(json.loads(SQUAD.read_text())["data"])
    random.Random(seed).shuffle(rows)
    return rows[:n]


def baseline_train(pm, items, cfg, pad_id: int, steps: int) -> tuple[int, float]:
    """The plain loop: random batches, pad to longest, HF loss over full logits."""
    import torch

    from offline.finetune.train import collate, lr_at

    rng = random.Random(cfg.seed)
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    order: list[int] = []
    tokens, seconds = 0, 0.0
    pm.train()
    for step in range(steps):
        if len(order) < cfg.batch_size:
            fresh = list(range(len(items)))
            rng.shuffle(fresh)
            order += fresh
        idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, cfg)
        ids, att, lab = collate(items, idx, pad_id, "cpu")
        loss = pm(input_ids=ids, attention_mask=att, labels=lab).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        seconds += time.perf_counter() - t0
        tokens += int(att.sum())
    return tokens, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--steps", type=int, default=4, help="training steps per loop per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--examples", type=int, default=120)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-len", type=int, default=384)
    ap.add_argument("--base", default=None, help="registered model name or .gguf path (default: kit default)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from offline import netguard

    netguard.install()
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    from peft import LoraConfig, get_peft_model

    from offline.finetune import data as fdata
    from offline.finetune.base import load_base, resolve_base, target_modules
    from offline.finetune.train import TrainConfig, train_lora

    t_load = time.perf_counter()
    base = resolve_base(args.base)
    model, tok = load_base(base)
    load_s = time.perf_counter() - t_load
    cfg = TrainConfig(
        rank=8,
        alpha=16,
        dropout=0.0,
        lr=2e-4,
        batch_size=args.batch_size,
        max_len=args.max_len,
        max_steps=args.steps,
        eval_split=0.1,
        seed=0,
    )
    ds = [
        fdata.Example(
            messages=[
                {"role": "user", "content": r["prompt"]},
                {"role": "assistant", "content": r["completion"]},
            ]
        )
        for r in squad_pairs(args.examples)
    ]
    train_ex, eval_ex = fdata.split(ds, cfg.eval_split, cfg.seed)
    train_enc, _ = fdata.encode_all(tok, train_ex, cfg.max_len)
    eval_enc, _ = fdata.encode_all(tok, eval_ex, cfg.max_len)
    modules = target_modules(model, cfg.targets)

    def fresh():
        torch.manual_seed(cfg.seed)
        return get_peft_model(
            model, LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules=modules)
        )

    kit_tok = kit_s = base_tok = base_s = 0.0
    eval_before = eval_after = None
    per_round = []
    for rnd in range(args.rounds):
        order = ["baseline", "kit"] if rnd % 2 == 0 else ["kit", "baseline"]
        for which in order:
            pm = fresh()
            if which == "baseline":
                t, s = baseline_train(pm, train_enc, cfg, tok.pad_token_id, args.steps)
                base_tok += t
                base_s += s
            else:
                r = train_lora(
                    pm, train_enc, [] if rnd else eval_enc, cfg, pad_id=tok.pad_token_id, progress=False
                )
                t, s = r.tokens, r.train_seconds
                kit_tok += t
                kit_s += s
                if rnd == 0:
                    eval_before, eval_after = r.eval_loss_before, r.eval_loss_after
            per_round.append(
                {
                    "round": rnd,
                    "loop": which,
                    "tokens": t,
                    "seconds": round(s, 2),
                    "tokens_per_s": round(t / s, 1),
                }
            )
            print(f"round {rnd} {which}: {t} tokens in {s:.1f} s = {t / s:.1f} tokens/s", file=sys.stderr)
            model = pm.unload()  # back to the bare base for the next loop
    tps, btps = kit_tok / kit_s, base_tok / base_s
    out = {
        "tokens_per_s": round(tps, 1),
        "baseline_tokens_per_s": round(btps, 1),
        "ratio": round(tps / btps, 3),
        "eval_loss_before": round(eval_before, 4) if eval_before is not None else None,
        "eval_loss_after": round(eval_after, 4) if eval_after is not None else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "steps_per_loop_per_round": args.steps,
        "rounds": args.rounds,
        "batch_size": cfg.batch_size,
        "train_examples": len(train_enc),
        "eval_examples": len(eval_enc),
        "base": base.name,
        "base_load_s": round(load_s, 1),
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "per_round": per_round,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"kit loop     : {out['tokens_per_s']} tokens/s")
        print(f"plain loop   : {out['baseline_tokens_per_s']} tokens/s")
        print(f"ratio        : {out['ratio']}x")
        print(f"eval loss    : {out['eval_loss_before']} -> {out['eval_loss_after']} ({args.steps} steps)")
        print(f"peak RSS     : {out['peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
