#!/usr/bin/env python3
"""Generation speed: the kit vs bare llama-cpp-python in its best configuration, and warm ``ask``.

One run measures, each figure against its baseline in the same run:

1. **Sweep** of bare llama-cpp-python on the model ``ask`` uses by default: decode threads 1/2 ×
   prompt (batch) threads 1/2 × OpenMP wait policy (PASSIVE / spinning, the library's default).
   The wait policy is read once per process, so every configuration runs in its own process;
   the two policies alternate (ABAB) so drift in machine load favours neither. The best decode
   and the best prompt configuration are kept as the baseline.
2. **Kit vs best bare**, same ~1.2k-token prompt, same model, same greedy sampling, full prompt
   processing every time (KV cache reset), alternating kit and bare runs.
3. **Warm ask**: a vault of SQuAD paragraphs (tests/data/squad-mini.json), then new questions one
   after another through :func:`offline.rag.answer` (the engine stays warm, so the system prompt
   prefix is reused as it would be in the agent), then one repeated question (query-embedding
   cache and the whole prompt cached): first token, retrieval and prompt split. With
   ``--before DIR`` the same loop runs on that checkout (e.g. /work/main), alternating.
4. **Busy machine**: the warm-ask loop again while a second CPU-bound process runs: first-token
   p95 / p50.
5. **Physical bound** of prompt processing: parameters × 2 × tokens against the cores' measured
   float32 matrix-multiply rate (numpy), next to the achieved rate.

    python scripts/bench_ask.py [--rounds 2] [--questions 6] [--max-tokens 96] [--before /work/main] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SQUAD = ROOT / "tests" / "data" / "squad-mini.json"
POLICIES = {"PASSIVE": "PASSIVE", "spin": None}  # None: OMP_WAIT_POLICY unset (libgomp spins)
COMBOS = [(1, 2), (2, 2), (1, 1), (2, 1)]  # (decode threads, batch threads)
SAMPLING = {"temperature": 0.0, "top_k": 1, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.1}
PROMPT_CHARS = 4200  # ~1.2k tokens of SQuAD paragraphs with the default tokenizer


def _paragraphs() -> list[str]:
    data = json.loads(SQUAD.read_text(encoding="utf-8"))
    return [p["context"] for a in data["data"] for p in a["paragraphs"]]


def long_messages() -> list[dict[str, str]]:
    """The fixed ~1.2k-token chat prompt both sides process in parts 1 and 2."""
    text, paras = "", _paragraphs()
    i = 0
    while len(text) < PROMPT_CHARS:
        text += f"[{i + 1}] {paras[i % len(paras)]}\n\n"
        i += 1
    return [{"role": "system", "content": "Answer the question using only the numbered sources."},
            {"role": "user", "content": f"Sources:\n{text}Question: summarise every source in detail."}]


def _stream(chunks, t0: float) -> dict:  # noqa: ANN001
    first = last = None
    n = 0
    for chunk in chunks:
        if not chunk["choices"][0]["delta"].get("content"):
            continue
        now = time.perf_counter()
        first = first or now
        last = now
        n += 1
    end = time.perf_counter()
    first, last = first or end, last or end
    return {"ttft_s": first - t0, "tokens": n,
            "decode_tok_s": (n - 1) / (last - first) if n > 1 and last > first else 0.0}


# -- workers (each in its own process) --------------------------------------------------------------

def worker_bare(model: str, combos: list[list[int]], max_tokens: int) -> list[dict]:
    """Bare llama-cpp-python, as a user of the library would run it; no kit code imported (the
    kit sets the OpenMP policy on import)."""
    import llama_cpp

    llm = llama_cpp.Llama(model, n_ctx=4096, n_threads=2, n_threads_batch=2, verbose=False)
    msgs = long_messages()
    out = []
    llm.create_chat_completion(messages=msgs[:1] + [{"role": "user", "content": "hi"}], max_tokens=4, **SAMPLING)
    for t, b in combos:
        llama_cpp.llama_set_n_threads(llm.ctx, t, b)
        llm.reset()
        t0 = time.perf_counter()
        r = _stream(llm.create_chat_completion(messages=msgs, stream=True, max_tokens=max_tokens, **SAMPLING), t0)
        out.append({"decode_threads": t, "batch_threads": b, **r})
    return out


def worker_kit(max_tokens: int, reps: int) -> list[dict]:
    """The kit's engine (its own thread choice and wait policy) on the same prompt."""
    sys.path.insert(0, str(ROOT))
    from offline.llm import engine as eng
    from offline.llm.reader import reader_for
    from offline.llm.resolve import resolve_generate_model

    gm = resolve_generate_model(None)
    rd = reader_for(gm)
    path = str(rd.model.path if rd is not None and rd.lora_path is None else gm.path)
    e = eng.load(path)
    msgs = long_messages()
    e.stream_chat(msgs[:1] + [{"role": "user", "content": "hi"}], max_tokens=4)
    out = []
    for _ in range(reps):
        e.llm.reset()
        g = e.stream_chat(msgs, max_tokens=max_tokens)
        out.append({"ttft_s": g.ttft_s, "tokens": g.tokens, "decode_tok_s": g.decode_tok_s,
                    "prompt_tokens": g.prompt_tokens, "decode_threads": e.threads.decode,
                    "batch_threads": e.threads.batch, "model": path, "n_params": e.llm._model.n_params()})
    return out


def worker_ask(code_root: str, questions: int, max_tokens: int) -> dict:
    """Warm ``ask`` on the code in ``code_root``: new questions, then one repeated."""
    sys.path.insert(0, code_root)
    os.environ.setdefault("OFFLINE_KDF_TARGET_S", "0")
    import secrets
    import shutil

    from offline import netguard

    netguard.install()
    from offline.eval.qa import EVAL_COLLECTION, _index, load_squad
    from offline.llm import engine as eng
    from offline.rag import answer
    from offline.vault import create_vault

    items, docs = load_squad(SQUAD, None)
    qs = [it.question for it in items][: questions + 1]
    work = Path(tempfile.mkdtemp(prefix="offline-bench-ask-"))
    rows = []
    try:
        session = create_vault(work / "vault", "bench", secrets.token_urlsafe(16))
        _index(session, docs, work)
        answer(session, "What is this about?", collections=[EVAL_COLLECTION], max_tokens=4, min_score=0.0)
        prev: list[int] = []

        def ask(q: str) -> dict:
            nonlocal prev
            first: list[float] = []
            t0 = time.perf_counter()
            a = answer(session, q, collections=[EVAL_COLLECTION], max_tokens=max_tokens, min_score=0.0,
                       on_token=lambda _p: first or first.append(time.perf_counter()))
            t = a.timings
            engine = next(iter(eng._cache.values()))
            toks = engine.tokenize(engine.render(a.prompt)) if a.prompt else []
            reused = next((i for i, (x, y) in enumerate(zip(prev, toks)) if x != y), min(len(prev), len(toks)))
            prev = toks
            return {"first_token_s": (first[0] if first else time.perf_counter()) - t0,
                    "retrieval_s": t.get("retrieval_s", 0.0), "prompt_s": t.get("ttft_s", 0.0),
                    "prompt_tokens": t.get("prompt_tokens", 0), "reused_tokens": reused,
                    "decode_tok_s": t.get("decode_tok_s", 0.0), "refused": a.refused}

        new = [ask(q) for q in qs[1:]]
        ask(qs[1])
        repeated = ask(qs[1])
        engine = next(iter(eng._cache.values()))
        threads = getattr(engine, "threads", None)
        rows = {"new": new, "repeated": repeated,
                "threads": [threads.decode, threads.batch] if threads else [engine.llm.n_threads,
                                                                            engine.llm.n_threads_batch]}
        session.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


# -- orchestration ----------------------------------------------------------------------------------

def _env(policy: str | None, code_root: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "PYTHONPATH")}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    if code_root is not None:
        env["PYTHONPATH"] = str(code_root)
    env.setdefault("OFFLINE_MODELS_DIR", str(ROOT / "models"))
    return env


def _run(args: list[str], env: dict[str, str], timeout: float = 240) -> object:
    r = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"worker {args[:2]} failed: {r.stderr.strip()[-800:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def med(rows: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in rows), 4) if rows else 0.0


def p95(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))]


def sgemm_gflops() -> float:
    """The cores' float32 matrix-multiply rate (numpy's BLAS on every core), best of a few."""
    import numpy as np

    a = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        a @ a
        best = max(best, 2 * 1024 ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2, help="ABAB rounds of the sweep and of kit vs bare")
    ap.add_argument("--questions", type=int, default=6, help="new questions in the warm-ask loop")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--before", type=Path, help="another checkout (e.g. /work/main) for warm ask, same run")
    ap.add_argument("--no-busy", action="store_true", help="skip the busy-machine run")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--arg", action="append", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker == "bare":
        print(json.dumps(worker_bare(args.arg[0], json.loads(args.arg[1]), args.max_tokens)))
        return 0
    if args.worker == "kit":
        print(json.dumps(worker_kit(args.max_tokens, int(args.arg[0]))))
        return 0
    if args.worker == "ask":
        print(json.dumps(worker_ask(args.arg[0], args.questions, args.max_tokens)))
        return 0

    load_before = os.getloadavg()
    t_start = time.perf_counter()
    # 2. first, once, to learn which model the kit serves (the sweep runs on the same file)
    kit = _run(["--worker", "kit", "--arg", "1", "--max-tokens", str(args.max_tokens)], _env(None, ROOT))
    model = kit[0]["model"]
    sweep: list[dict] = []
    for _ in range(args.rounds):  # 1. ABAB over wait policies
        for name, policy in POLICIES.items():
            for row in _run(["--worker", "bare", "--arg", model, "--arg", json.dumps(COMBOS),
                             "--max-tokens", str(args.max_tokens)], _env(policy)):
                sweep.append({"policy": name, **row})
    configs: dict[tuple, list[dict]] = {}
    for row in sweep:
        configs.setdefault((row["policy"], row["decode_threads"], row["batch_threads"]), []).append(row)
    table = [{"policy": p, "decode_threads": t, "batch_threads": b, "decode_tok_s": med(rows, "decode_tok_s"),
              "prompt_s": med(rows, "ttft_s")} for (p, t, b), rows in configs.items()]
    best_decode = max(table, key=lambda r: r["decode_tok_s"])
    best_prompt = min(table, key=lambda r: r["prompt_s"])

    kit_rows, bare_dec, bare_pp = list(kit), [], []
    for r in range(args.rounds + 1):  # 2. kit vs the best bare configurations, alternating
        def bare() -> None:
            cfg = [[best_decode["decode_threads"], best_decode["batch_threads"]],
                   [best_prompt["decode_threads"], best_prompt["batch_threads"]]]
            # Two configurations only if the best decode and the best prompt share a wait policy.
            if best_decode["policy"] != best_prompt["policy"]:
                bare_pp.extend(_run(["--worker", "bare", "--arg", model, "--arg", json.dumps(cfg[1:]),
                                     "--max-tokens", "4"], _env(POLICIES[best_prompt["policy"]])))
                cfg = cfg[:1]
            rows = _run(["--worker", "bare", "--arg", model, "--arg", json.dumps(cfg),
                         "--max-tokens", str(args.max_tokens)], _env(POLICIES[best_decode["policy"]]))
            bare_dec.append(rows[0])
            bare_pp.append(rows[-1])

        if r % 2 == 0:
            bare()
        kit_rows.extend(_run(["--worker", "kit", "--arg", "1", "--max-tokens", str(args.max_tokens)],
                             _env(None, ROOT)))
        if r % 2 == 1:
            bare()

    # 3. warm ask, new questions (and --before's code alternating)
    sides = {"after": ROOT, **({"before": args.before} if args.before else {})}
    asks: dict[str, list[dict]] = {k: [] for k in sides}
    for name, root in (list(sides.items()) + list(reversed(sides.items()))):
        asks[name].append(_run(["--worker", "ask", "--arg", str(root), "--questions", str(args.questions),
                                "--max-tokens", str(args.max_tokens)], _env(None, root), timeout=400))

    # 4. busy machine: one CPU-bound process beside the warm-ask loop
    busy = {}
    if not args.no_busy:
        for name, root in sides.items():
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                busy[name] = _run(["--worker", "ask", "--arg", str(root), "--questions", str(args.questions),
                                   "--max-tokens", str(args.max_tokens)], _env(None, root), timeout=400)
            finally:
                hog.kill()
                hog.wait()
    gflops = sgemm_gflops()
    load_after = os.getloadavg()

    n_params = kit[0]["n_params"]
    ptok = med(kit_rows, "prompt_tokens")
    res: dict = {
        "model": Path(model).name, "n_params": n_params, "prompt_tokens": ptok, "max_tokens": args.max_tokens,
        "cpus": os.cpu_count(), "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after], "wall_s": round(time.perf_counter() - t_start, 1),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "sweep": sorted(table, key=lambda r: (r["policy"], r["decode_threads"], r["batch_threads"])),
        "best_bare_decode": best_decode, "best_bare_prompt": best_prompt,
        "kit_threads": [kit[0]["decode_threads"], kit[0]["batch_threads"]],
        "kit_decode_tok_s": med(kit_rows, "decode_tok_s"), "bare_decode_tok_s": med(bare_dec, "decode_tok_s"),
        "kit_prompt_s": med(kit_rows, "ttft_s"), "bare_prompt_s": med(bare_pp, "ttft_s"),
    }
    res["decode_ratio"] = round(res["kit_decode_tok_s"] / res["bare_decode_tok_s"], 3)
    res["prompt_ratio"] = round(res["bare_prompt_s"] / res["kit_prompt_s"], 3)  # >1: kit faster
    pp_gflops = n_params * 2 * ptok / res["kit_prompt_s"] / 1e9
    res["physical"] = {"sgemm_gflops": round(gflops, 1), "prompt_gflops_achieved": round(pp_gflops, 1),
                       "bound_prompt_s": round(n_params * 2 * ptok / (gflops * 1e9), 3),
                       "share_of_bound": round(pp_gflops / gflops, 3)}
    for name, runs in asks.items():
        new = [q for run in runs for q in run["new"]]
        res[f"ask_{name}"] = {
            "threads": runs[0]["threads"], "questions": len(new),
            "first_token_p50_s": med(new, "first_token_s"), "retrieval_p50_s": med(new, "retrieval_s"),
            "prompt_p50_s": med(new, "prompt_s"), "prompt_tokens_p50": med(new, "prompt_tokens"),
            "reused_tokens_p50": med(new, "reused_tokens"), "decode_tok_s_p50": med(new, "decode_tok_s"),
            "repeated_first_token_s": med([r["repeated"] for r in runs], "first_token_s"),
            "repeated_retrieval_s": med([r["repeated"] for r in runs], "retrieval_s"),
            "repeated_prompt_s": med([r["repeated"] for r in runs], "prompt_s"),
        }
    for name, run in busy.items():
        ft = [q["first_token_s"] for q in run["new"]]
        res[f"busy_{name}"] = {"first_token_p50_s": round(statistics.median(ft), 3),
                               "first_token_p95_s": round(p95(ft), 3),
                               "p95_over_p50": round(p95(ft) / statistics.median(ft), 2)}
    res["goals"] = {
        "decode_ratio_ge_0.95": res["decode_ratio"] >= 0.95,
        "prompt_ratio_ge_0.95": res["prompt_ratio"] >= 0.95,
        "warm_ask_first_token_le_2s": res["ask_after"]["first_token_p50_s"] <= 2.0,
        "busy_p95_over_p50_le_1.5": res["busy_after"]["p95_over_p50"] <= 1.5 if "busy_after" in res else None,
    }
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"{res['date']}  model {res['model']} ({n_params / 1e6:.0f}M params), prompt {ptok} tokens, "
          f"{args.max_tokens} generated; load {res['load_before']} -> {res['load_after']} on {res['cpus']} cpus")
    print("sweep, bare llama-cpp-python (median of", args.rounds, "runs each):")
    for r in res["sweep"]:
        print(f"  {r['policy']:8} decode threads {r['decode_threads']} batch threads {r['batch_threads']}:"
              f"  decode {r['decode_tok_s']:7.1f} tok/s  prompt {r['prompt_s']:.3f} s")
    bd, bp = best_decode, best_prompt
    print(f"best bare: decode {bd['policy']} {bd['decode_threads']}/{bd['batch_threads']}, "
          f"prompt {bp['policy']} {bp['decode_threads']}/{bp['batch_threads']}; kit chose decode "
          f"{res['kit_threads'][0]} / batch {res['kit_threads'][1]} threads, PASSIVE")
    print(f"decode  kit {res['kit_decode_tok_s']} tok/s vs bare best {res['bare_decode_tok_s']}: "
          f"ratio {res['decode_ratio']} (goal >= 0.95)")
    print(f"prompt  kit {res['kit_prompt_s']} s vs bare best {res['bare_prompt_s']} s: "
          f"ratio {res['prompt_ratio']} (goal >= 0.95)")
    ph = res["physical"]
    print(f"physical bound: {ph['sgemm_gflops']} GFLOP/s sgemm -> {ph['bound_prompt_s']} s for this prompt; "
          f"achieved {ph['prompt_gflops_achieved']} GFLOP/s ({ph['share_of_bound']:.0%} of it)")
    for name in sides:
        a = res[f"ask_{name}"]
        print(f"warm ask [{name}] threads {a['threads']}, {a['questions']} new questions: first token p50 "
              f"{a['first_token_p50_s']} s = retrieval {a['retrieval_p50_s']} s + prompt {a['prompt_p50_s']} s "
              f"({a['prompt_tokens_p50']} tokens, {a['reused_tokens_p50']} reused) + rest; decode "
              f"{a['decode_tok_s_p50']} tok/s; repeated question {a['repeated_first_token_s']} s")
    for name in busy:
        b = res[f"busy_{name}"]
        print(f"busy [{name}] first token p50 {b['first_token_p50_s']} s p95 {b['first_token_p95_s']} s: "
              f"p95/p50 {b['p95_over_p50']} (goal <= 1.5)")
    print("goals:", json.dumps(res["goals"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
