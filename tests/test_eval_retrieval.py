"""``offline eval retrieval`` on a small BEIR folder built from a SQuAD slice (tests/data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data" / "squad-beir-slice.json"


@pytest.fixture
def beir(tmp_path):
    from offline.eval.retrieval import squad_to_beir

    out = tmp_path / "beir-squad"
    assert squad_to_beir(DATA, out, max_paragraphs=12) == {"documents": 12, "queries": 24}
    return out


def test_metric_definitions():
    from offline.eval.retrieval import mrr_at, ndcg_at, recall_at

    rels = {"d1": 1, "d2": 2}
    assert ndcg_at(["d2", "d1", "x"], rels) == pytest.approx(1.0)
    assert ndcg_at(["x", "d1"], rels) == pytest.approx((1 / 1.5849625) / (2 + 1 / 1.5849625))
    assert recall_at(["d1"] + ["x"] * 200, rels, 100) == 0.5
    assert mrr_at(["x", "y", "d2"], rels) == pytest.approx(1 / 3)
    assert mrr_at(["x"] * 10 + ["d1"], rels) == 0.0


def test_evaluate_beir_reports_three_modes(beir):
    from offline.eval.retrieval import evaluate_beir

    r = evaluate_beir(beir, limit=20)
    assert (r["queries"], r["documents"]) == (20, 12) and r["failed_documents"] == 0
    assert set(r["metrics"]) == {"dense", "bm25", "hybrid"}
    for m in r["metrics"].values():
        assert set(m) == {"ndcg@10", "recall@100", "mrr@10"}
        assert 0.5 < m["ndcg@10"] <= 1 and m["recall@100"] == 1.0  # 12 documents: all within 100
    # the temporary vault is gone
    assert not list(Path(__import__("tempfile").gettempdir()).glob("offline-eval-beir-*/vault/header.json"))


def test_cli_eval_retrieval(beir, cli):
    r = cli(["--json", "eval", "retrieval", "--beir", str(beir), "--limit", "4"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["queries"] == 4
    from offline.cli.eval import _beir_text

    text = _beir_text(data)
    assert "nDCG@10" in text and "hybrid" in text
    (beir / "queries.jsonl").unlink()
    r = cli(["eval", "retrieval", "--beir", str(beir)])
    assert r.exit_code == 2 and r.stderr.strip().startswith("Error: not a BEIR folder")
