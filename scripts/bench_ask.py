#!/usr/bin/env python3
"""Generation speed: the kit vs bare llama-cpp-python in its best configuration, and warm ``ask``.

One run measures, each figure against its baseline in the same run:

1. **Sweep** of bare llama-cpp-python on the model ``ask`` uses by default: decode threads 1/2 ×
   prompt (batch) threads 1/2 × OpenMP wait policy (PASSIVE / spinning, the library's default).
   The wait policy is read once per process, so each policy runs in its own process; the two
   policies alternate (ABAB) so drift in machine load favours neither. Decoding uses only the
   decode thread count and the prompt only the batch count, so each run (1/1, then 2/2) measures
   one setting of each. The best decode and the best prompt setting are the baseline.
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
# (decode threads, batch threads). Decoding uses only the decode count and prompt processing only
# the batch count, so two runs per process cover threads 1/2 for each phase.
COMBOS = [(1, 1), (2, 2)]
SAMPLING = {"temperature": 0.0, "top_k": 1, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.1}
PROMPT_CHARS = 4200
EVAL_COLLECTION = "squad"  # ~1.2k tokens of SQuAD paragraphs with the default tokenizer


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
    return [
        {"role": "system", "content": "Answer the question using only the numbered sources."},
        {"role": "user", "content": f"Sources:\n{text}Question: summarise every source in detail."},
    ]


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
    return {
        "ttft_s": first - t0,
        "tokens": n,
        "decode_tok_s": (n - 1) / (last - first) if n > 1 and last > first else 0.0,
    }


# -- workers: one process each, kept alive and driven one request line at a time ----------------------
# Persistent workers let the two sides of every comparison alternate per generation (ABAB), so a
# change in machine load hits both sides alike.


def _serve(handle) -> None:  # noqa: ANN001
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        print(json.dumps(handle(json.loads(line))), flush=True)


def worker_bare(model: str) -> None:
    """Bare llama-cpp-python, as a user of the library would run it; no kit code imported (the
    kit sets the OpenMP policy on import). Requests: {"threads": [decode, batch], "max_tokens": n}."""
    import llama_cpp

    llm = llama_cpp.Llama(model, n_ctx=4096, n_threads=2, n_threads_batch=2, verbose=False)
    msgs = long_messages()
    llm.create_chat_completion(
        messages=msgs[:1] + [{"role": "user", "content": "hi"}], max_tokens=4, **SAMPLING
    )

    def handle(req: dict) -> dict:
        t, b = req["threads"]
        llama_cpp.llama_set_n_threads(llm.ctx, t, b)
        llm.reset()  # full prompt processing every time
        t0 = time.perf_counter()
        r = _stream(
            llm.create_chat_completion(messages=msgs, stream=True, max_tokens=req["max_tokens"], **SAMPLING),
            t0,
        )
        return {"decode_threads": t, "batch_threads": b, **r}

    _serve(handle)


def worker_kit() -> None:
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

    def handle(req: dict) -> dict:
        e.llm.reset()
        g = e.stream_chat(msgs, max_tokens=req["max_tokens"])
        return {
            "ttft_s": g.ttft_s,
            "tokens": g.tokens,
            "decode_tok_s": g.decode_tok_s,
            "prompt_tokens": g.prompt_tokens,
            "decode_threads": e.threads.decode,
            "batch_threads": e.threads.batch,
            "model": path,
            "n_params": e.llm._model.n_params(),
        }

    _serve(handle)


def worker_ask(code_root: str) -> None:
    """Warm ``ask`` on the code in ``code_root`` (a vault of SQuAD paragraphs, engine kept warm).
    Requests: {"question": q, "max_tokens": n}."""
    sys.path.insert(0, code_root)
    os.environ.setdefault("OFFLINE_KDF_TARGET_S", "0")
    import atexit
    import secrets
    import shutil

    from offline import netguard

    netguard.install()
    from offline.ingest import ingest_paths
    from offline.llm import engine as eng
    from offline.rag import answer
    from offline.vault import create_vault
    from offline.vault.collections import create_collection

    work = Path(tempfile.mkdtemp(prefix="offline-bench-ask-"))
    atexit.register(shutil.rmtree, work, True)
    src = work / "paragraphs"
    src.mkdir(mode=0o700)
    for i, text in enumerate(_paragraphs()):  # public API only: the two checkouts may differ inside
        (src / f"p{i:03d}.txt").write_text(text, encoding="utf-8")
    session = create_vault(work / "vault", "bench", secrets.token_urlsafe(16))
    create_collection(session, EVAL_COLLECTION)
    ingest_paths(session, [src], EVAL_COLLECTION)
    answer(session, "What is this about?", collections=[EVAL_COLLECTION], max_tokens=4, min_score=0.0)
    prev: list[int] = []

    def handle(req: dict) -> dict:
        nonlocal prev
        first: list[float] = []
        t0 = time.perf_counter()
        a = answer(
            session,
            req["question"],
            collections=[EVAL_COLLECTION],
            max_tokens=req["max_tokens"],
            min_score=0.0,
            on_token=lambda _p: first or first.append(time.perf_counter()),
        )
        t = a.timings
        engine = next(iter(eng._cache.values()))
        toks = engine.tokenize(engine.render(a.prompt)) if a.prompt else []
        # What llama-cpp-python can keep of the KV cache: the prefix shared with the last prompt.
        reused = next((i for i, (x, y) in enumerate(zip(prev, toks)) if x != y), min(len(prev), len(toks)))
        prev = toks
        threads = getattr(engine, "threads", None)
        return {
            "first_token_s": (first[0] if first else time.perf_counter()) - t0,
            "retrieval_s": t.get("retrieval_s", 0.0),
            "prompt_s": t.get("ttft_s", 0.0),
            "prompt_tokens": t.get("prompt_tokens", 0),
            "reused_tokens": reused,
            "decode_tok_s": t.get("decode_tok_s", 0.0),
            "refused": a.refused,
            "threads": [threads.decode, threads.batch]
            if threads
            else [engine.llm.n_threads, engine.llm.n_threads_batch],
        }

    _serve(handle)


# -- orchestration ----------------------------------------------------------------------------------


def _env(policy: str | None, code_root: Path | None = None) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "PYTHONPATH")
    }
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    if code_root is not None:
        env["PYTHONPATH"] = str(code_root)
    env.setdefault("OFFLINE_MODELS_DIR", str(ROOT / "models"))
    return env


class Worker:
    """One persistent worker process: ``ask(request)`` -> its JSON answer."""

    def __init__(self, kind: str, arg: str, env: dict[str, str]):
        self.err = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115  (shown if the worker dies)
        self.p = subprocess.Popen(
            [sys.executable, __file__, "--worker", kind, "--arg", arg],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
            bufsize=1,
        )
        self.kind = kind
        self._read()

    def _read(self) -> dict:
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        if not line:
            code = self.p.wait()
            self.err.seek(0)
            raise SystemExit(f"{self.kind} worker died (exit {code}): {self.err.read()[-1500:]}")
        return json.loads(line)

    def ask(self, **req: object) -> dict:
        assert self.p.stdin is not None
        self.p.stdin.write(json.dumps(req) + "\n")
        self.p.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.p.stdin:
            self.p.stdin.close()
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


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
        best = max(best, 2 * 1024**3 / (time.perf_counter() - t0) / 1e9)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2, help="ABAB rounds of the sweep and of kit vs bare")
    ap.add_argument("--questions", type=int, default=5, help="new questions in the warm-ask loop")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--before", type=Path, help="another checkout (e.g. /work/main) for warm ask, same run")
    ap.add_argument("--no-busy", action="store_true", help="skip the busy-machine run")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--arg", action="append", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker == "bare":
        worker_bare(args.arg[0])
        return 0
    if args.worker == "kit":
        worker_kit()
        return 0
    if args.worker == "ask":
        worker_ask(args.arg[0])
        return 0

    load_before = os.getloadavg()
    t_start = time.perf_counter()
    mt = args.max_tokens
    kit_w = Worker("kit", "", _env(None, ROOT))
    kit = [kit_w.ask(max_tokens=mt)]
    model = kit[0]["model"]
    bare_w = {name: Worker("bare", model, _env(policy)) for name, policy in POLICIES.items()}
    # 1. sweep: every setting under both policies, the policies alternating
    sweep: list[dict] = []
    for r in range(args.rounds):
        for t, b in COMBOS:
            for name in list(POLICIES) if r % 2 == 0 else list(reversed(POLICIES)):
                sweep.append({"policy": name, **bare_w[name].ask(threads=[t, b], max_tokens=mt)})
    configs: dict[tuple, list[dict]] = {}
    for row in sweep:
        configs.setdefault((row["policy"], row["decode_threads"], row["batch_threads"]), []).append(row)
    table = [
        {
            "policy": p,
            "decode_threads": t,
            "batch_threads": b,
            "decode_tok_s": med(rows, "decode_tok_s"),
            "prompt_s": med(rows, "ttft_s"),
        }
        for (p, t, b), rows in configs.items()
    ]
    best_decode = max(table, key=lambda r: r["decode_tok_s"])
    best_prompt = min(table, key=lambda r: r["prompt_s"])

    # 2. kit vs the best bare settings, alternating per generation
    kit_rows, bare_dec, bare_pp = [], [], []  # kit[0] (a probe, run before the sweep) is left out
    d, p = best_decode, best_prompt
    for r in range(args.rounds + 1):

        def bare() -> None:
            if d["policy"] == p["policy"]:  # one generation runs the best of both phases
                row = bare_w[d["policy"]].ask(
                    threads=[d["decode_threads"], p["batch_threads"]], max_tokens=mt
                )
                bare_dec.append(row)
                bare_pp.append(row)
            else:
                bare_dec.append(
                    bare_w[d["policy"]].ask(threads=[d["decode_threads"], d["batch_threads"]], max_tokens=mt)
                )
                bare_pp.append(
                    bare_w[p["policy"]].ask(threads=[p["decode_threads"], p["batch_threads"]], max_tokens=4)
                )

        if r % 2 == 0:
            bare()
        kit_rows.append(kit_w.ask(max_tokens=mt))
        if r % 2 == 1:
            bare()
    for w in (kit_w, *bare_w.values()):
        w.close()

    # 3. warm ask, new questions, the two codes alternating per question; then a repeated one
    from_squad = [
        q["question"]
        for a in json.loads(SQUAD.read_text(encoding="utf-8"))["data"]
        for para in a["paragraphs"]
        for q in para["qas"]
    ]
    sides = {"after": ROOT, **({"before": args.before} if args.before else {})}
    ask_w = {name: Worker("ask", str(root), _env(None, root)) for name, root in sides.items()}
    asks: dict[str, dict] = {name: {"new": [], "busy": []} for name in sides}

    def loop(questions: list[str], key: str) -> None:
        for i, q in enumerate(questions):
            for name in list(sides) if i % 2 == 0 else list(reversed(sides)):
                asks[name][key].append(ask_w[name].ask(question=q, max_tokens=mt))

    n = args.questions
    loop(from_squad[:n], "new")
    for name in sides:
        ask_w[name].ask(question=from_squad[0], max_tokens=mt)
        asks[name]["repeated"] = ask_w[name].ask(question=from_squad[0], max_tokens=mt)
    # 4. busy machine: one CPU-bound process beside the same loop, other new questions
    if not args.no_busy:
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            loop(from_squad[n : 2 * n], "busy")
        finally:
            hog.kill()
            hog.wait()
    for w in ask_w.values():
        w.close()
    gflops = sgemm_gflops()
    load_after = os.getloadavg()

    n_params = kit[0]["n_params"]
    ptok = med(kit_rows, "prompt_tokens")
    res: dict = {
        "model": Path(model).name,
        "n_params": n_params,
        "prompt_tokens": ptok,
        "max_tokens": args.max_tokens,
        "cpus": os.cpu_count(),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after],
        "wall_s": round(time.perf_counter() - t_start, 1),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "sweep": sorted(table, key=lambda r: (r["policy"], r["decode_threads"], r["batch_threads"])),
        "best_bare_decode": best_decode,
        "best_bare_prompt": best_prompt,
        "kit_threads": [kit[0]["decode_threads"], kit[0]["batch_threads"]],
        "kit_decode_tok_s": med(kit_rows, "decode_tok_s"),
        "bare_decode_tok_s": med(bare_dec, "decode_tok_s"),
        "kit_prompt_s": med(kit_rows, "ttft_s"),
        "bare_prompt_s": med(bare_pp, "ttft_s"),
    }
    res["decode_ratio"] = round(res["kit_decode_tok_s"] / res["bare_decode_tok_s"], 3)
    res["prompt_ratio"] = round(res["bare_prompt_s"] / res["kit_prompt_s"], 3)  # >1: kit faster
    pp_gflops = n_params * 2 * ptok / res["kit_prompt_s"] / 1e9
    res["physical"] = {
        "sgemm_gflops": round(gflops, 1),
        "prompt_gflops_achieved": round(pp_gflops, 1),
        "bound_prompt_s": round(n_params * 2 * ptok / (gflops * 1e9), 3),
        "share_of_bound": round(pp_gflops / gflops, 3),
    }
    for name, got in asks.items():
        new, rep = got["new"], got["repeated"]
        res[f"ask_{name}"] = {
            "threads": new[0]["threads"],
            "questions": len(new),
            "first_token_p50_s": med(new, "first_token_s"),
            "retrieval_p50_s": med(new, "retrieval_s"),
            "prompt_p50_s": med(new, "prompt_s"),
            "prompt_tokens_p50": med(new, "prompt_tokens"),
            "reused_tokens_p50": med(new, "reused_tokens"),
            "decode_tok_s_p50": med(new, "decode_tok_s"),
            "repeated_first_token_s": round(rep["first_token_s"], 4),
            "repeated_retrieval_s": rep["retrieval_s"],
            "repeated_prompt_s": rep["prompt_s"],
        }
        if got["busy"]:
            ft = [q["first_token_s"] for q in got["busy"]]
            res[f"busy_{name}"] = {
                "first_token_p50_s": round(statistics.median(ft), 3),
                "first_token_p95_s": round(p95(ft), 3),
                "p95_over_p50": round(p95(ft) / statistics.median(ft), 2),
            }
    res["goals"] = {
        "decode_ratio_ge_0.95": res["decode_ratio"] >= 0.95,
        "prompt_ratio_ge_0.95": res["prompt_ratio"] >= 0.95,
        "warm_ask_first_token_le_2s": res["ask_after"]["first_token_p50_s"] <= 2.0,
        "busy_p95_over_p50_le_1.5": res["busy_after"]["p95_over_p50"] <= 1.5 if "busy_after" in res else None,
    }
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(
        f"{res['date']}  model {res['model']} ({n_params / 1e6:.0f}M params), prompt {ptok} tokens, "
        f"{args.max_tokens} generated; load {res['load_before']} -> {res['load_after']} on {res['cpus']} cpus"
    )
    print("sweep, bare llama-cpp-python (median of", args.rounds, "runs each):")
    for r in res["sweep"]:
        print(
            f"  {r['policy']:8} {r['decode_threads']} thread(s): decode {r['decode_tok_s']:7.1f} tok/s,"
            f" prompt {r['prompt_s']:.3f} s"
        )
    bd, bp = best_decode, best_prompt
    print(
        f"best bare: decode {bd['policy']} {bd['decode_threads']} thread(s), "
        f"prompt {bp['policy']} {bp['batch_threads']} thread(s); kit chose decode "
        f"{res['kit_threads'][0]} / batch {res['kit_threads'][1]} threads, PASSIVE"
    )
    print(
        f"decode  kit {res['kit_decode_tok_s']} tok/s vs bare best {res['bare_decode_tok_s']}: "
        f"ratio {res['decode_ratio']} (goal >= 0.95)"
    )
    print(
        f"prompt  kit {res['kit_prompt_s']} s vs bare best {res['bare_prompt_s']} s: "
        f"ratio {res['prompt_ratio']} (goal >= 0.95)"
    )
    ph = res["physical"]
    print(
        f"physical bound: {ph['sgemm_gflops']} GFLOP/s sgemm -> {ph['bound_prompt_s']} s for this prompt; "
        f"achieved {ph['prompt_gflops_achieved']} GFLOP/s ({ph['share_of_bound']:.0%} of it)"
    )
    for name in sides:
        a = res[f"ask_{name}"]
        print(
            f"warm ask [{name}] threads {a['threads']}, {a['questions']} new questions: first token p50 "
            f"{a['first_token_p50_s']} s = retrieval {a['retrieval_p50_s']} s + prompt {a['prompt_p50_s']} s "
            f"({a['prompt_tokens_p50']} tokens, {a['reused_tokens_p50']} reused) + rest; decode "
            f"{a['decode_tok_s_p50']} tok/s; repeated question {a['repeated_first_token_s']} s"
        )
    for name in (k for k in sides if f"busy_{k}" in res):
        b = res[f"busy_{name}"]
        print(
            f"busy [{name}] first token p50 {b['first_token_p50_s']} s p95 {b['first_token_p95_s']} s: "
            f"p95/p50 {b['p95_over_p50']} (goal <= 1.5)"
        )
    print("goals:", json.dumps(res["goals"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
