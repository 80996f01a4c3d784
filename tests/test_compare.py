"""``offline compare`` end to end: real vault, retrieval, llama.cpp (SmolLM2), a real 2-step LoRA."""

from __future__ import annotations

import json
import os
import stat
import struct
from pathlib import Path

import pytest
from conftest import DATA

import offline  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)

SQUAD = DATA / "squad-mini.json"
MODES = ["base", "rag", "finetune", "hybrid"]
REPO = Path(__file__).resolve().parent.parent
DONOR = Path(os.environ.get("OFFLINE_MODELS_DIR", REPO / "models")) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _modes_0600(folder: Path) -> dict[str, str]:
    """Every file the comparison wrote, with its permission bits unless they are 0600."""
    return {
        p.name: oct(stat.S_IMODE(p.stat().st_mode))
        for p in folder.iterdir()
        if stat.S_IMODE(p.stat().st_mode) != 0o600
    }


def _audit(session, action: str) -> list[dict]:
    from offline.audit.chain import iter_entries

    return [e.payload for e in iter_entries(session.db, "action = ?", (action,))]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def squad_kb(admin_session):
    """Collection 'kb' holding the squad-mini paragraphs, ingested with the real pipeline."""
    from offline.ingest import TextRecord, ingest_records
    from offline.vault.collections import create_collection

    raw = json.loads(SQUAD.read_text())
    recs = [
        TextRecord(source=f"{a['title']}-{i}", name=f"{a['title']}-{i}.txt", text=p["context"])
        for a in raw["data"]
        for i, p in enumerate(a["paragraphs"])
    ]
    create_collection(admin_session, "kb")
    ingest_records(admin_session, recs, "kb")
    return admin_session


@pytest.fixture
def tiny_adapter(squad_kb, tmp_path):
    """A real GGUF LoRA for SmolLM2 (rank 2 on layer 0's q/v projections), stored encrypted in the vault.

    Written with the gguf package rather than trained, to keep the test short: the comparison itself
    trains a real one (the one-document update) through the full fine-tuning pipeline.
    """
    from _loras import tiny_smollm2_lora

    from offline.finetune.store import save_adapter
    from offline.llm.resolve import resolve_generate_model

    data = tiny_smollm2_lora(tmp_path / "tiny-lora.gguf")
    save_adapter(
        squad_kb,
        "tiny",
        data,
        base_model="smollm2-135m-instruct",
        base_sha256=resolve_generate_model(None).sha256,
        base_arch="llama",
        dataset_sha256="0" * 64,
        hyperparameters={"rank": 2},
        loss_curve=[],
        eval_loss_before=None,
        eval_loss_after=None,
    )
    return "tiny"


def test_compare_report_json_charts_and_audit(squad_kb, tiny_adapter, cli, tmp_path):
    from offline.finetune.store import list_adapters
    from offline.ingest.docs import list_documents

    docs_before = len(list_documents(squad_kb, ["kb"]))
    out = tmp_path / "report"
    r = cli(
        [
            "--json",
            "compare",
            "--qa",
            str(SQUAD),
            "-c",
            "kb",
            "--adapter",
            tiny_adapter,
            "--limit",
            "2",
            "-k",
            "2",
            "--max-tokens",
            "12",
            "--update-steps",
            "1",
            "--out",
            str(out),
        ]
    )
    assert r.exit_code == 0, r.output
    printed = json.loads(r.output)
    res = json.loads((out / "results.json").read_text())
    assert printed["run"] == res["run"] and printed["modes"] == res["modes"]
    assert res["qa"]["questions"] == 2 and res["qa"]["format"] == "squad" and res["qa"]["available"] == 36
    assert res["modes_order"] == MODES and set(res["run_order"]) == set(MODES)
    for m in MODES:
        f = res["modes"][m]
        assert f["status"] == "ok" and f["questions"] == 2 and len(res["per_question"][m]) == 2
        assert 0 <= f["exact_match"] <= f["f1"] + 1e-9 <= 1 + 1e-9
        assert f["exact_match"] <= f["answer_contains"] + 1e-9
        retrieving = m in ("rag", "hybrid")
        for key in ("citation_hit_rate", "cited_rate", "retrieval_hit_rate"):
            assert (f[key] is not None) == retrieving
        if retrieving:
            # cited_rate counts only [n] the model wrote; citation_hit also counts inferred citations
            assert f["citation_hit_rate"] <= f["retrieval_hit_rate"] + 1e-9
            assert f["false_refusal_rate"] == f["refused_rate"] and 0 <= (f["support_mean"] or 0) <= 1
        assert f["ttft_s"]["n"] >= 1 and 0 < f["ttft_s"]["p50"] <= f["ttft_s"]["p95"]
        assert f["decode_tok_s"]["mean"] is None or f["decode_tok_s"]["mean"] > 0
        assert f["peak_rss_mb"] >= f["rss_start_mb"] > 0
        assert f["disk_bytes"] >= res["disk"]["model_bytes"] > 0
        assert {r_["id"] for r_ in res["per_question"][m]} == {r_["id"] for r_ in res["per_question"]["base"]}
        assert "prediction" not in res["per_question"][m][0]  # answers stay out unless --answers
    d = res["disk"]
    assert d["adapter_bytes"] > 0 and d["collection_bytes"] > 0 and d["embedder_bytes"] > 0
    assert d["vault_bytes"] > d["collection_bytes"] + d["adapter_bytes"]
    assert res["modes"]["hybrid"]["disk_bytes"] == sum(
        d[k] for k in ("model_bytes", "collection_bytes", "embedder_bytes", "adapter_bytes")
    )

    # Update cost and the freshness probe: retrieval finds the new fact only after the ingest;
    # the frozen adapter (and the base model) answer exactly as before, having no way to see it.
    upd = res["update"]
    assert upd["status"] == "ok"
    cost = upd["update_cost"]
    assert cost["ingest_s"] > 0 and cost["finetune_s"] > 0 and cost["finetune_steps"] == 1
    assert cost["ingest_chunks"] >= 1
    for m in ("rag", "hybrid"):
        assert not upd["before"][m]["retrieved_fact"] and upd["after"][m]["retrieved_fact"]
    for m in ("base", "finetune"):
        assert upd["before"][m]["answer"] == upd["after"][m]["answer"]
        assert not upd["after"][m]["retrieved_fact"] and not upd["after"][m]["answered"]
    assert "answered" in upd["finetune_updated"]
    # ...and the vault is left as it was: probe document removed, update adapter deleted.
    assert len(list_documents(squad_kb, ["kb"])) == docs_before
    assert [a["name"] for a in list_adapters(squad_kb)] == ["tiny"]

    report = (out / "report.md").read_text()
    for row in ("Inference speed", "Cost of an update", "Adaptability", "Accuracy", "Memory"):
        assert f"| **{row}" in report
    assert "## Method" in report and "4471-93" in report
    assert res["charts"] == ["accuracy_latency.png", "update_cost.png", "memory.png"]
    for c in res["charts"]:
        w, h = _png_size(out / c)
        assert 300 <= w <= 1000 and 150 <= h <= 800
        assert f"]({c})" in report
    assert not list(out.glob(".*"))  # no temp files left behind
    assert _modes_0600(out) == {}  # charts too: they show figures of private data
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    # The adapter is closed-book (no RAFT lineage): the report says hybrid served it a prompt it never saw.
    assert (
        res["adapter"]["recipe"] == "closed-book"
        and "> hybrid served `tiny`, a closed-book adapter" in report
    )
    last = report.rstrip("\n").splitlines()[-1]
    assert last == res["recommendation"] and last.startswith("Recommendation: ")

    starts, ends = _audit(squad_kb, "compare.start"), _audit(squad_kb, "compare.end")
    assert len(starts) == 1 and starts[0]["questions"] == 2 and starts[0]["adapter"] == "tiny"
    modes = _audit(squad_kb, "compare.mode")
    assert sorted(e["mode"] for e in modes) == sorted(MODES)
    for e in modes:
        assert e["run"] == res["run"] and e["f1"] == res["modes"][e["mode"]]["f1"]
        assert e["ttft_s"] == res["modes"][e["mode"]]["ttft_s"]
    assert (
        len(ends) == 1
        and ends[0]["status"] == "ok"
        and ends[0]["update_cost"]["ingest_s"] == cost["ingest_s"]
    )
    import hashlib

    assert ends[0]["results_sha256"] == hashlib.sha256((out / "results.json").read_bytes()).hexdigest()


def test_adapter_modes_skipped_without_adapter_and_jsonl_input(admin_session, cli, tmp_path):
    from offline.vault.collections import create_collection

    create_collection(admin_session, "empty")
    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        '{"question": "What is the capital of France?", "answers": ["Paris"]}\n'
        '{"question": "Who wrote Hamlet?", "answers": ["Shakespeare", "William Shakespeare"]}\n'
    )
    out = tmp_path / "o"
    r = cli(
        [
            "compare",
            "--qa",
            str(qa),
            "-c",
            "empty",
            "--modes",
            "base,finetune",
            "--limit",
            "1",
            "--max-tokens",
            "8",
            "--no-freshness",
            "--answers",
            "--out",
            str(out),
        ]
    )
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("Compared base on 1 questions in ") and lines[0].endswith(f"{out}/report.md")
    assert lines[1].startswith("  base      contains ")
    assert lines[2:4] == [
        "  finetune  skipped: needs --adapter NAME",
        "  update and freshness probe skipped: --no-freshness",
    ]
    assert lines[4:] == [json.loads((out / "results.json").read_text())["recommendation"]]
    assert lines[4].startswith("Recommendation: ") and " base " in lines[4]  # the only mode run
    res = json.loads((out / "results.json").read_text())
    assert res["qa"] == {**res["qa"], "format": "jsonl", "questions": 1, "available": 2}
    assert res["modes"]["finetune"] == {"status": "skipped", "note": "needs --adapter NAME"}
    assert res["run_order"] == ["base"] and res["update"]["status"] == "skipped"
    row = res["per_question"]["base"][0]
    assert row["question"] == "What is the capital of France?" and row["gold"] == ["Paris"]
    assert "mode `finetune` skipped: needs --adapter NAME" in (out / "report.md").read_text()
    assert [e["mode"] for e in _audit(admin_session, "compare.mode")] == ["base"]


def test_usage_and_access_errors(admin_session, cli, tmp_path):
    from offline.vault.collections import create_collection

    create_collection(admin_session, "kb")
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"question": "Q?", "answers": ["A"]}\n')
    out = tmp_path / "never"
    base = ["compare", "--qa", str(qa), "-c", "kb", "--out", str(out)]
    r = cli([*base, "--modes", "finetune,hybrid"])
    assert (
        r.exit_code == 2
        and r.output.strip() == "Error: no mode left to run: finetune and hybrid need --adapter NAME"
    )
    r = cli([*base, "--modes", "base,turbo"])
    assert (
        r.exit_code == 2
        and r.output.strip() == "Error: unknown mode 'turbo' (modes: base, rag, finetune, hybrid)"
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Q?", "answers": ["A"]}\n{"question": "no answers"}\n')
    r = cli(["compare", "--qa", str(bad), "-c", "kb", "--out", str(out)])
    assert r.exit_code == 1 and r.output.strip() == (
        'Error: bad.jsonl line 2: "answers" must be a list of non-empty strings (empty: unanswerable)'
    )
    r = cli(["compare", "--qa", str(tmp_path / "missing.json"), "-c", "kb", "--out", str(out)])
    assert r.exit_code == 2 and r.output.strip().startswith("Error: no such QA file")
    r = cli([*base[:-4], "-c", "secret", "--out", str(out)])
    assert r.exit_code == 4 and r.output.strip() == "Error: access denied: collection 'secret'"
    r = cli(base, user="bob")  # bob holds no grant on kb: same message as for a missing collection
    assert r.exit_code == 4 and r.output.strip() == "Error: access denied: collection 'kb'"
    r = cli([*base, "--adapter", "nope"])
    assert r.exit_code == 1 and r.output.strip() == "Error: no such adapter: 'nope'"
    assert not out.exists()  # nothing written for a run that never started
    assert _audit(admin_session, "compare.start") == []


def test_qa_loader_formats_and_limits(tmp_path):
    from offline.compare.data import load_probe, load_qa
    from offline.errors import InvalidInput

    s = load_qa(SQUAD, 5)
    assert s.format == "squad" and len(s.questions) == 5 and s.total == 36 and s.questions[0].answers
    p = tmp_path / "one.jsonl"
    p.write_text('{"id": "x1", "question": "Q?", "answers": "A"}\n\n')
    q = load_qa(p).questions
    assert q[0].qid == "x1" and q[0].answers == ("A",)
    p.write_text("not json\n")
    with pytest.raises(InvalidInput, match=r"one.jsonl line 1: invalid JSON"):
        load_qa(p)
    p.write_text('{"data": [{"paragraphs": [{"qas": [{"id": 1, "answers": [{"text": "x"}]}]}]}]}')
    with pytest.raises(InvalidInput, match="bad article/paragraph/qas layout"):
        load_qa(p)
    pr = tmp_path / "probe.json"
    pr.write_text(
        json.dumps(
            {"document": "Door code is 9182.", "question": "What is the door code?", "answers": ["9182"]}
        )
    )
    assert load_probe(pr).answers == ("9182",) and load_probe(pr).prompts
    pr.write_text('{"document": "x"}')
    with pytest.raises(InvalidInput, match="expected"):
        load_probe(pr)


# -- one Q/A loader for finetune and compare ---------------------------------------------------

QA_FORMATS = {
    "question-answers": (
        '{"id": "a", "question": "Who wrote Hamlet?", "answers": ["Shakespeare", "W. Shakespeare"]}\n'
        '{"question": "What is the door code?", "answers": []}\n',
        "jsonl",
    ),
    "prompt-completion": ('{"prompt": "Who wrote Hamlet?", "completion": "Shakespeare"}\n', "jsonl"),
    "messages": (
        '{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": '
        '"Who wrote Hamlet?"}, {"role": "assistant", "content": "Shakespeare"}]}\n',
        "jsonl",
    ),
    "squad": (
        json.dumps(
            {
                "data": [
                    {
                        "title": "T",
                        "paragraphs": [
                            {
                                "context": "Hamlet is by Shakespeare.",
                                "qas": [
                                    {
                                        "id": "s1",
                                        "question": "Who wrote Hamlet?",
                                        "answers": [{"text": "Shakespeare", "answer_start": 13}],
                                    },
                                    {
                                        "id": "s2",
                                        "question": "Who wrote Ulysses?",
                                        "answers": [],
                                        "is_impossible": True,
                                    },
                                ],
                            }
                        ],
                    }
                ]
            }
        ),
        "squad",
    ),
}


@pytest.mark.parametrize("fmt", sorted(QA_FORMATS))
def test_qa_formats_accepted_identically_by_finetune_and_compare(fmt, tmp_path):
    from offline.compare.data import load_qa
    from offline.finetune.data import load_jsonl, load_qa_file
    from offline.finetune.raft import load_qa_pairs

    text, kind = QA_FORMATS[fmt]
    f = tmp_path / "qa.jsonl"
    f.write_text(text)
    qa = load_qa_file(f)
    asked = load_qa(f)
    train = load_jsonl(f)
    assert qa.format == asked.format == kind and asked.sha256 == train.sha256 == qa.sha256
    # The same records, the same questions and gold answers, whoever reads the file.
    assert [(q.question, q.answers) for q in asked.questions] == [
        (e.question, e.answers) for e in qa.examples
    ]
    assert load_qa_pairs(f) == [(q.question, list(q.answers)) for q in asked.questions]
    assert asked.questions[0].question == "Who wrote Hamlet?" and "Shakespeare" in asked.questions[0].answers
    # Training learns the answerable ones (first gold answer); an unanswerable one teaches nothing
    # closed-book.
    assert [e.messages[-1]["content"] for e in train.examples] == ["Shakespeare"]
    assert train.meta["unanswerable_skipped"] == len(asked.questions) - asked.total


@pytest.mark.parametrize(
    "line, message",
    [
        ("{nope", "qa.jsonl line 1: invalid JSON"),
        ('{"question": "Q?"}', 'qa.jsonl line 1: "answers" must be a list of non-empty strings'),
        ('{"prompt": "a"}', 'qa.jsonl line 1: "prompt" and "completion" must both be strings'),
        (
            '{"messages": [{"role": "user", "content": "x"}]}',
            "qa.jsonl line 1: no non-empty assistant message",
        ),
        ('{"text": "x"}', 'qa.jsonl line 1: expected {"messages": [...]}'),
    ],
)
def test_bad_qa_lines_refused_alike_by_finetune_and_compare(line, message, tmp_path):
    from offline.compare.data import load_qa
    from offline.errors import InvalidInput
    from offline.finetune.data import load_jsonl

    f = tmp_path / "qa.jsonl"
    f.write_text(line + "\n")
    errors = []
    for load in (load_qa, load_jsonl):
        with pytest.raises(InvalidInput) as err:
            load(f)
        errors.append(str(err.value))
    assert errors[0] == errors[1] and errors[0].startswith(message)


# -- the recommendation line -----------------------------------------------------------------


def _fig(contains: float, ttft: float = 0.5, **kw) -> dict:
    return {
        "status": "ok",
        "answer_contains": contains,
        "f1": contains,
        "exact_match": contains,
        "ttft_s": {"p50": ttft},
        **kw,
    }


def test_recommendation_follows_the_figures():
    from offline.compare.report import recommendation

    def rec(**modes) -> str:
        return recommendation({"modes_order": list(modes), "modes": modes})

    good_rag = dict(cite_correct_rate=0.9, refusal_unanswerable_rate=0.85, false_refusal_rate=0.05)
    r = rec(base=_fig(0.1, 0.1), rag=_fig(0.7, 1.2, **good_rag))
    assert (
        r.startswith("Recommendation: use rag on this data (answer contains 0.70")
        and "next best base 0.10" in r
    )
    # Within 0.05 of a closed-book best, retrieval wins: it cites, and an ingest updates it.
    r = rec(finetune=_fig(0.72, 0.1), rag=_fig(0.70, 1.2, **good_rag))
    assert r.startswith("Recommendation: use rag") and "within 0.05 of finetune (0.72)" in r
    r = rec(finetune=_fig(0.80, 0.1), rag=_fig(0.70, 1.2, **good_rag))
    assert r.startswith("Recommendation: use finetune")
    # None good enough: the best is named with every goal it misses.
    r = rec(
        base=_fig(0.05),
        rag=_fig(0.30, 1.0, cite_correct_rate=0.6, refusal_unanswerable_rate=0.9, false_refusal_rate=0.2),
    )
    assert r.startswith("Recommendation: no mode is good enough on this data; the best is rag")
    assert "answer contains 0.30 (goal >= 0.60)" in r and "citation correct 0.60 (goal >= 0.85)" in r
    assert "false refusal 0.20 (goal <= 0.10)" in r and "refusal on unanswerable" not in r.split("misses")[1]
    assert "\n" not in r


# -- hybrid with a RAFT adapter, as it was trained ----------------------------------------------

WARD = {
    "fridges.txt": "Vaccine fridges must be kept between +2 °C and +8 °C.",
    "pep.txt": "Post-exposure prophylaxis should ideally start within 1 hour.",
    "lead.txt": "The ward lead is Dr Anna Novak.",
}
WARD_QA = [
    {"question": "What temperature must vaccine fridges be kept at?", "answers": ["+2 °C and +8 °C"]},
    {"question": "When should post-exposure prophylaxis start?", "answers": ["within 1 hour"]},
    {"question": "Who is the ward lead?", "answers": ["Dr Anna Novak"]},
]


@pytest.fixture
def ward(admin_session, tmp_path):
    """Collection 'ward': three one-line documents, short enough for a tiny model's 256-token window."""
    from offline.ingest import TextRecord, ingest_records
    from offline.vault.collections import create_collection

    create_collection(admin_session, "ward")
    ingest_records(admin_session, [TextRecord(source=n, name=n, text=t) for n, t in WARD.items()], "ward")
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(x) + "\n" for x in WARD_QA))
    return admin_session, train


@pytest.mark.skipif(not DONOR.is_file(), reason="default model file missing (offline models fetch)")
def test_hybrid_serves_a_raft_adapter_on_its_training_prompt(ward, tmp_path):
    import random

    from _loras import tiny_raft_adapter

    from offline.compare import run_compare
    from offline.finetune import raft
    from offline.rag import answer

    session, train = ward
    tiny = tiny_raft_adapter(session, "raft", train, "ward", tmp_path, DONOR)
    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        "".join(
            json.dumps(x) + "\n"
            for x in [
                WARD_QA[0],
                {"question": "What is the door code of the ward pharmacy?", "answers": []},
                WARD_QA[2],
            ]
        )
    )
    out = tmp_path / "o"
    res = run_compare(
        session,
        qa,
        "ward",
        out=out,
        adapter="raft",
        modes="rag,hybrid",
        model=str(tiny),
        k=2,
        max_tokens=6,
        freshness=False,
        min_score=-1.0,
    )
    assert res["adapter"]["recipe"] == "raft"
    for m in ("rag", "hybrid"):
        f = res["modes"][m]
        assert f["questions"] == 2 and f["unanswerable_questions"] == 1
        assert 0 <= f["refusal_unanswerable_rate"] <= 1 and 0 <= f["false_refusal_rate"] <= 1
        assert 0 <= f["answer_contains"] <= 1 and (f["cited_rate"] is None or 0 <= f["cited_rate"] <= 1)
        assert f["retrieval_hit_rate"] == 1.0  # every answerable question's document is retrieved
    assert "> hybrid served" not in (out / "report.md").read_text() and _modes_0600(out) == {}
    # Byte for byte the prompt RAFT trained on: ask's chat over the retrieved passages, in their order.
    q = WARD_QA[0]["question"]
    ans = answer(
        session,
        q,
        collections=["ward"],
        k=2,
        mode="hybrid",
        adapter="raft",
        model=str(tiny),
        max_tokens=4,
        min_score=-1.0,
    )
    hits = {str(h.chunk_id): h for h in ans.hits}
    shown = [
        raft.Passage(
            chunk_id=s["chunk_id"],
            doc_name=s["doc_name"],
            text=hits[s["chunk_id"]].text,
            section=s["section"],
            page=s["page"],
        )
        for s in ans.sources
    ]
    assert len(shown) == 2
    trained = raft.raft_messages(q, "", None, shown, random.Random(0), len(shown))
    assert ans.prompt == trained[:-1] and ans.adapter["name"] == "raft"
