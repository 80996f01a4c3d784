"""``offline ingest``, ``offline docs list|show|rm`` and ``offline search``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import click

from ..textsafe import one_line
from .app import App, table
from .params import TEXT, FsPath, K, Number


@contextlib.contextmanager
def _progress_bar(stream: Any) -> Iterator[Any]:
    """A rich bar (files and chunks) on stderr when it is a terminal; else a no-op callback."""
    if not stream.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[chunks]} chunks"),
        TimeElapsedColumn(),
        console=Console(file=stream),
        transient=True,
    ) as bar:
        task = bar.add_task("files", total=None, chunks=0)
        state = {"chunks": 0}

        def on_event(event: str, **info: Any) -> None:
            if event == "start":
                bar.update(task, total=info["files"])
            elif event == "file":
                state["chunks"] += info.get("chunks", 0)
                bar.update(task, advance=1, chunks=state["chunks"])

        yield on_event


def _ingest_text(r: dict[str, Any]) -> str:
    moved = r.get("relabelled", [])
    lines = [
        f"Collection {r['collection']}: {len(r['added'])} added, {len(r['updated'])} updated, "
        + (f"{len(moved)} relabelled, " if moved else "")
        + f"{len(r['unchanged'])} unchanged, {len(r['skipped'])} skipped, {len(r['failed'])} failed; "
        f"{r['chunks']} chunks in {r.get('seconds', 0):.1f} s"
    ]
    # Each move changes who may read the document: name every one, old label and new.
    lines += [
        one_line(
            f"  relabelled {m['path']} (id {m['doc_id']}): {m['from'] or '(none)'} -> {m['to'] or '(none)'}"
            + (" (content changed: replaced)" if m["content"] == "updated" else "")
        )
        for m in moved
    ]
    if r.get("tainted_adapters"):
        lines.append(
            "Adapters trained on a moved document are now tainted (retrain, or an admin runs "
            "`offline adapters override-taint`): " + ", ".join(r["tainted_adapters"])
        )
    found = r.get("identifiers")
    if found is not None:
        lines.append(
            f"Identifiers found: {sum(found.values())}"
            + (" (" + ", ".join(f"{k} {n}" for k, n in found.items()) + ")" if found else "")
            + "; stored as keyed hashes (docs show lists them)"
        )
    lines += [
        one_line(
            f"  low OCR confidence {o['path']}: page(s) {', '.join(map(str, o['pages']))}; check the scan"
        )
        for o in r.get("ocr_low_confidence", [])
    ]
    lines += [one_line(f"  skipped {s['path']}: {s['reason']}") for s in r["skipped"]]
    lines += [one_line(f"  failed  {f['path']}: {f['reason']}") for f in r["failed"]]
    return "\n".join(lines)


@click.command()
@click.argument("paths", nargs=-1, required=True, type=FsPath())
@click.option("-c", "--collection", type=TEXT, required=True, help="Collection to add the documents to.")
@click.option(
    "--label",
    type=TEXT,
    help="Label every document (e.g. phi, legal-hold); grants may be limited to labels."
    " Without it, documents already stored keep their labels.",
)
@click.option(
    "--relabel",
    is_flag=True,
    help="With --label: move documents already stored under another label"
    " (each move is reported and audited); without it such a run is refused.",
)
@click.option(
    "--subject", "subjects", type=TEXT, multiple=True, help="Data-subject id (repeatable), for GDPR requests."
)
@click.option(
    "--max-mb",
    type=Number(0, 100_000, min_open=True),
    default=50,
    show_default=True,
    help="Per-file size limit in MB.",
)
@click.option(
    "--timeout",
    type=Number(0, 86_400, min_open=True),
    default=120,
    show_default=True,
    help="Per-file parsing time limit in seconds.",
)
@click.option(
    "--subject-field",
    help="CSV column or JSON field (dotted path) holding each row's subject id:"
    " every row becomes its own document tagged with it (see offline.gdpr.subjects).",
)
@click.option(
    "--date-field",
    help="With --subject-field: the column or field holding each row's own date (retention counts from it).",
)
@click.option(
    "--allow-erased",
    is_flag=True,
    help="Ingest even what brings back erased data (needs --reason; audited, high severity).",
)
@click.option("--reason", type=TEXT, help="Why erased data may come back (with --allow-erased).")
@click.pass_obj
def ingest(
    app: App,
    paths: tuple[str, ...],
    collection: str,
    label: str | None,
    relabel: bool,
    subjects: tuple[str, ...],
    max_mb: float,
    timeout: float,
    subject_field: str | None,
    date_field: str | None,
    allow_erased: bool,
    reason: str | None,
) -> None:
    """Add files and folders (.txt .md .html .pdf .docx .csv .json .jsonl; scans: .pdf .png .jpg .tiff)
    to COLLECTION."""
    from ..errors import OfflineError, UsageError
    from ..gdpr.journal import check_allow
    from ..ingest import ingest_paths

    allow = check_allow(allow_erased, reason)
    if date_field is not None and subject_field is None:
        raise UsageError("--date-field goes with --subject-field")
    if relabel and label is None:
        raise UsageError("--relabel goes with --label (the label to move documents to)")
    session = app.session()
    if subject_field is not None:
        from ..gdpr.subjects import ingest_with_subject_field

        report = ingest_with_subject_field(
            session,
            list(paths),
            collection,
            subject_field,
            label=label,
            subjects=subjects,
            max_bytes=int(max_mb * 1024 * 1024),
            allow_erased_reason=allow,
            date_field=date_field,
            relabel=relabel,
        )
        app.emit(report, _ingest_text)
        if report["failed"]:
            raise OfflineError(f"{len(report['failed'])} row(s) failed; the others were ingested")
        return
    with _progress_bar(app.err) as progress:
        report = ingest_paths(
            session,
            list(paths),
            collection,
            label=label,
            subjects=subjects,
            relabel=relabel,
            max_bytes=int(max_mb * 1024 * 1024),
            timeout_s=timeout,
            progress=progress,
            allow_erased_reason=allow,
        )
    app.emit(report, _ingest_text)
    if report["failed"]:
        raise OfflineError(f"{len(report['failed'])} file(s) failed; the others were ingested")


@click.group()
def docs() -> None:
    """List, show and remove documents."""


@docs.command("list")
@click.option(
    "-c", "--collection", "collections", multiple=True, help="Collection (repeatable; default: all readable)."
)
@click.option("--label", help="Only documents with this label.")
@click.option("--subject", help="Only documents of this data subject.")
@click.pass_obj
def docs_list(app: App, collections: tuple[str, ...], label: str | None, subject: str | None) -> None:
    """Documents you may see."""
    from ..ingest.docs import list_documents

    rows = list_documents(app.session(), list(collections) or None, label=label, subject=subject)
    app.emit(rows, lambda r: table(r, ["collection", "id", "name", "label", "chunks", "size", "ingested_at"]))


def _show_text(d: dict[str, Any]) -> str:
    # Every field came from a document or a user: one clean line each.
    f = {
        k: one_line(d[k])
        for k in (
            "name",
            "collection",
            "id",
            "source",
            "sha256",
            "size",
            "ingested_at",
            "ingested_by",
            "chunks",
        )
    }
    head = [
        f"{f['name']}  (collection {f['collection']}, id {f['id']})",
        f"  source   {f['source']}",
        f"  sha256   {f['sha256']}",
        f"  size     {f['size']} bytes",
        f"  label    {one_line(d['label'] or '-')}",
        f"  subjects {one_line(', '.join(d['subjects']) or '-')}",
        f"  ingested {f['ingested_at']} by {f['ingested_by']}",
        f"  chunks   {f['chunks']}",
    ]
    if d.get("identifiers"):
        head.append(f"  identifiers {len(d['identifiers'])}:")
        head += [
            one_line(f"    {i['chunk_id']:<14} {i['kind']:<14} {i['value']}  ({i['score']:.2f})")
            for i in d["identifiers"]
        ]
    if d["meta"].get("chunks_erased"):
        head.append(
            f"  erased   {d['meta']['chunks_erased']} chunk(s) removed by an erasure (document incomplete)"
        )
    for c in d["chunk_list"]:
        where = f"p. {c['page']}" if c["page"] is not None else (f"§ {c['section']}" if c["section"] else "")
        flags = f" [{','.join(c['flags'])}]" if c["flags"] else ""
        head.append(
            one_line(f"  {c['chunk_id']:<14} {where:<24} {c['tokens']:>4} tok{flags}  {c['preview'][:60]}")
        )
    return "\n".join(head)


@docs.command("show")
@click.argument("doc")
@click.option("-c", "--collection", required=True)
@click.pass_obj
def docs_show(app: App, doc: str, collection: str) -> None:
    """Metadata and chunks of DOC (id, source path or file name)."""
    from ..ingest.docs import show_document

    app.emit(show_document(app.session(), collection, doc), _show_text)


@docs.command("rm")
@click.argument("doc_refs", nargs=-1, required=True)
@click.option("-c", "--collection", required=True)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def docs_rm(app: App, doc_refs: tuple[str, ...], collection: str, yes: bool) -> None:
    """Remove documents (with their chunks, vectors and full-text rows)."""
    from ..ingest.docs import remove_document

    app.confirm(f"Remove {len(doc_refs)} document(s) from {collection}? This cannot be undone", yes)
    removed = [remove_document(app.session(), collection, ref) for ref in doc_refs]
    app.emit(
        removed,
        lambda r: "\n".join(f"Removed {d['name']} (id {d['id']}, {d['chunks_removed']} chunks)" for d in r),
    )


def _search_text(r: dict[str, Any]) -> str:
    if not r["hits"]:
        return "No matching chunks."
    out = []
    for i, h in enumerate(r["hits"], start=1):
        ranks = ", ".join(
            x
            for x in (
                f"dense #{h['dense_rank']}" if h["dense_rank"] else "",
                f"bm25 #{h['bm25_rank']}" if h["bm25_rank"] else "",
            )
            if x
        )
        flags = f" [{','.join(h['flags'])}]" if h["flags"] else ""
        # A reader sees the cosine similarity (0-1) when the vector leg scored the chunk; the fused
        # RRF score, which means nothing on its own, stays in --json as `score`.
        rel = f"sim {h['dense_score']:.2f}" if h.get("dense_score") is not None else "words "
        out.append(one_line(f"{i:>2}. {rel}  {h['citation']}  ({h['chunk_id']}; {ranks}){flags}"))
        out.append("    " + one_line(" ".join(h["text"].split()))[:240])
    return "\n".join(out)


@click.command()
@click.argument("query", type=TEXT)
@click.option(
    "-c",
    "--collection",
    "collections",
    type=TEXT,
    multiple=True,
    help="Collection (repeatable; default: all readable).",
)
@click.option("-k", "k", type=K, default=5, show_default=True)
@click.option("--label", "labels", type=TEXT, multiple=True, help="Only chunks with this label (repeatable).")
@click.option(
    "--subject",
    "subjects",
    type=TEXT,
    multiple=True,
    help="Only documents of this data subject (repeatable).",
)
@click.option("--mode", type=click.Choice(["hybrid", "dense", "bm25"]), default="hybrid", show_default=True)
@click.option("--rrf-k", type=Number(0, 1e6), default=60.0, show_default=True, help="RRF constant.")
@click.option(
    "--w-dense", type=Number(0, 1e6), default=1.0, show_default=True, help="Weight of the vector leg."
)
@click.option("--w-bm25", type=Number(0, 1e6), default=1.0, show_default=True, help="Weight of the BM25 leg.")
@click.option(
    "--break-glass",
    is_flag=True,
    help="Emergency read of -c COLLECTION you hold no grant on (needs --reason; audited, high severity).",
)
@click.option("--reason", type=TEXT, help="Why the break-glass read is needed (recorded in the audit log).")
@click.pass_obj
def search(
    app: App,
    query: str,
    collections: tuple[str, ...],
    k: int,
    labels: tuple[str, ...],
    subjects: tuple[str, ...],
    mode: str,
    rrf_k: float,
    w_dense: float,
    w_bm25: float,
    break_glass: bool,
    reason: str | None,
) -> None:
    """Rank chunks for QUERY (hybrid: vectors + BM25, reciprocal rank fusion)."""
    from ..gdpr.breakglass import break_glass_scope
    from ..retrieval import FusionWeights
    from ..retrieval import search as run_search

    with break_glass_scope(app.session(), break_glass, list(collections), reason, app.break_glass_code):
        result = run_search(
            app.session(),
            query,
            collections=list(collections) or None,
            k=k,
            labels=list(labels) or None,
            subjects=list(subjects) or None,
            mode=mode,
            weights=FusionWeights(rrf_k, w_dense, w_bm25),
        )
    app.emit(result.to_dict(), _search_text)


commands = [ingest, docs, search]
