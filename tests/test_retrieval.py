"""Retrieval: hybrid ranking, filter-before-rank, label-limited grants on both legs, access denial."""

from __future__ import annotations

import json

import pytest
from _docfactory import write_pdf

from offline.errors import AccessDenied
from offline.vault import set_setting

TOPICS = {
    "volcano": "Volcanic eruptions eject lava, ash and sulfur dioxide into the atmosphere.",
    "tides": "Ocean tides are caused by the gravitational pull of the moon and the sun.",
    "bees": "Honey bees communicate the location of flowers through a waggle dance.",
    "glaciers": "Glaciers carve U-shaped valleys as they slowly flow downhill under their weight.",
    "coffee": "Coffee beans are roasted seeds from the berries of the Coffea plant.",
}


@pytest.fixture(scope="module")
def shared_vault(tmp_path_factory):
    """One vault for the module (building it embeds ~20 documents): alice admin, bob member, carol auditor.

    Collection kb: 5 public topic docs and a 2-page PDF (subject "pub"), 12 phi patient notes
    (subjects patient-0, patient-1); bob may read label public only. Tests that write use their own
    collections, so the shared one stays as built.
    """
    from conftest import PASSPHRASES

    from offline.ingest import ingest_paths
    from offline.vault import add_user, create_vault
    from offline.vault.collections import create_collection, grant

    root = tmp_path_factory.mktemp("retrieval")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OFFLINE_KDF_TARGET_S", "0")
        mp.setenv("OFFLINE_HOME", str(root / "home"))
        s = create_vault(root / "vault", "alice", PASSPHRASES["alice"])
        add_user(s, "bob", "member", PASSPHRASES["bob"])
        add_user(s, "carol", "auditor", PASSPHRASES["carol"])
        create_collection(s, "kb")
        pub, phi = root / "pub", root / "phi"
        pub.mkdir()
        phi.mkdir()
        for name, text in TOPICS.items():
            (pub / f"{name}.txt").write_text(text)
        write_pdf(
            pub / "report.pdf",
            ["Annual safety report overview.", "Forklift incidents fell by half this year."],
        )
        for i in range(12):
            (phi / f"patient{i}.txt").write_text(
                f"Patient {i} note: volcano ash exposure, tides of fever, bees allergy, "
                f"coffee intake {i} cups."
            )
        ingest_paths(s, [pub], "kb", label="public", subjects=["pub"])
        ingest_paths(s, [phi], "kb", label="phi", subjects=[f"patient-{i}" for i in range(2)])
        grant(s, "kb", "bob", "read", labels=["public"])
        s.close()
    return root / "vault"


@pytest.fixture
def vault_dir(shared_vault):
    """Point conftest's open_as and cli fixtures at the shared vault."""
    return shared_vault


@pytest.fixture
def kb(open_as):
    return open_as("alice")


def test_hybrid_dense_bm25_find_the_right_document(kb):
    from offline.retrieval import search

    for mode in ("hybrid", "dense", "bm25"):
        hits = search(
            kb, "what causes ocean tides?", mode=mode, k=3, labels=["public"], collections=["kb"]
        ).hits
        assert hits[0].doc_name == "tides.txt", mode
        assert hits[0].chunk_id == f"kb/{hits[0].chunk_id.split('/')[1]}"
    h = search(kb, "forklift incidents", k=1, collections=["kb"]).hits[0]
    assert (h.doc_name, h.page, h.citation) == ("report.pdf", 2, "report.pdf p. 2")
    assert h.dense_rank == 1 and h.bm25_rank == 1 and h.label == "public"


def test_filter_before_rank_returns_k_when_k_exist(kb):
    from offline.retrieval import search

    # 12 phi notes match "volcano ash" better than the 6 public docs; a filter applied after ranking
    # would leave few or none of the public docs in the top k.
    for mode in ("hybrid", "dense", "bm25"):
        for backend in ("sqlite", "memory"):
            hits = search(
                kb,
                "volcano ash bees coffee tides",
                k=6,
                labels=["public"],
                mode=mode,
                dense_backend=backend,
                collections=["kb"],
            ).hits
            if mode == "bm25":  # only docs sharing a term can match
                assert {h.doc_name for h in hits} == {"volcano.txt", "bees.txt", "coffee.txt", "tides.txt"}
            else:
                assert len(hits) == 6 and {h.label for h in hits} == {"public"}, (mode, backend)
            hits = search(
                kb,
                "volcano ash",
                k=2,
                subjects=["patient-1"],
                mode=mode,
                dense_backend=backend,
                collections=["kb"],
            ).hits
            assert len(hits) == 2 and {h.label for h in hits} == {"phi"}
    assert search(kb, "volcano", labels=["nope"], k=5).hits == []


def test_label_limited_grant_on_both_legs(kb, open_as):
    from offline.retrieval import search

    bob = open_as("bob")
    for mode in ("dense", "bm25", "hybrid"):
        for backend in ("sqlite", "memory"):
            hits = search(
                bob, "patient volcano ash fever allergy coffee", k=1000, mode=mode, dense_backend=backend
            ).hits
            assert hits, (mode, backend)
            assert all(h.label == "public" for h in hits), (mode, backend)
            assert not any("Patient" in h.text for h in hits)
            if mode == "dense":
                assert len(hits) == 7  # every public chunk, none of the 12 phi ones
        # asking for phi explicitly does not widen the grant
        assert search(bob, "patient", k=1000, mode=mode, labels=["phi"]).hits == []
    from offline.ingest.docs import list_documents

    assert {d["label"] for d in list_documents(bob)} == {"public"}


def test_no_access_collection_same_message_exists_or_not(kb, open_as, cli):
    from offline.retrieval import search
    from offline.vault.collections import create_collection

    if "secret" not in [
        c["name"] for c in __import__("offline.vault.collections", fromlist=["x"]).list_collections(kb)
    ]:
        create_collection(kb, "secret")
    bob = open_as("bob")
    msgs = []
    for name in ("secret", "does-not-exist"):
        with pytest.raises(AccessDenied) as e:
            search(bob, "x", collections=[name])
        msgs.append(str(e.value).replace(name, "N"))
    assert msgs[0] == msgs[1] == "access denied: collection 'N'"
    r = cli(["search", "x", "-c", "secret"], user="bob")
    assert r.exit_code == 4 and r.stderr.strip() == "Error: access denied: collection 'secret'"
    r = cli(["search", "x", "-c", "nothing-here"], user="bob")
    assert r.exit_code == 4 and r.stderr.strip() == "Error: access denied: collection 'nothing-here'"
    r = cli(["search", "x"], user="carol")  # the auditor reads no collection at all
    assert r.exit_code == 0 and r.stdout.strip() == "No matching chunks."


def test_memory_and_sqlite_backends_agree(kb):
    from offline.retrieval import search

    for labels, subjects in (
        (None, None),
        (["phi"], None),
        (None, ["pub"]),
        (["public", "phi"], ["patient-0"]),
    ):
        a = search(
            kb,
            "gravity of the moon",
            k=20,
            mode="dense",
            labels=labels,
            subjects=subjects,
            dense_backend="sqlite",
            collections=["kb"],
        )
        b = search(
            kb,
            "gravity of the moon",
            k=20,
            mode="dense",
            labels=labels,
            subjects=subjects,
            dense_backend="memory",
            collections=["kb"],
        )
        assert a.backend == "sqlite" and b.backend == "memory"
        assert [h.chunk_id for h in a.hits] == [h.chunk_id for h in b.hits]
        assert [h.score for h in a.hits] == pytest.approx([h.score for h in b.hits], abs=1e-5)


def test_auto_backend_warms_and_follows_writes(kb, tmp_path):
    from offline.ingest import ingest_paths
    from offline.retrieval import search
    from offline.vault.collections import create_collection

    create_collection(kb, "warm")
    (tmp_path / "old.txt").write_text("Bees make honey.")
    ingest_paths(kb, [tmp_path / "old.txt"], "warm")
    assert search(kb, "bees", collections=["warm"], k=1, audit=False).backend == "sqlite"
    assert search(kb, "bees", collections=["warm"], k=1, audit=False).backend == "memory"
    (tmp_path / "new.txt").write_text("Axolotls regenerate their limbs.")
    ingest_paths(kb, [tmp_path / "new.txt"], "warm", label="public")
    hits = search(kb, "axolotl limb regeneration", collections=["warm"], k=1, mode="dense", audit=False)
    assert hits.backend == "memory" and hits.hits[0].doc_name == "new.txt"  # the warm copy reloaded


def test_fts_query_sanitised(kb):
    from offline.retrieval import search
    from offline.retrieval.fts import fts_query

    for q in [
        '"unbalanced',
        "a AND (b OR",
        "NEAR(x y",
        "-minus *star ^caret",
        "   ",
        "!!!",
        "col:on",
        "ünïcödé — quotes ' \" ",
        "OR AND NOT",
        "bees*",
    ]:
        search(kb, q, mode="bm25", k=3, audit=False, collections=["kb"])
    for q in ['"unbalanced', "a AND (b OR", "OR AND NOT"]:
        search(kb, q, mode="hybrid", k=3, audit=False, collections=["kb"], labels=["public"])
    assert fts_query('honey "bees" AND the dance?') == '"honey" OR "bees" OR "dance"'
    assert fts_query("the") == '"the"' and fts_query("  ..  ") is None


def test_rrf_formula():
    from offline.retrieval.fusion import FusionWeights, rrf

    out = rrf(["a", "b", "c"], ["c", "a"], FusionWeights(rrf_k=60, w_dense=1.0, w_bm25=2.0))
    got = {k: s for k, s, _, _ in out}
    assert got["a"] == pytest.approx(1 / 61 + 2 / 62)
    assert got["c"] == pytest.approx(1 / 63 + 2 / 61)
    assert got["b"] == pytest.approx(1 / 62)
    assert [k for k, *_ in out] == ["c", "a", "b"]


def test_search_audit_entry_follows_setting(kb):
    from offline.audit.chain import iter_entries
    from offline.retrieval import search

    res = search(kb, "secret question about bees", k=2)
    entry = list(iter_entries(kb.db, "action = 'search'"))[-1]
    from offline.vault.core import unseal_for_auditors

    assert "query" not in entry.payload and "query_sha256" not in entry.payload
    assert unseal_for_auditors(kb, entry.payload["query_sealed"]) == "secret question about bees"
    assert [h["chunk_id"] for h in entry.payload["hits"]] == [h.chunk_id for h in res.hits]
    assert "total_ms" in entry.payload["timings"]
    set_setting(kb, "audit_questions", "full")
    search(kb, "secret question about bees", k=2)
    assert list(iter_entries(kb.db, "action = 'search'"))[-1].payload["query"] == "secret question about bees"
    set_setting(kb, "audit_questions", "none")
    search(kb, "another", k=2)
    p = list(iter_entries(kb.db, "action = 'search'"))[-1].payload
    assert "query" not in p and "query_sealed" not in p
    set_setting(kb, "audit_questions", "sealed")
    n = len(list(iter_entries(kb.db, "action = 'search'")))
    search(kb, "x", audit=False)
    assert len(list(iter_entries(kb.db, "action = 'search'"))) == n


def test_multiple_collections_are_merged(kb, tmp_path):
    from offline.ingest import ingest_paths
    from offline.retrieval import search
    from offline.vault.collections import create_collection

    create_collection(kb, "kb2")
    (tmp_path / "moon.txt").write_text("The moon's gravity raises ocean tides twice a day.")
    ingest_paths(kb, [tmp_path / "moon.txt"], "kb2", label="public")
    hits = search(kb, "ocean tides moon gravity", collections=["kb", "kb2"], k=3, labels=["public"]).hits
    assert {h.collection for h in hits} == {"kb", "kb2"}
    assert {h.doc_name for h in hits[:2]} == {"tides.txt", "moon.txt"}


def test_embedding_model_mismatch_is_refused(kb, tmp_path):
    from offline.ingest import ingest_paths
    from offline.retrieval import search
    from offline.retrieval.index import EmbeddingModelMismatch, set_meta
    from offline.vault.collections import create_collection, open_collection

    create_collection(kb, "mm")
    (tmp_path / "b.txt").write_text("Bees make honey.")
    ingest_paths(kb, [tmp_path / "b.txt"], "mm")
    set_meta(open_collection(kb, "mm").conn, "embed_model_sha256", "0" * 64)
    with pytest.raises(EmbeddingModelMismatch, match="re-ingest"):
        search(kb, "bees", mode="dense", collections=["mm"])
    with pytest.raises(EmbeddingModelMismatch):
        ingest_paths(kb, [tmp_path], "mm")
    assert search(kb, "bees", mode="bm25", collections=["mm"]).hits  # BM25 does not depend on the model


def test_cli_search_json_and_text(kb, cli):
    r = cli(["--json", "search", "forklift incidents", "-c", "kb", "-k", "2", "--label", "public"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["hits"][0]["citation"] == "report.pdf p. 2" and len(data["hits"]) == 2
    assert {"total_ms", "bm25_ms", "dense_ms"} <= set(data["timings"])
    r = cli(["search", "honey bee dance", "--mode", "bm25", "-k", "1"], user="bob")
    assert r.exit_code == 0 and "bees.txt" in r.stdout and "bm25 #1" in r.stdout
    r = cli(["search", "x", "--mode", "nope"])
    assert r.exit_code == 2


def test_forget_drops_warm_vectors(kb):
    from offline.retrieval import forget, search, warm
    from offline.retrieval.index import _warm

    assert warm(kb, ["kb"]) == {"kb": 19}
    assert kb in _warm
    forget(kb)
    assert kb not in _warm
    assert search(kb, "bees", collections=["kb"], k=1, audit=False).backend == "sqlite"
