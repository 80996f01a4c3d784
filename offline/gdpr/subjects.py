"""Subject ids from a column (CSV) or field (JSON, JSONL): one document per row or record.

``offline ingest --subject ID`` tags a whole file. Tables of people need finer grain: with a subject
field each CSV row, each element of a top-level JSON array (or the object itself) and each JSONL line
becomes its own document (source ``<path>#row-<n>``) tagged with that row's subject, so erasing one
person removes their rows and nothing of their neighbours'. Rows are ingested through the ingest
pipeline's ``ingest_records`` (same chunking, embedding and atomic writes).

The field is a column name for CSV and a dotted path for JSON (``patient.id``); a list value tags
the row with every id in it. A row without the field is refused (fail closed: an untagged row
would survive its subject's erasure) unless ``allow_missing`` is set.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ..errors import InvalidInput, UsageError
from .common import check_subject

KINDS = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}
MAX_BYTES = 50 * 1024 * 1024


def _field(obj: Any, path: str) -> Any:
    cur = obj
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _ids(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    values = value if isinstance(value, list) else [value]
    return [check_subject(str(v)) for v in values if v is not None and str(v).strip()]


def _row_date(value: str | None, date_field: str | None) -> dict[str, Any]:
    """The row's own date (its retention starts there); an unreadable one is refused, not guessed."""
    if not date_field or value in (None, ""):
        return {}
    from ..ingest.loaders import document_date
    from .common import parse_date

    day = parse_date(str(value))
    if day is None:
        raise InvalidInput(f"date field {date_field!r}: {str(value)[:40]!r} is not a date (use YYYY-MM-DD)")
    return document_date(day, f"field {date_field}")


def _json_text(obj: Any) -> str:
    from ..ingest.loaders import json_text as flatten

    return flatten(obj)


def split_rows(
    path: Path, data: bytes, field: str, date_field: str | None = None
) -> list[tuple[str, str, list[str], str | None]]:
    """``[(row name, row text, subject ids, row date)]`` for a CSV/JSON/JSONL file and a subject field."""
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        raise UsageError(f"{path.name}: a subject field works with .csv, .json and .jsonl files only")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput(f"{path.name}: not UTF-8 text") from None
    rows: list[tuple[str, str, list[str], str | None]] = []
    if kind == "csv":
        try:
            try:
                dialect: Any = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|")
            except csv.Error:
                dialect = csv.excel
            reader = csv.DictReader(io.StringIO(text), dialect=dialect)
            for want in (field, date_field):
                if want and (reader.fieldnames is None or want not in reader.fieldnames):
                    raise UsageError(
                        f"{path.name}: no column {want!r} (columns: {', '.join(reader.fieldnames or [])})"
                    )
            for n, row in enumerate(reader, start=1):
                body = "; ".join(
                    f"{k}: {v}" for k, v in row.items() if k is not None and v and str(v).strip()
                )
                rows.append(
                    (f"row-{n}", body, _ids(row.get(field)), row.get(date_field) if date_field else None)
                )
        except csv.Error as exc:
            raise InvalidInput(f"{path.name}: invalid CSV: {exc}") from None
        return rows
    try:
        if kind == "json":
            obj = json.loads(text)
            items = obj if isinstance(obj, list) else [obj]
            parsed = list(enumerate(items, start=1))
        else:
            parsed = [
                (n, json.loads(line)) for n, line in enumerate(text.splitlines(), start=1) if line.strip()
            ]
    except ValueError as exc:
        raise InvalidInput(f"{path.name}: invalid JSON: {exc}") from None
    for n, item in parsed:
        when = _field(item, date_field) if date_field else None
        rows.append(
            (f"row-{n}", _json_text(item), _ids(_field(item, field)), None if when is None else str(when))
        )
    return rows


def ingest_with_subject_field(
    session: Any,
    paths: list[str | Path],
    collection: str,
    field: str,
    *,
    label: str | None = None,
    subjects: tuple[str, ...] = (),
    allow_missing: bool = False,
    max_bytes: int = MAX_BYTES,
    allow_erased_reason: str | None = None,
    date_field: str | None = None,
    relabel: bool = False,
) -> dict[str, Any]:
    """Ingest CSV/JSON/JSONL files one row per document, each tagged with its row's subject ids.

    ``subjects`` are added to every row. Every file is parsed and checked before anything is
    written, so a bad file or an untagged row leaves the collection untouched. ``label`` and
    ``relabel`` work as in :func:`offline.ingest.ingest_paths` (None keeps stored rows' labels).
    """
    from ..ingest.pipeline import TextRecord, ingest_records

    field = (field or "").strip()
    if not field:
        raise UsageError("the subject field is empty")
    extra = tuple(check_subject(s) for s in subjects)
    records = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise UsageError(f"{path}: not a file (a subject field needs CSV/JSON/JSONL files)")
        if path.stat().st_size > max_bytes:
            raise InvalidInput(f"{path.name}: over the size limit ({max_bytes} bytes)")
        rows = split_rows(path, path.read_bytes(), field, date_field)
        for name, text, ids, when in rows:
            if not ids and not allow_missing:
                raise InvalidInput(f"{path.name} {name}: no value in subject field {field!r}")
            if not text.strip():
                continue
            records.append(
                TextRecord(
                    source=f"{path.resolve()}#{name}",
                    name=f"{path.name}#{name}",
                    text=text,
                    label=label,
                    subjects=tuple(sorted(set(ids) | set(extra))),
                    meta={
                        "subject_field": field,
                        "file": path.name,
                        "row": name,
                        **_row_date(when, date_field),
                    },
                )
            )
    report = ingest_records(
        session, records, collection, relabel=relabel, allow_erased_reason=allow_erased_reason
    )
    report["subject_field"] = field
    report["rows"] = len(records)
    return report
