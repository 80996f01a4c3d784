"""``offline ingest``: discover files, parse and chunk them, embed, and write one document at a time.

Order of work per group of files: parse + chunk (under a per-file time limit) -> embed the whole
group's chunks in batches -> one write transaction per document. A file that fails at any step is
reported with its reason and skipped; the others commit. Nothing is written for a document until
its vectors exist, so an interruption leaves whole documents only.
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
from ..retrieval import index as vindex
from ..retrieval.embed import get_embedder
from ..vault.collections import open_collection
from ..vault.core import check_name, seal_for_auditors
from . import loaders
from .chunking import DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP, Chunk, chunk_segments
from ..gdpr.redact import Redactor
from .detect import Detector, count_by_kind
from .store import DocRecord, find_document, write_document

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
DEFAULT_TIMEOUT_S = 120.0
# Chunks embedded together: large enough for length-sorted batches, small enough to bound memory.
EMBED_GROUP = 1024

Progress = Callable[..., None]


@dataclass
class Prepared:
    path: Path
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


def discover(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[Path], list[dict[str, str]], list[dict[str, str]]]:
    """Expand files and folders (recursively) into resolved file paths to ingest.

    Returns (files, skipped, failed). Inside a folder, symlinks that resolve outside it, broken
    links and link loops are skipped; hidden entries and unsupported types are skipped with a note.
    """
    files: list[Path] = []
    seen: set[Path] = set()
    skipped: list[dict[str, str]] = []
    failed: list[dict[str, str]] = []

    def add(path: Path, shown: str) -> None:
        if loaders.kind_of(path) is None:
            skipped.append({"path": shown, "reason": f"unsupported file type {path.suffix or '(none)'!r}"})
        elif path not in seen:
            seen.add(path)
            files.append(path)

    for raw in paths:
        p = Path(raw).expanduser()
        try:
            resolved = p.resolve(strict=True)
        except (OSError, RuntimeError):
            failed.append({"path": str(p), "reason": "no such file or folder (or a broken link)"})
            continue
        if resolved.is_dir():
            _walk(resolved, add, skipped, failed)
        elif resolved.is_file():
            add(resolved, str(resolved))
        else:
            skipped.append({"path": str(p), "reason": "not a regular file"})
    return files, skipped, failed


def _walk(root: Path, add: Callable[[Path, str], None], skipped: list[dict[str, str]],
          failed: list[dict[str, str]]) -> None:
    visited = {root}
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            failed.append({"path": str(folder), "reason": f"unreadable folder ({exc.__class__.__name__})"})
            continue
        dirs = []
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith("."):
                skipped.append({"path": str(path), "reason": "hidden"})
                continue
            if entry.is_symlink():
                try:
                    target = path.resolve(strict=True)
                except (OSError, RuntimeError):
                    skipped.append({"path": str(path), "reason": "broken or looping symlink"})
                    continue
                if not target.is_relative_to(root):
                    skipped.append({"path": str(path), "reason": "symlink points outside the ingested folder"})
                elif target.is_dir():
                    if target in visited:
                        skipped.append({"path": str(path), "reason": "symlink loop"})
                    else:
                        visited.add(target)
                        dirs.append(target)
                elif target.is_file():
                    add(target, str(path))
                else:
                    skipped.append({"path": str(path), "reason": "not a regular file"})
            elif entry.is_dir(follow_symlinks=False):
                target = path.resolve()
                if target not in visited:
                    visited.add(target)
                    dirs.append(target)
            elif entry.is_file(follow_symlinks=False):
                add(path.resolve(), str(path))
            else:
                skipped.append({"path": str(path), "reason": "not a regular file"})
        stack.extend(reversed(dirs))


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


def ingest_paths(session: Any, paths: Iterable[str | os.PathLike[str]], collection: str, *,
                 label: str | None = None, subjects: Iterable[str] = (), max_bytes: int = DEFAULT_MAX_BYTES,
                 timeout_s: float | None = DEFAULT_TIMEOUT_S, chunk_tokens: int | None = None,
                 overlap: int = DEFAULT_OVERLAP, embed_model: str | None = None,
                 progress: Progress | None = None, allow_erased_reason: str | None = None) -> dict[str, Any]:
    """Ingest files and folders into ``collection`` (write grant needed); returns a summary.

    Summary keys: collection, added, updated, unchanged, skipped, failed (lists), chunks (int).
    A file that brings back erased data is refused (failed) unless ``allow_erased_reason`` is
    given (see :class:`offline.gdpr.journal.ErasureGuard`).
    """
    from ..gdpr.journal import ErasureGuard

    handle = open_collection(session, collection, need="write")
    label = label or ""
    if label:
        check_name("label", label)
    if not handle.label_allowed(label):
        session.audit("access.denied", severity="warning", collection=collection, reason="label not granted",
                      label=label)
        raise AccessDenied(f"access denied: your grant on collection {collection!r} does not cover label {label!r}")
    subject_list = sorted({_check_subject(s) for s in subjects})
    if max_bytes <= 0:
        raise UsageError("the size limit must be positive")
    guard = ErasureGuard(session, allow_erased_reason)
    detector = Detector(session)
    redactor = Redactor(session, handle, detector)
    embedder = get_embedder(embed_model)
    vindex.check_model(handle.conn, collection, embedder.name, embedder.sha256)
    size = chunk_tokens or min(DEFAULT_CHUNK_TOKENS, embedder.max_tokens - 2)
    if size > embedder.max_tokens - 2:
        raise UsageError(f"chunks of {size} tokens exceed the embedding model's {embedder.max_tokens - 2}")
    files, skipped, failed = discover(paths)
    vault_dir = Path(session.vault_dir).resolve()
    skipped += [{"path": str(f), "reason": "inside the vault folder"} for f in files if f.is_relative_to(vault_dir)]
    files = [f for f in files if not f.is_relative_to(vault_dir)]
    report: dict[str, Any] = {"collection": collection, "added": [], "updated": [], "unchanged": [],
                              "skipped": skipped, "failed": failed, "chunks": 0,
                              "identifiers": {} if detector.enabled else None}
    emit = progress or (lambda *a, **k: None)
    emit("start", files=len(files))
    started = time.perf_counter()
    group: list[Prepared] = []

    def flush() -> None:
        _embed_and_write(session, handle, embedder, group, report, emit)
        group.clear()

    for path in files:
        try:
            with time_limit(timeout_s):
                prepared = _prepare(handle.conn, path, label, subject_list, max_bytes, embedder, size, overlap, guard,
                                    detector, redactor)
        except OfflineError as exc:
            failed.append({"path": str(path), "reason": str(exc)})
            emit("file", path=str(path), status="failed")
            continue
        except Exception as exc:  # a parser bug on hostile input must not stop the batch
            failed.append({"path": str(path), "reason": f"{exc.__class__.__name__}: {exc}"[:200]})
            emit("file", path=str(path), status="failed")
            continue
        if prepared is None:
            report["unchanged"].append({"path": str(path)})
            emit("file", path=str(path), status="unchanged")
            continue
        group.append(prepared)
        if sum(len(p.chunks) for p in group) >= EMBED_GROUP:
            flush()
    if group:
        flush()
    report["seconds"] = round(time.perf_counter() - started, 3)
    session.audit("ingest", collection=collection, label=label,
                  subjects_sealed=seal_for_auditors(session, "\n".join(subject_list)) if subject_list else None,
                  added=[d["doc_id"] for d in report["added"]], updated=[d["doc_id"] for d in report["updated"]],
                  unchanged=len(report["unchanged"]), skipped=len(skipped), failed=len(failed),
                  chunks=report["chunks"], identifiers=report["identifiers"])
    return report


def _check_subject(subject: str) -> str:
    s = str(subject).strip()
    if not s or len(s) > 128 or any(ord(ch) < 32 for ch in s):
        raise UsageError(f"invalid subject id {subject!r}: 1-128 printable characters")
    return s


def _prepare(conn: Any, path: Path, label: str, subjects: list[str], max_bytes: int, embedder: Any,
             size: int, overlap: int, guard: Any, detector: Any, redactor: Any) -> Prepared | None:
    data, st = _read_limited(path, max_bytes)
    sha = hashlib.sha256(data).hexdigest()
    existing = find_document(conn, str(path))
    if existing is not None and existing[1:] == (sha, label, subjects):
        return None  # unchanged: same bytes, same label and subjects
    loaded = loaders.load(path, data, max_bytes=max_bytes)
    chunks, pseudonyms, identifiers = _text_stage(loaded.segments, path.name, sha, subjects, embedder, size, overlap,
                                                  guard, detector, redactor)
    for c in chunks:
        c.flags |= loaded.flags
    record = DocRecord(source=str(path), name=path.name, sha256=sha, size=len(data), mtime=st.st_mtime,
                       label=label, mime=loaded.mime, subjects=subjects,
                       meta={**loaded.meta, **({"flags": sorted(loaded.flags)} if loaded.flags else {}),
                             **({"redacted": len(pseudonyms)} if redactor.enabled else {})},
                       identifiers=identifiers, pseudonyms=pseudonyms)
    return Prepared(path, record, chunks, "updated" if existing else "added")


def _text_stage(segments: list[Any], name: str, sha: str, subjects: list[str], embedder: Any, size: int,
                overlap: int, guard: Any, detector: Any, redactor: Any) -> tuple[list[Chunk], list[Any], list[Any]]:
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
    identifiers = redactor.identifiers(texts, pseudonyms) if redactor.enabled else detector.chunk_identifiers(texts)
    return chunks, pseudonyms, identifiers


def _embed_and_write(session: Any, handle: Any, embedder: Any, group: list[Prepared], report: dict[str, Any],
                     emit: Progress) -> None:
    texts = [c.text for p in group for c in p.chunks]
    try:
        vectors = embedder.encode(texts)
    except Exception as exc:
        for p in group:
            report["failed"].append({"path": p.record.source, "reason": f"embedding failed: {exc.__class__.__name__}"})
            emit("file", path=p.record.source, status="failed")
        return
    at = 0
    for p in group:
        n = len(p.chunks)
        try:
            doc_id, _ = write_document(handle.conn, handle.name, p.record, p.chunks, vectors[at:at + n],
                                       model=(embedder.name, embedder.sha256), user=session.user)
        except OfflineError as exc:
            report["failed"].append({"path": p.record.source, "reason": str(exc)})
            emit("file", path=p.record.source, status="failed")
        except Exception as exc:  # the transaction rolled back: nothing of this document was kept
            report["failed"].append({"path": p.record.source, "reason": f"write failed: {exc.__class__.__name__}: {exc}"[:200]})
            emit("file", path=p.record.source, status="failed")
        else:
            report[p.status].append({"path": p.record.source, "doc_id": doc_id, "chunks": n})
            report["chunks"] += n
            low = (p.record.meta.get("ocr") or {}).get("low_confidence_pages")
            if low:  # a misread name is one an erasure will not find: say which pages to check
                report.setdefault("ocr_low_confidence", []).append({"path": p.record.source, "pages": low})
            if report.get("identifiers") is not None:
                for kind, count in count_by_kind(p.record.identifiers).items():
                    report["identifiers"][kind] = report["identifiers"].get(kind, 0) + count
            emit("file", path=p.record.source, status=p.status, chunks=n)
        at += n


@dataclass
class TextRecord:
    """A document given as text rather than a file (evaluation corpora, imports)."""

    source: str
    name: str
    text: str
    label: str = ""
    subjects: tuple[str, ...] = ()
    meta: dict[str, Any] | None = None


def ingest_records(session: Any, records: Iterable[TextRecord], collection: str, *,
                   chunk_tokens: int | None = None, overlap: int = DEFAULT_OVERLAP,
                   embed_model: str | None = None, progress: Progress | None = None,
                   allow_erased_reason: str | None = None) -> dict[str, Any]:
    """Like :func:`ingest_paths` for in-memory texts: same chunking, embedding and atomic writes."""
    from ..gdpr.journal import ErasureGuard
    from .loaders import Segment

    handle = open_collection(session, collection, need="write")
    guard = ErasureGuard(session, allow_erased_reason)
    detector = Detector(session)
    redactor = Redactor(session, handle, detector)
    embedder = get_embedder(embed_model)
    vindex.check_model(handle.conn, collection, embedder.name, embedder.sha256)
    size = chunk_tokens or min(DEFAULT_CHUNK_TOKENS, embedder.max_tokens - 2)
    report: dict[str, Any] = {"collection": collection, "added": [], "updated": [], "unchanged": [],
                              "skipped": [], "failed": [], "chunks": 0,
                              "identifiers": {} if detector.enabled else None}
    emit = progress or (lambda *a, **k: None)
    group: list[Prepared] = []
    for rec in records:
        label = rec.label or ""
        if label:
            check_name("label", label)
        if not handle.label_allowed(label):
            report["failed"].append({"path": rec.source, "reason": "label not covered by your grant"})
            continue
        data = rec.text.encode("utf-8")
        sha = hashlib.sha256(data).hexdigest()
        subjects = sorted({_check_subject(s) for s in rec.subjects})
        existing = find_document(handle.conn, rec.source)
        if existing is not None and existing[1:] == (sha, label, subjects):
            report["unchanged"].append({"path": rec.source})
            continue
        try:
            chunks, pseudonyms, identifiers = _text_stage([Segment(rec.text)], rec.name, sha, subjects, embedder,
                                                          size, overlap, guard, detector, redactor)
        except InvalidInput as exc:
            report["failed"].append({"path": rec.source, "reason": str(exc)})
            continue
        record = DocRecord(source=rec.source, name=rec.name, sha256=sha, size=len(data), mtime=None, label=label,
                           mime="text/plain", subjects=subjects,
                           meta={**(rec.meta or {}), **({"redacted": len(pseudonyms)} if redactor.enabled else {})},
                           identifiers=identifiers, pseudonyms=pseudonyms)
        group.append(Prepared(Path(rec.source), record, chunks, "updated" if existing else "added"))
        if sum(len(p.chunks) for p in group) >= EMBED_GROUP:
            _embed_and_write(session, handle, embedder, group, report, emit)
            group.clear()
    if group:
        _embed_and_write(session, handle, embedder, group, report, emit)
    session.audit("ingest", collection=collection, records=True, added=len(report["added"]),
                  updated=len(report["updated"]), unchanged=len(report["unchanged"]),
                  failed=len(report["failed"]), chunks=report["chunks"])
    return report
