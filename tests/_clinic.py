"""The labelled synthetic clinic set (tests/data/clinic, made by scripts/make_clinic_set.py).

Shared by tests/test_clinic_trial.py and scripts/bench_subjects.py: ingest it as a clinic would,
then measure where the patient was found and what an erasure left.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent / "data" / "clinic"


def labels() -> dict[str, Any]:
    return json.loads((ROOT / "labels.json").read_text(encoding="utf-8"))


def ingest_clinic(session: Any, collection: str, root: Path = ROOT) -> dict[str, Any]:
    """Ingest every file: tagged ones with their tag, CSV/JSON one row per document by subject field."""
    from offline.gdpr.subjects import ingest_with_subject_field
    from offline.ingest import ingest_paths

    lab = labels()
    failed: list[Any] = []
    plain: dict[tuple[str, ...], list[Path]] = {}
    for rel, info in lab["files"].items():
        path = root / rel
        if info.get("subject_field"):
            rep = ingest_with_subject_field(session, [path], collection, info["subject_field"])
            failed += rep["failed"]
        else:
            plain.setdefault(tuple(info["subjects_tag"]), []).append(path)
    for tags, paths in plain.items():
        rep = ingest_paths(session, paths, collection, subjects=tags)
        failed += rep["failed"]
    return {"failed": failed}


def place_name(place: dict[str, Any]) -> str:
    """The document name a place is stored under (``file.csv#row-1`` for a row)."""
    base = Path(place["file"]).name
    return f"{base}#{place['row']}" if place.get("row") else base


def chunk_texts(session: Any, collection: str) -> list[str]:
    from offline.vault.collections import open_collection

    return [
        r[0] for r in open_collection(session, collection, "read").conn.execute("SELECT text FROM chunks")
    ]


def places_found(export: dict[str, Any], lab: dict[str, Any]) -> dict[str, bool]:
    """For each place of the subject: did the export return the passage holding its marker?"""
    got: dict[str, str] = {}
    for coll in export["collections"]:
        for d in coll["documents"]:
            got[d["name"]] = got.get(d["name"], "") + "\n".join(c["text"] for c in d["chunks"])
    return {
        f"{place_name(p)}:{p['marker']}": p["marker"] in got.get(place_name(p), "") for p in lab["places"]
    }


def survivors(session: Any, collection: str, lab: dict[str, Any]) -> dict[str, Any]:
    """After an erasure: markers of the subject still found, and other patients' markers lost."""
    text = "\n".join(chunk_texts(session, collection))
    return {
        "subject_markers_left": [p["marker"] for p in lab["places"] if p["marker"] in text],
        "other_markers_lost": [m for m in lab["keep_markers"] if m not in text],
    }
