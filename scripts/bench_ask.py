#!/usr/bin/env python3
"""``ask`` pipeline vs bare llama-cpp-python on the same prompt and model, one run.

A throw-away vault gets a few SQuAD paragraphs (tests/data/squad-mini.json); each round asks the
same question through :func:`offline.rag.answer` (retrieval, packing, streaming to a sink through the
``on_token`` callback like the CLI does), then replays the *exact* chat messages that answer sent
through a separately constructed bare ``llama_cpp.Llama`` with the same n_ctx, threads and
sampling. Both KV caches are reset before every generation, so neither reuses a prompt prefix.
Greedy decoding makes both produce the same tokens. Figures are medians over the rounds.

    python scripts/bench_ask.py [--rounds 5] [--max-tokens 128] [--squad FILE] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OFFLINE_MODELS_DIR", str(ROOT / "models"))
os.environ.setdefault("OFFLINE_KDF_TARGET_S", "0")
# Same OpenMP policy for both sides, set before llama_cpp or torch load (see offline/llm/engine.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from offline import netguard  # noqa: E402

netguard.install()

QUESTION = "Where did Super Bowl 50 take place, and who won it?"


def bare_run(llm, messages, max_tokens: int, sampling: dict) -> dict:
    llm.reset()
    t0 = time.perf_counter()
    first = last = None
    n = 0
    for chunk in llm.create_chat_completion(messages=messages, stream=True, max_tokens=max_tokens, **sampling):
        piece = chunk["choices"][0]["delta"].get("content")
        if not piece:
            continue
        now = time.perf_counter()
        first = first or now
        last = now
        n += 1
    end = time.perf_counter()
    first, last = first or end, last or end
    decode = last - first
    return {"ttft_s": first - t0, "decode_s": decode, "tokens": n, "total_s": end - t0,
            "decode_tok_s": (n - 1) / decode if n > 1 and decode > 0 else 0.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("-k", type=int, default=3)
    ap.add_argument("--squad", type=Path, default=ROOT / "tests" / "data" / "squad-mini.json")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from llama_cpp import Llama

    from offline.eval.qa import EVAL_COLLECTION, _index, load_squad
    from offline.llm import engine as eng
    from offline.rag import answer
    from offline.vault import create_vault

    _, docs = load_squad(args.squad, None)
    work = Path(tempfile.mkdtemp(prefix="offline-bench-ask-"))
    sink = open(os.devnull, "w")  # noqa: SIM115  (the CLI writes + flushes each piece to stdout)

    def on_token(piece: str) -> None:
        sink.write(piece)
        sink.flush()

    pipe, bare = [], []
    try:
        session = create_vault(work / "vault", "bench", secrets.token_urlsafe(16))
        _index(session, docs, work)
        warm = answer(session, QUESTION, collections=[EVAL_COLLECTION], k=args.k, max_tokens=8, min_score=0.0)
        engine = next(e for e in eng._cache.values() if e.model_path.endswith(warm.model["path"]))
        sampling = dict(eng.DEFAULT_SAMPLING)
        with eng.quiet_stderr():
            bare_llm = Llama(engine.model_path, n_ctx=engine.n_ctx, n_threads=engine.llm.n_threads,
                             verbose=False)
        bare_run(bare_llm, warm.prompt, 8, sampling)  # warm-up
        for r in range(args.rounds):

            def run_pipeline() -> None:
                engine.llm.reset()
                a = answer(session, QUESTION, collections=[EVAL_COLLECTION], k=args.k, max_tokens=args.max_tokens,
                           min_score=0.0, on_token=on_token)
                if a.prompt != warm.prompt:
                    raise SystemExit("retrieval is not deterministic: the two sides would see different prompts")
                pipe.append({"ttft_s": a.timings["ttft_s"], "decode_tok_s": a.timings["decode_tok_s"],
                             "tokens": a.timings["tokens"], "total_s": a.timings["total_s"],
                             "retrieval_s": a.timings["retrieval_s"],
                             "prompt_tokens": a.timings["prompt_tokens"]})

            # Alternate which side goes first so drift in machine load does not favour either.
            if r % 2 == 0:
                run_pipeline()
            bare.append(bare_run(bare_llm, warm.prompt, args.max_tokens, sampling))
            if r % 2 == 1:
                run_pipeline()
        session.close()
    finally:
        sink.close()
        shutil.rmtree(work, ignore_errors=True)

    med = lambda rows, key: statistics.median(x[key] for x in rows)  # noqa: E731
    res = {
        "model": Path(engine.model_path).name, "n_ctx": engine.n_ctx, "threads": engine.llm.n_threads,
        "rounds": args.rounds, "max_tokens": args.max_tokens,
        "prompt_tokens": med(pipe, "prompt_tokens"), "tokens": med(pipe, "tokens"),
        "bare_tokens": med(bare, "tokens"),
        "retrieval_s": round(med(pipe, "retrieval_s"), 4),
        "ttft_s": round(med(pipe, "ttft_s"), 4), "bare_ttft_s": round(med(bare, "ttft_s"), 4),
        "decode_tok_s": round(med(pipe, "decode_tok_s"), 2), "bare_decode_tok_s": round(med(bare, "decode_tok_s"), 2),
        "total_s": round(med(pipe, "total_s"), 4), "bare_total_s": round(med(bare, "total_s"), 4),
    }
    res["ratio"] = round(res["decode_tok_s"] / res["bare_decode_tok_s"], 3) if res["bare_decode_tok_s"] else None
    res["ttft_ratio"] = round(res["ttft_s"] / res["bare_ttft_s"], 3) if res["bare_ttft_s"] else None
    res["goal_decode_ratio"] = 0.95
    res["goal_met"] = bool(res["ratio"] and res["ratio"] >= 0.95)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"model {res['model']} n_ctx {res['n_ctx']} threads {res['threads']}, {args.rounds} rounds, "
              f"prompt ~{res['prompt_tokens']} tokens, {res['tokens']} generated")
        print(f"  ask pipeline: retrieval {res['retrieval_s']}s  ttft {res['ttft_s']}s  "
              f"decode {res['decode_tok_s']} tok/s  total {res['total_s']}s")
        print(f"  bare llama  :                   ttft {res['bare_ttft_s']}s  "
              f"decode {res['bare_decode_tok_s']} tok/s  total {res['bare_total_s']}s")
        print(f"  decode ratio {res['ratio']} (goal >= 0.95)  ttft ratio {res['ttft_ratio']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
