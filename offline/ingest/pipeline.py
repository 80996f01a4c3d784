"""``offline ingest``: one flow from sources to stored documents, whatever produced the sources.

:func:`ingest_paths` (files and folders, found by :mod:`offline.ingest.discovery`) and
:func:`ingest_records` (texts given in memory) only turn their input into :class:`Source` items;
:func:`ingest_sources` does every check and every write for both, in three steps:

1. plan, before anything is read or written: label names and subject ids are valid, the same
   source twice is skipped, the caller's grant covers each document's label (the one it has and
   the one it gets; a denial is audited and stops the run), and no stored document changes label
   unless ``relabel`` is given (a conflict is a usage error and nothing is written);
2. per source, under the per-file time limit: read (size limit) and hash; unchanged -> skipped;
   only the label differs -> relabelled in place; else parse, redact, chunk, erasure guard,
   identifiers;
3. per group of sources: embed the group's chunks in batches, then one write transaction per
   document. A source that fails at step 2 or 3 is reported with its reason; the others commit.
   Nothing is written for a document until its vectors exist, so an interruption leaves whole
   documents only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AccessDenied, InvalidInput, OfflineError, UsageError
from ..gdpr.redact import Redactor
from ..retrieval import index as vindex
from ..retrieval.embed import get_embedder
from ..vault.collections import CollectionHandle, open_collection
from ..vault.core import check_name, seal_for_auditors
from . import loaders
from .chunking import DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP, Chunk, chunk_segments
from .detect import Detector, count_by_kind
from .discovery import discover
from .store import DocRecord, find_document, relabel_document, write_document

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
DEFAULT_TIMEOUT_S = 120.0
# Chunks embedded together: large enough for length-sorted batches, small enough to bound memory.
EMBED_GROUP = 1024

Progress = Callable[..., None]


@dataclass
class Source:
    """One document to ingest: a file to read, or a text given directly.

    ``key`` is what the collection stores as the document's source (a resolved path, or the
    caller's id for a text) and how a re-ingest finds the stored document. ``label`` None keeps
    the stored document's label (a new document gets none); a string is the label it must have.
    """

    key: str
    name: str
    label: str | None = None
    subjects: tuple[str, ...] = ()
    path: Path | None = None
    text: str | None = None
    meta: dict[str, Any] | None = None

    def read(self, max_bytes: int) -> tuple[bytes, float | None]:
        """The bytes to hash and parse, and the file's mtime (None for a text)."""
        if self.path is not None:
            data, st = _read_limited(self.path, max_bytes)
            return data, st.st_mtime
        data = (self.text or "").encode("utf-8")
        if len(data) > max_bytes:
            raise InvalidInput(f"over the size limit ({len(data)} > {max_bytes} bytes)")
        return data, None

    def parse(self, data: bytes, max_bytes: int) -> loaders.Loaded:
        """Segments by the file's loader; a text is one segment as given."""
        if self.path is not None:
            return loaders.load(self.path, data, max_bytes=max_bytes)
        return loaders.Loaded([loaders.Segment(self.text or "")], "text/plain")


@dataclass
class TextRecord:
    """A document given as text rather than a file (evaluation corpora, imports).

    ``label`` None keeps a stored document's label on re-ingest; see :class:`Source`.
    """

    source: str
    name: str
    text: str
    label: str | None = None
    subjects: tuple[str, ...] = ()
    meta: dict[str, Any] | None = None


@dataclass
class _Planned:
    source: Source
    label: str  # the label the document ends up with
    subjects: list[str]
    existing: tuple[int, str, str, list[str]] | None  # (id, sha256, label, subjects) as stored


@dataclass
class Prepared:
    item: _Planned
    record: DocRecord
    chunks: list[Chunk]
    status: str  # "added" or "updated"


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise InvalidInput if the block runs longer than ``seconds`` (main thread only; else no limit).

    Parsers here are pure Python (pypdf, python-docx, json), so SIGALRM interrupts them cleanly.
    """
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _fire(signum: int, frame: Any) -> None:
        raise _Timeout()

    old = signal.signal(signal.SIGALRM, _fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _Timeout:
        raise InvalidInput(f"took longer than the {seconds:g} s per-file limit") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def ingest_paths(
    session: Any,
    paths: Iterable[str | os.PathLike[str]],
    collection: str,
    *,
    label: str | None = None,
    subjects: Iterable[str] = (),
    relabel: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    chunk_tokens: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    embed_model: str | None = None,
    progress: Progress | None = None,
    allow_erased_reason: str | None = None,
) -> dict[str, Any]:
    """Ingest files and folders into ``collection`` (write grant needed); returns a summary.

    ``label`` None keeps the labels of documents already stored (new ones get none); a label
    that differs from a stored document's is refused unless ``relabel``. Summary keys:
    collection, added, updated, relabelled, unchanged, skipped, failed (lists), chunks (int);
    see :func:`ingest_sources`.
    """
    files, skipped, failed = discover(paths, exclude=session.vault_dir)
    subject_list = tuple(subjects)
    sources = [Source(key=str(f), name=f.name, label=label, subjects=subject_list, path=f) for f in files]
    return ingest_sources(
        session,
        sources,
        collection,
        relabel=relabel,
        max_bytes=max_bytes,
        timeout_s=timeout_s,
        chunk_tokens=chunk_tokens,
        overlap=overlap,
        embed_model=embed_model,
        progress=progress,
        allow_erased_reason=allow_erased_reason,
        skipped=skipped,
        failed=failed,
    )


def ingest_records(
    session: Any,
    records: Iterable[TextRecord],
    collection: str,
    *,
    relabel: bool = False,
    chunk_tokens: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    embed_model: str | None = None,
    progress: Progress | None = None,
    allow_erased_reason: str | None = None,
) -> dict[str, Any]:
    """Like :func:`ingest_paths` for in-memory texts: the same checks, chunking, embedding and writes."""
    sources = (
        Source(key=r.source, name=r.name, label=r.label, subjects=tuple(r.subjects), text=r.text, meta=r.meta)
        for r in records
    )
    return ingest_sources(
        session,
        sources,
        collection,
        relabel=relabel,
        chunk_tokens=chunk_tokens,
        overlap=overlap,
        embed_model=embed_model,
        progress=progress,
        allow_erased_reason=allow_erased_reason,
        audit_extra={"records": True},
    )


def ingest_sources(
    session: Any,
    sources: Iterable[Source],
    collection: str,
    *,
    relabel: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    chunk_tokens: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    embed_model: str | None = None,
    progress: Progress | None = None,
    allow_erased_reason: str | None = None,
    skipped: Iterable[dict[str, str]] = (),
    failed: Iterable[dict[str, str]] = (),
    audit_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Check, parse, embed and store ``sources`` in ``collection`` (write grant needed).

    Raises before writing anything: AccessDenied (audited) when the caller's grant does not cover
    a label a document has or would get; UsageError for bad names, limits, or (without
    ``relabel``) a stored document whose label would change. A source that then fails (too big,
    corrupt, too slow, erased data without ``allow_erased_reason``, see
    :class:`offline.gdpr.journal.ErasureGuard`) is reported and the others commit.

    Returns collection, added/updated ({path, doc_id, chunks}), relabelled ({path, doc_id, from,
    to, content}: "unchanged" when moved in place with its id, "updated" when it was replaced),
    unchanged ({path}), skipped/failed ({path, reason}; ``skipped``/``failed`` given by the
    producer come first), chunks, identifiers (counts by kind, or None) and seconds.
    """
    from ..gdpr.journal import ErasureGuard

    handle = open_collection(session, collection, need="write")
    if max_bytes <= 0:
        raise UsageError("the size limit must be positive")
    plan, repeated = _plan(session, handle, sources, relabel)
    guard = ErasureGuard(session, allow_erased_reason)
    detector = Detector(session)
    redactor = Redactor(session, handle, detector)
    embedder = get_embedder(embed_model)
    vindex.check_model(handle.conn, collection, embedder.name, embedder.sha256)
    size = chunk_tokens or min(DEFAULT_CHUNK_TOKENS, embedder.max_tokens - 2)
    if size > embedder.max_tokens - 2:
        raise UsageError(f"chunks of {size} tokens exceed the embedding model's {embedder.max_tokens - 2}")
    report: dict[str, Any] = {
        "collection": collection,
        "added": [],
        "updated": [],
        "relabelled": [],
        "unchanged": [],
        "skipped": [*skipped, *repeated],
        "failed": list(failed),
        "chunks": 0,
        "identifiers": {} if detector.enabled else None,
    }
    emit = progress or (lambda *a, **k: None)
    emit("start", files=len(plan))
    started = time.perf_counter()
    group: list[Prepared] = []

    def fail(item: _Planned, reason: str) -> None:
        report["failed"].append({"path": item.source.key, "reason": reason})
        emit("file", path=item.source.key, status="failed")

    for item in plan:
        try:
            with time_limit(timeout_s):
                prepared = _prepare(item, max_bytes, embedder, size, overlap, guard, detector, redactor)
        except OfflineError as exc:
            fail(item, str(exc))
            continue
        except Exception as exc:  # a parser bug on hostile input must not stop the batch
            fail(item, f"{exc.__class__.__name__}: {exc}"[:200])
            continue
        if prepared == "unchanged":
            report["unchanged"].append({"path": item.source.key})
            emit("file", path=item.source.key, status="unchanged")
        elif prepared == "relabel":
            _relabel_in_place(handle, item, report, emit, fail)
        else:
            group.append(prepared)
            if sum(len(p.chunks) for p in group) >= EMBED_GROUP:
                _embed_and_write(session, handle, embedder, group, report, emit)
                group.clear()
    if group:
        _embed_and_write(session, handle, embedder, group, report, emit)
    report["seconds"] = round(time.perf_counter() - started, 3)
    subjects = sorted({s for item in plan for s in item.subjects})
    moved = [{"doc_id": m["doc_id"], "from": m["from"], "to": m["to"]} for m in report["relabelled"]]
    # A relabel changes who may read a document: notice severity, so a reviewer filtering the log finds it.
    session.audit(
        "ingest",
        severity="notice" if moved else "info",
        collection=collection,
        labels=sorted({item.label for item in plan}),
        subjects_sealed=seal_for_auditors(session, "\n".join(subjects)) if subjects else None,
        added=[d["doc_id"] for d in report["added"]],
        updated=[d["doc_id"] for d in report["updated"]],
        relabelled=moved,
        unchanged=len(report["unchanged"]),
        skipped=len(report["skipped"]),
        failed=len(report["failed"]),
        chunks=report["chunks"],
        identifiers=report["identifiers"],
        **(audit_extra or {}),
    )
    report["tainted_adapters"] = _taint_relabelled(session, handle, report["relabelled"])
    return report


def _taint_relabelled(session: Any, handle: CollectionHandle, moved: list[dict[str, Any]]) -> list[str]:
    """Taint every adapter trained on a document moved in place to another label.

    An adapter's readers were decided by the labels its sources had when it was trained: after a move
    to a stricter label, readers of the old one would still query what it learnt. Labels have no
    order, so every move taints (fail closed); an admin who judges the move harmless records an
    override (``adapters override-taint``). A replaced document is not a move of what was learnt.
    """
    from ..finetune.store import adapters_using_document, mark_tainted

    names = sorted(
        {
            n
            for m in moved
            if m.get("content") != "updated"
            for n in adapters_using_document(session, handle.id, m["doc_id"])
        }
    )
    for name in names:
        mark_tainted(session, name, f"a document it was trained on moved to another label in {handle.name}")
    return names


def _plan(
    session: Any, handle: CollectionHandle, sources: Iterable[Source], relabel: bool
) -> tuple[list[_Planned], list[dict[str, str]]]:
    """Every check that needs no file read, over all sources, before the first write.

    Done up front so that a refusal leaves the collection exactly as it was: the caller learns of
    a label conflict or a denied label before any document moved.
    """
    plan: list[_Planned] = []
    repeated: list[dict[str, str]] = []
    seen: set[str] = set()
    denied: set[str] = set()
    hidden: list[tuple[int, str]] = []
    conflicts: list[tuple[str, str, str]] = []
    for src in sources:
        if src.key in seen:  # a second copy would replace the first within one run
            repeated.append({"path": src.key, "reason": "the same source was given twice"})
            continue
        seen.add(src.key)
        if src.label:
            check_name("label", src.label)
        subjects = sorted({_check_subject(s) for s in src.subjects})
        existing = find_document(handle.conn, src.key)
        stored = existing[2] if existing is not None else None
        label = src.label if src.label is not None else (stored or "")
        if existing is not None and not handle.label_allowed(stored):
            hidden.append((existing[0], src.key))  # a document this caller cannot see: never say its label
        elif not handle.label_allowed(label):
            denied.add(label)
        elif existing is not None and stored != label and not relabel:
            conflicts.append((src.key, stored, label))
        plan.append(_Planned(src, label, subjects, existing))
    if denied or hidden:
        session.audit(
            "access.denied",
            severity="warning",
            collection=handle.name,
            reason="label not granted",
            labels=sorted(denied),
            doc_ids=[d for d, _ in hidden],
        )
        if denied:
            shown = ", ".join(repr(lb) for lb in sorted(denied))
            raise AccessDenied(
                f"access denied: your grant on collection {handle.name!r} does not cover "
                f"label{'s' if len(denied) > 1 else ''} {shown}"
            )
        raise AccessDenied(
            f"access denied: your grant on collection {handle.name!r} does not cover "
            f"{len(hidden)} document(s) already stored from these sources (first: {hidden[0][1]})"
        )
    if conflicts:
        key, old, new = conflicts[0]
        raise UsageError.naming(
            "{n} document(s) already stored with another label (first: {key}: {old} -> {new}); "
            "nothing was ingested: add {relabel} to move them, or leave out {label} to keep "
            "their labels",
            "relabel",
            "label",
            n=len(conflicts),
            key=key,
            old=repr(old),
            new=repr(new),
        )
    return plan, repeated


def _check_subject(subject: str) -> str:
    s = str(subject).strip()
    if not s or len(s) > 128 or any(ord(ch) < 32 for ch in s):
        raise UsageError(f"invalid subject id {subject!r}: 1-128 printable characters")
    return s


def _read_limited(path: Path, max_bytes: int) -> tuple[bytes, os.stat_result]:
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_size > max_bytes:
                raise InvalidInput(f"over the size limit ({st.st_size} > {max_bytes} bytes)")
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise InvalidInput(f"unreadable ({exc.strerror or exc.__class__.__name__})") from None
    if len(data) > max_bytes:  # grew while we looked
        raise InvalidInput(f"over the size limit (> {max_bytes} bytes)")
    return data, st


def _prepare(
    item: _Planned,
    max_bytes: int,
    embedder: Any,
    size: int,
    overlap: int,
    guard: Any,
    detector: Any,
    redactor: Any,
) -> Prepared | str:
    """Prepared chunks for a new or changed document; "unchanged" or "relabel" when the bytes are the same."""
    src, existing = item.source, item.existing
    data, mtime = src.read(max_bytes)
    sha = hashlib.sha256(data).hexdigest()
    if existing is not None and (existing[1], existing[3]) == (sha, item.subjects):
        # Same bytes and subjects: nothing to parse or embed again, and the document keeps its id.
        return "unchanged" if existing[2] == item.label else "relabel"
    loaded = src.parse(data, max_bytes)
    chunks, pseudonyms, identifiers = _text_stage(
        loaded.segments, src.name, sha, item.subjects, embedder, size, overlap, guard, detector, redactor
    )
    for c in chunks:
        c.flags |= loaded.flags
    record = DocRecord(
        source=src.key,
        name=src.name,
        sha256=sha,
        size=len(data),
        mtime=mtime,
        label=item.label,
        mime=loaded.mime,
        subjects=item.subjects,
        meta={
            **loaded.meta,
            **(src.meta or {}),
            **({"flags": sorted(loaded.flags)} if loaded.flags else {}),
            **({"redacted": len(pseudonyms)} if redactor.enabled else {}),
        },
        identifiers=identifiers,
        pseudonyms=pseudonyms,
    )
    return Prepared(item, record, chunks, "updated" if existing else "added")


def _text_stage(
    segments: list[Any],
    name: str,
    sha: str,
    subjects: list[str],
    embedder: Any,
    size: int,
    overlap: int,
    guard: Any,
    detector: Any,
    redactor: Any,
) -> tuple[list[Chunk], list[Any], list[Any]]:
    """Refuse erased data, redact (in a redacting collection), chunk, and find identifiers.

    The erasure guard reads the text as it came in (redaction would hide the erased names from
    it); redaction runs before chunking, so no chunk, vector or FTS row ever holds the value.
    """
    pseudonyms: list[Any] = []
    if redactor.enabled:
        shown, pseudonyms = redactor.segments(segments)
    else:
        shown = segments
    chunks = chunk_segments(shown, embedder.tokenizer, size=size, overlap=overlap)
    if not chunks:
        raise InvalidInput("no text to index")
    guard.check(name, sha, [s.text for s in segments] + [c.text for c in chunks], subjects)
    texts = [c.text for c in chunks]
    identifiers = (
        redactor.identifiers(texts, pseudonyms) if redactor.enabled else detector.chunk_identifiers(texts)
    )
    return chunks, pseudonyms, identifiers


def _relabel_in_place(
    handle: CollectionHandle,
    item: _Planned,
    report: dict[str, Any],
    emit: Progress,
    fail: Callable[[_Planned, str], None],
) -> None:
    assert item.existing is not None
    doc_id, old = item.existing[0], item.existing[2]
    try:
        relabel_document(handle.conn, doc_id, old, item.label)
    except OfflineError as exc:
        fail(item, str(exc))
    except Exception as exc:  # the transaction rolled back: the document kept its old label everywhere
        fail(item, f"relabel failed: {exc.__class__.__name__}: {exc}"[:200])
    else:
        report["relabelled"].append(
            {"path": item.source.key, "doc_id": doc_id, "from": old, "to": item.label, "content": "unchanged"}
        )
        emit("file", path=item.source.key, status="relabelled")


def _embed_and_write(
    session: Any,
    handle: CollectionHandle,
    embedder: Any,
    group: list[Prepared],
    report: dict[str, Any],
    emit: Progress,
) -> None:
    texts = [c.text for p in group for c in p.chunks]
    try:
        vectors = embedder.encode(texts)
    except Exception as exc:
        for p in group:
            report["failed"].append(
                {"path": p.record.source, "reason": f"embedding failed: {exc.__class__.__name__}"}
            )
            emit("file", path=p.record.source, status="failed")
        return
    at = 0
    for p in group:
        n = len(p.chunks)
        try:
            doc_id, _ = write_document(
                handle.conn,
                handle.name,
                p.record,
                p.chunks,
                vectors[at : at + n],
                model=(embedder.name, embedder.sha256),
                user=session.user,
            )
        except OfflineError as exc:
            report["failed"].append({"path": p.record.source, "reason": str(exc)})
            emit("file", path=p.record.source, status="failed")
        except Exception as exc:  # the transaction rolled back: nothing of this document was kept
            report["failed"].append(
                {"path": p.record.source, "reason": f"write failed: {exc.__class__.__name__}: {exc}"[:200]}
            )
            emit("file", path=p.record.source, status="failed")
        else:
            report[p.status].append({"path": p.record.source, "doc_id": doc_id, "chunks": n})
            report["chunks"] += n
            old = p.item.existing
            if old is not None and old[2] != p.record.label:
                report["relabelled"].append(
                    {
                        "path": p.record.source,
                        "doc_id": doc_id,
                        "from": old[2],
                        "to": p.record.label,
                        "content": "updated",
                    }
                )
            low = (p.record.meta.get("ocr") or {}).get("low_confidence_pages")
            if low:  # a misread name is one an erasure will not find: say which pages to check
                report.setdefault("ocr_low_confidence", []).append({"path": p.record.source, "pages": low})
            if report.get("identifiers") is not None:
                for kind, count in count_by_kind(p.record.identifiers).items():
                    report["identifiers"][kind] = report["identifiers"].get(kind, 0) + count
            emit("file", path=p.record.source, status=p.status, chunks=n)
        at += n
