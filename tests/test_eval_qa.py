"""SQuAD metrics (official normalisation) and ``offline eval qa`` on a slice of SQuAD v1.1 dev."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from offline.errors import InvalidInput
from offline.eval import metrics

SQUAD = Path(__file__).resolve().parent / "data" / "squad-mini.json"
REPO = Path(__file__).resolve().parent.parent
DONOR = Path(os.environ.get("OFFLINE_MODELS_DIR", REPO / "models")) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_normalisation_and_scores():
    assert metrics.normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert metrics.normalize_answer("an Apple, a day") == "apple day"
    assert metrics.exact_match("the Denver Broncos.", "Denver Broncos") == 1.0
    assert metrics.exact_match("Broncos", "Denver Broncos") == 0.0
    assert metrics.f1_score("Broncos", "Denver Broncos") == pytest.approx(2 / 3)
    assert metrics.f1_score("", "Denver Broncos") == 0.0
    assert metrics.contains("It was the Denver Broncos [1].", "Denver Broncos") == 1.0
    assert metrics.contains("Broncosaurus", "Broncos") == 0.0
    assert (
        metrics.best_over(metrics.f1_score, "Santa Clara", ["Santa Clara, California", "Santa Clara"]) == 1.0
    )
    assert metrics.percentile([1, 2, 3, 4], 50) == 2.5 and metrics.percentile([], 50) is None


def test_load_squad_slices_and_rejects_bad_files(tmp_path):
    from offline.eval.qa import load_squad

    items, docs = load_squad(SQUAD, 5)
    assert len(items) == 5 and items[0].answers[0] == "Denver Broncos"
    assert len(docs) == 5  # the whole first article goes in as distractors
    assert all(i.doc in docs for i in items)
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": [{"paragraphs": [{"qas": 3}]}]}')
    with pytest.raises(InvalidInput):
        load_squad(bad, None)
    bad.write_text("not json")
    with pytest.raises(InvalidInput, match="not a SQuAD"):
        load_squad(bad, None)


def test_eval_qa_rag_on_five_questions():
    from offline.eval.qa import evaluate_squad

    r = evaluate_squad(SQUAD, 5, "rag", k=1, max_tokens=8, unanswerable=2)
    assert r["questions"] == 5 and r["indexed_documents"] == 5 and len(r["per_question"]) == 7
    assert r["unanswerable_questions"] == 2 and 0 <= r["grounding"]["refusal_unanswerable"] <= 1
    gone = [row for row in r["per_question"] if not row["gold"]]
    assert len(gone) == 2 and all(row["retrieval_hit"] is None and "contains" not in row for row in gone)
    for key in ("exact_match", "f1", "answer_contains", "retrieval_hit_rate", "refused_rate"):
        assert 0.0 <= r[key] <= 1.0, key
    assert r["retrieval_hit_rate"] >= 0.8  # MiniLM finds the gold paragraph for these questions
    assert (
        r["latency_s"]["total"]["p50"] > 0
        and r["latency_s"]["total"]["p95"] >= r["latency_s"]["total"]["p50"]
    )
    assert r["latency_s"]["retrieval"]["p50"] is not None and r["latency_s"]["ttft"]["p95"] is not None
    row = r["per_question"][0]
    assert row["gold"] == ["Denver Broncos"] * 3 and "em" in row and "f1" in row


def test_cli_eval_qa_base_and_errors(cli, tmp_path):
    r = cli(
        ["--json", "eval", "qa", "--squad", str(SQUAD), "--limit", "2", "--mode", "base", "--max-tokens", "4"]
    )
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["mode"] == "base" and d["questions"] == 2 and d["retrieval_hit_rate"] is None
    bad = tmp_path / "x.json"
    bad.write_text("[]")
    r = cli(["eval", "qa", "--squad", str(bad)])
    assert (
        r.exit_code == 1
        and r.output.strip() == f"Error: {bad} is not a SQuAD v1.1 JSON file (no 'data' list)"
    )


def test_pick_gold_removed_skips_questions_answered_elsewhere():
    from offline.eval.qa import pick_gold_removed

    paras = {
        "a": "Paris is the capital of France.",
        "b": "Paris hosted the 1900 Olympics.",
        "c": "Rome is old.",
    }
    qs = [("a", ["Paris"]), ("c", ["Rome"]), ("b", ["1900"]), ("c", ["old"])]
    picked, removed = pick_gold_removed(qs, paras, 5)
    # Paris is still in b when a goes: not a refusal test; c once removed is not removed twice.
    assert picked == [1, 2] and removed == {"c", "b"}
    assert pick_gold_removed(qs, paras, 1) == ([1], {"c"})


WARD = {
    "data": [
        {
            "title": "Ward",
            "paragraphs": [
                {
                    "context": "Vaccine fridges must be kept between +2 °C and +8 °C.",
                    "qas": [
                        {
                            "id": "w1",
                            "question": "What temperature must vaccine fridges be kept at?",
                            "answers": [{"text": "+2 °C and +8 °C", "answer_start": 37}],
                        }
                    ],
                },
                {
                    "context": "Post-exposure prophylaxis should ideally start within 1 hour.",
                    "qas": [
                        {
                            "id": "w2",
                            "question": "When should post-exposure prophylaxis start?",
                            "answers": [{"text": "within 1 hour", "answer_start": 48}],
                        }
                    ],
                },
                {
                    "context": "The ward lead is Dr Anna Novak.",
                    "qas": [
                        {
                            "id": "w3",
                            "question": "Who is the ward lead?",
                            "answers": [{"text": "Dr Anna Novak", "answer_start": 17}],
                        }
                    ],
                },
            ],
        }
    ]
}


@pytest.mark.skipif(not DONOR.is_file(), reason="default model file missing (offline models fetch)")
def test_eval_qa_hybrid_serves_the_users_raft_adapter(admin_session, cli, tmp_path):
    """A RAFT adapter from the user's vault, on a tiny model (a SQuAD file of short paragraphs fits its
    256-token window): copied into the throw-away vault, served with retrieval, use audited at home."""
    from _loras import tiny_raft_adapter

    from offline.audit.chain import iter_entries
    from offline.ingest import TextRecord, ingest_records
    from offline.vault.collections import create_collection

    paras = WARD["data"][0]["paragraphs"]
    create_collection(admin_session, "ward")
    ingest_records(
        admin_session,
        [TextRecord(source=f"p{i}", name=f"p{i}.txt", text=p["context"]) for i, p in enumerate(paras)],
        "ward",
    )
    train = tmp_path / "train.jsonl"
    train.write_text(
        "".join(
            json.dumps({"question": p["qas"][0]["question"], "answers": [p["qas"][0]["answers"][0]["text"]]})
            + "\n"
            for p in paras
        )
    )
    tiny = tiny_raft_adapter(admin_session, "ward-raft", train, "ward", tmp_path, DONOR)
    squad = tmp_path / "ward-squad.json"
    squad.write_text(json.dumps(WARD))
    args = [
        "--json",
        "eval",
        "qa",
        "--squad",
        str(squad),
        "--limit",
        "2",
        "--unanswerable",
        "1",
        "-k",
        "2",
        "--max-tokens",
        "4",
        "--model",
        str(tiny),
    ]
    r = cli([*args, "--mode", "hybrid", "--adapter", "ward-raft"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["mode"] == "hybrid" and d["adapter"]["name"] == "ward-raft" and d["adapter"]["recipe"] == "raft"
    assert d["questions"] == 2 and d["unanswerable_questions"] == 1 and d["indexed_documents"] == 3
    g = d["grounding"]
    assert set(g) == {
        "cited",
        "cite_correct",
        "citation_hit",
        "false_refusal",
        "support",
        "refusal_unanswerable",
    }
    assert 0 <= g["false_refusal"] <= 1 and 0 <= g["refusal_unanswerable"] <= 1
    assert d["retrieval_hit_rate"] == 1.0 and d["gold_paragraph_rate"] == 1.0
    opened = [e.payload for e in iter_entries(admin_session.db, "action = ?", ("adapter.open",))]
    assert opened and opened[-1]["adapter"] == "ward-raft"  # the use is on the user's own record
    r = cli([*args, "--mode", "hybrid"])
    assert r.exit_code == 2 and r.output.strip() == "Error: --mode hybrid needs --adapter NAME"
    r = cli([*args, "--mode", "rag", "--adapter", "ward-raft"])
    assert r.exit_code == 2 and r.output.strip() == "Error: --adapter goes with --mode finetune or hybrid"
    r = cli([*args, "--mode", "hybrid", "--adapter", "nope"])
    assert r.exit_code == 1 and r.output.strip() == "Error: no such adapter: 'nope'"
    r = cli([*args, "--mode", "hybrid", "--adapter", "ward-raft"], user="bob")  # not shared with bob
    assert r.exit_code == 4
