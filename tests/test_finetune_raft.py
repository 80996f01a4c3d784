"""RAFT examples are the prompt ``ask`` builds, and ``finetune create --raft`` trains on a tiny model
with context retrieved under the caller's grants (lineage records the chunk ids)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from offline.finetune import raft
from offline.llm import prompts

REPO = Path(__file__).resolve().parent.parent
DONOR = Path(os.environ.get("OFFLINE_MODELS_DIR", REPO / "models")) / "SmolLM2-135M-Instruct.Q4_1.gguf"

P = [
    raft.Passage(chunk_id=f"c/{i}", doc_name=f"doc{i}.txt", text=t)
    for i, t in enumerate(
        [
            "Vaccine fridges are kept between +2 °C and +8 °C.",
            "The lead is Dr Anna Novak.",
            "Parking is free.",
        ]
    )
]


def test_raft_messages_are_the_ask_prompt_with_the_gold_cited():
    rng = random.Random(0)
    msgs = raft.raft_messages("What range for fridges?", "+2 °C and +8 °C", P[0], P[1:], rng, 3)
    sys_, user, target = msgs
    assert sys_ == {"role": "system", "content": prompts.SYSTEM_RAG}
    spans = prompts.source_spans(user["content"])
    n = next(k for k, v in spans.items() if v == P[0].text)
    assert target == {"role": "assistant", "content": f"+2 °C and +8 °C [{n}]"}
    blocks = [
        prompts.SourceBlock(
            n=k,
            chunk_id="",
            doc_name=f"doc{[p.text for p in P].index(v)}.txt",
            page=None,
            section=None,
            text=v,
        )
        for k, v in sorted(spans.items())
    ]
    assert msgs[:2] == prompts.rag_messages("What range for fridges?", blocks)  # byte for byte what ask sends
    absent = raft.raft_messages("What range for fridges?", "x", None, P[1:], rng, 2)
    assert absent[-1]["content"] == raft.REFUSAL and P[0].text not in absent[1]["content"]
    assert raft.REFUSAL in prompts.SYSTEM_RAG  # the refusal it learns is the one the prompt asks for


def test_squad_examples_hold_out_gold_a_quarter_of_the_time():
    arts = [
        {
            "title": "T",
            "paragraphs": [
                {
                    "context": f"Paragraph {i} says the answer is word{i}.",
                    "qas": [{"question": f"What does paragraph {i} say?", "answers": [{"text": f"word{i}"}]}],
                }
                for i in range(40)
            ],
        }
    ]
    rows = raft.squad_examples(arts, n=40, seed=1)
    refusals = sum(r["messages"][-1]["content"] == raft.REFUSAL for r in rows)
    assert 4 <= refusals <= 18
    positions = {
        r["messages"][-1]["content"].rsplit("[", 1)[-1] for r in rows if "[" in r["messages"][-1]["content"]
    }
    assert len(positions) >= 2  # the gold is not always [1]


@pytest.mark.skipif(not DONOR.is_file(), reason="default model file missing (offline models fetch)")
def test_finetune_create_raft_on_a_tiny_model_respects_grants(admin_session, cli, open_as, tmp_path):
    from offline.finetune.tiny_base import write_tiny_llama_gguf
    from offline.ingest import ingest_paths
    from offline.vault.collections import create_collection, grant

    tiny = write_tiny_llama_gguf(tmp_path / "tiny.gguf", DONOR)
    docs = tmp_path / "docs"
    (docs / "pub").mkdir(parents=True)
    (docs / "sec").mkdir()
    (docs / "pub" / "fridges.txt").write_text("Vaccine fridges must be kept between +2 °C and +8 °C.")
    (docs / "pub" / "pep.txt").write_text("Post-exposure prophylaxis should ideally start within 1 hour.")
    (docs / "sec" / "pay.txt").write_text("A practice nurse is paid 31,000 pounds a year.")
    create_collection(admin_session, "ward")
    ingest_paths(admin_session, [docs / "pub"], "ward", label="public")
    ingest_paths(admin_session, [docs / "sec"], "ward", label="secret")
    grant(admin_session, "ward", "bob", "read", labels=["public"])
    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        "".join(
            json.dumps(x) + "\n"
            for x in [
                {
                    "question": "What temperature must vaccine fridges be kept at?",
                    "answers": ["+2 °C and +8 °C"],
                },
                {"question": "When should post-exposure prophylaxis start?", "answers": ["within 1 hour"]},
                {"question": "What is a practice nurse paid?", "answers": ["31,000 pounds"]},
                {"question": "What is the ward's door code?", "answers": []},
            ]
        )
    )  # unanswerable: a refusal example
    args = [
        "--json",
        "finetune",
        "create",
        "ward-raft",
        "--raft",
        "--qa",
        str(qa),
        "-c",
        "ward",
        "-k",
        "2",
        "--base",
        str(tiny),
        "--max-steps",
        "1",
        "--rank",
        "2",
        "--eval-split",
        "0",
        "--no-progress",
    ]
    r = cli(args, user="bob")
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    meta = info["meta"]["raft"]
    assert meta["examples"] == 3 and meta["skipped_no_gold"] == 1  # the salary is in a chunk bob cannot read
    assert meta["unanswerable_refusals"] == 1
    bob = open_as("bob")
    from offline.retrieval import search

    visible = {
        h.chunk_id for h in search(bob, "fridges prophylaxis", collections=["ward"], k=10, audit=False).hits
    }
    assert meta["chunk_ids"] and set(meta["chunk_ids"]) <= visible
    assert info["source_doc_ids"][0]["labels"] == ["public"]
    assert info["meta"]["steps"] == 1
    from offline.audit.chain import iter_entries

    read = [e.payload for e in iter_entries(admin_session.db, "action = ?", ("finetune.read_collection",))][
        -1
    ]
    assert read["recipe"] == "raft" and read["chunk_ids"] == meta["chunk_ids"]
    r = cli(["finetune", "create", "x", "--raft", "--base", str(tiny)], user="bob")
    assert r.exit_code == 2 and "--qa" in r.output
