"""SQuAD metrics (official normalisation) and ``offline eval qa`` on a slice of SQuAD v1.1 dev."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from offline.errors import InvalidInput
from offline.eval import metrics

SQUAD = Path(__file__).resolve().parent / "data" / "squad-mini.json"


def test_normalisation_and_scores():
    assert metrics.normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert metrics.normalize_answer("an Apple, a day") == "apple day"
    assert metrics.exact_match("the Denver Broncos.", "Denver Broncos") == 1.0
    assert metrics.exact_match("Broncos", "Denver Broncos") == 0.0
    assert metrics.f1_score("Broncos", "Denver Broncos") == pytest.approx(2 / 3)
    assert metrics.f1_score("", "Denver Broncos") == 0.0
    assert metrics.contains("It was the Denver Broncos [1].", "Denver Broncos") == 1.0
    assert metrics.contains("Broncosaurus", "Broncos") == 0.0
    assert metrics.best_over(metrics.f1_score, "Santa Clara", ["Santa Clara, California", "Santa Clara"]) == 1.0
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

    r = evaluate_squad(SQUAD, 5, "rag", k=1, max_tokens=8)
    assert r["questions"] == 5 and r["indexed_documents"] == 5 and len(r["per_question"]) == 5
    for key in ("exact_match", "f1", "answer_contains", "retrieval_hit_rate", "refused_rate"):
        assert 0.0 <= r[key] <= 1.0, key
    assert r["retrieval_hit_rate"] >= 0.8  # MiniLM finds the gold paragraph for these questions
    assert r["latency_s"]["total"]["p50"] > 0 and r["latency_s"]["total"]["p95"] >= r["latency_s"]["total"]["p50"]
    assert r["latency_s"]["retrieval"]["p50"] is not None and r["latency_s"]["ttft"]["p95"] is not None
    row = r["per_question"][0]
    assert row["gold"] == ["Denver Broncos"] * 3 and "em" in row and "f1" in row


def test_cli_eval_qa_base_and_errors(cli, tmp_path):
    r = cli(["--json", "eval", "qa", "--squad", str(SQUAD), "--limit", "2", "--mode", "base", "--max-tokens", "4"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["mode"] == "base" and d["questions"] == 2 and d["retrieval_hit_rate"] is None
    bad = tmp_path / "x.json"
    bad.write_text("[]")
    r = cli(["eval", "qa", "--squad", str(bad)])
    assert r.exit_code == 1 and r.output.strip() == f"Error: {bad} is not a SQuAD v1.1 JSON file (no 'data' list)"
