"""File loaders: bytes in, text segments out, each segment carrying its page or section.

A loader never half-succeeds: it returns every segment of the file or raises
:class:`InvalidInput` with a one-line reason (corrupt PDF, not a zip, invalid JSON, binary data).
Segments keep the units a citation names: a PDF page, a Markdown/HTML/DOCX heading, a JSONL line.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from ..errors import InvalidInput

# Extension -> (loader kind, mime type).
SUPPORTED: dict[str, tuple[str, str]] = {
    ".txt": ("text", "text/plain"),
    ".text": ("text", "text/plain"),
    ".md": ("markdown", "text/markdown"),
    ".markdown": ("markdown", "text/markdown"),
    ".html": ("html", "text/html"),
    ".htm": ("html", "text/html"),
    ".pdf": ("pdf", "application/pdf"),
    ".docx": ("docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    ".csv": ("csv", "text/csv"),
    ".json": ("json", "application/json"),
    ".jsonl": ("jsonl", "application/x-ndjson"),
    ".ndjson": ("jsonl", "application/x-ndjson"),
    ".png": ("image", "image/png"),
    ".jpg": ("image", "image/jpeg"),
    ".jpeg": ("image", "image/jpeg"),
    ".tif": ("image", "image/tiff"),
    ".tiff": ("image", "image/tiff"),
}
# A .docx is a zip: refuse archives that inflate beyond this multiple of the size limit (zip bombs).
MAX_INFLATION = 20


@dataclass
class Segment:
    text: str
    page: int | None = None
    section: str | None = None
    flags: set[str] = field(default_factory=set)  # carried to every chunk cut from it (e.g. ocr)


@dataclass
class Loaded:
    segments: list[Segment]
    mime: str
    flags: set[str] = field(default_factory=set)
    meta: dict[str, Any] = field(default_factory=dict)


def kind_of(path: Path) -> str | None:
    """The loader kind for ``path`` by extension, or None when unsupported."""
    entry = SUPPORTED.get(path.suffix.lower())
    return entry[0] if entry else None


def load(path: Path, data: bytes, *, max_bytes: int) -> Loaded:
    """Parse ``data`` (the bytes of ``path``) into segments. Raises InvalidInput on bad content."""
    kind, mime = SUPPORTED[path.suffix.lower()]
    flags: set[str] = set()
    if kind == "pdf":
        segments, meta = _pdf(data)
    elif kind == "image":
        from .ocr import images_of_file

        segments, meta = _ocr_pages([(i, img) for i, img in enumerate(images_of_file(data), start=1)])
    elif kind == "docx":
        # Bound by the archive's own size (1 MiB floor): a small file that inflates 20x is a bomb
        # long before it reaches 20x the per-file limit.
        segments, meta = _docx(data, min(max_bytes, max(len(data), 1 << 20)) * MAX_INFLATION)
    else:
        text = decode_text(data, flags)
        meta = {}
        segments = {
            "text": lambda t: [Segment(t)],
            "markdown": _markdown,
            "html": _html,
            "csv": _csv,
            "json": _json,
            "jsonl": _jsonl,
        }[kind](text)
    segments = [s for s in segments if s.text.strip()]
    return Loaded(segments, mime, flags, meta)


def decode_text(data: bytes, flags: set[str]) -> str:
    """UTF-8 (BOM-aware, UTF-16 by BOM); invalid bytes become U+FFFD and flag the document.

    Data that looks binary (NUL bytes or mostly control characters) is refused rather than indexed
    as noise.
    """
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise InvalidInput("invalid UTF-16 text") from None
    head = data[:8192]
    if b"\x00" in head:
        raise InvalidInput("binary data, not text")
    if head:
        control = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13))
        if control / len(head) > 0.1:
            raise InvalidInput("binary data, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        flags.add("invalid-utf8")
        return data.decode("utf-8", errors="replace")


# -- markdown -----------------------------------------------------------------------------------

_ATX = re.compile(r"^\s{0,3}(#{1,6})\s+(.+?)\s*#*\s*$")


def _markdown(text: str) -> list[Segment]:
    segments: list[Segment] = []
    section: str | None = None
    buf: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        m = None if fenced else _ATX.match(line)
        if m:
            if _has_body(buf):
                segments.append(Segment("\n".join(buf), section=section))
                buf = []
            # A heading directly followed by a sub-heading joins it rather than making a chunk alone.
            section = m.group(2).strip()[:200]
            buf.append(line)  # the heading stays in the text: it carries meaning for both legs
        else:
            buf.append(line)
    if buf:
        segments.append(Segment("\n".join(buf), section=section))
    return segments


def _has_body(buf: list[str]) -> bool:
    return any(line.strip() and not _ATX.match(line) for line in buf)


# -- html ---------------------------------------------------------------------------------------


class _HTMLText(HTMLParser):
    _SKIP = {"script", "style", "noscript", "template", "head", "svg"}
    _BLOCK = {
        "p",
        "div",
        "br",
        "li",
        "tr",
        "section",
        "article",
        "table",
        "ul",
        "ol",
        "pre",
        "blockquote",
        "dd",
        "dt",
        "title",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.segments: list[Segment] = []
        self.section: str | None = None
        self.buf: list[str] = []
        self.skip = 0
        self.heading: list[str] | None = None
        self.body = False

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in self._SKIP:
            self.skip += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self._flush()
            self.heading = []
        elif tag in self._BLOCK:
            self.buf.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self.skip = max(0, self.skip - 1)
        elif re.fullmatch(r"h[1-6]", tag) and self.heading is not None:
            title = " ".join("".join(self.heading).split())
            self.section = title[:200] or self.section
            self.buf.append(title + "\n")
            self.heading = None
        elif tag in self._BLOCK:
            self.buf.append("\n")

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if self.heading is not None:
            self.heading.append(data)
        else:
            self.buf.append(data)
            self.body = self.body or bool(data.strip())

    def _flush(self) -> None:
        text = re.sub(r"\n\s*\n+", "\n\n", "".join(self.buf)).strip()
        if text and self.body:
            self.segments.append(Segment(text, section=self.section))
            self.buf = []
        self.body = False  # a heading with no text yet stays in buf and joins the next section

    def result(self) -> list[Segment]:
        self.body = self.body or bool("".join(self.buf).strip())
        self._flush()
        return self.segments


def _html(text: str) -> list[Segment]:
    parser = _HTMLText()
    try:
        parser.feed(text)
        parser.close()
    except Exception as exc:  # html.parser is lenient; anything raised here is truly broken input
        raise InvalidInput(f"unparsable HTML ({exc.__class__.__name__})") from None
    return parser.result()


# -- pdf ----------------------------------------------------------------------------------------


def _pdf(data: bytes) -> tuple[list[Segment], dict[str, Any]]:
    import logging

    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # pypdf warns on stderr about minor damage
    if not data.lstrip()[:5].startswith(b"%PDF-"):
        raise InvalidInput("corrupt PDF: no PDF header")
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            raise InvalidInput("encrypted PDF: decrypt it before ingesting")
        segments = [
            Segment(page.extract_text() or "", page=i) for i, page in enumerate(reader.pages, start=1)
        ]
        scanned = {
            i
            for i, page in enumerate(reader.pages, start=1)
            if not segments[i - 1].text.strip() and _has_image(page)
        }
    except InvalidInput:
        raise
    except Exception as exc:  # pypdf raises many types on damaged files
        raise InvalidInput(f"corrupt PDF ({exc.__class__.__name__})") from None
    meta: dict[str, Any] = {"pages": len(segments)}
    try:
        meta.update(document_date(reader.metadata.creation_date if reader.metadata else None, "pdf metadata"))
    except Exception:  # an unparsable /CreationDate costs the date, not the document
        pass
    # Only pages that hold an image are scans worth OCR: a page of text operators that pypdf could
    # not read (no font, a decompression bomb) is not rendered, so it costs nothing and is refused.
    blank = sorted(scanned)
    if blank:  # a scan, or scanned pages in a typed document: read them with OCR
        from .ocr import render_pdf_page

        ocr_segments, ocr_meta = _ocr_pages([(p, render_pdf_page(data, p - 1)) for p in blank])
        by_page = {s.page: s for s in ocr_segments}
        segments = [by_page.get(s.page, s) for s in segments]
        meta.update(ocr_meta)
    if not any(s.text.strip() for s in segments):
        raise InvalidInput("PDF has no text, not even by OCR")
    return segments, meta


def _has_image(page: Any) -> bool:
    """Whether a PDF page draws an image XObject (what a scanner produces)."""
    try:
        xobjects = page["/Resources"].get_object().get("/XObject")
        if xobjects is None:
            return False
        return any(x.get_object().get("/Subtype") == "/Image" for x in xobjects.get_object().values())
    except (KeyError, AttributeError, TypeError):
        return False


def _ocr_pages(pages: list[tuple[int, Any]]) -> tuple[list[Segment], dict[str, Any]]:
    """OCR each (page number, image): segments flagged ``ocr``, and the confidences for the meta."""
    from .ocr import LOW_CONFIDENCE, ocr_image, page_flags

    segments, confidence = [], {}
    for number, image in pages:
        result = ocr_image(image)
        confidence[str(number)] = result.confidence
        segments.append(Segment(result.text, page=number, flags=page_flags(result.confidence)))
    low = [int(p) for p, c in confidence.items() if c < LOW_CONFIDENCE]
    return segments, {
        "ocr": {
            "engine": "tesseract",
            "pages": [int(p) for p in confidence],
            "confidence": confidence,
            "low_confidence_pages": low,
        }
    }


def document_date(value: Any, source: str) -> dict[str, Any]:
    """``{"document_date": ISO date, "document_date_source": source}`` for a plausible date, else {}.

    Retention counts from this date (offline.gdpr.retention). Dates in the future or before 1900
    are ignored rather than trusted: an erasure must never come early because of a bad header.
    """
    import datetime as _dt

    if isinstance(value, str):
        from ..gdpr.common import parse_date

        value = parse_date(value)
    if isinstance(value, _dt.datetime):
        value = value.date()
    if not isinstance(value, _dt.date) or not _dt.date(1900, 1, 1) <= value <= _dt.date.today():
        return {}
    return {"document_date": value.isoformat(), "document_date_source": source}


# -- docx ---------------------------------------------------------------------------------------


def _docx(data: bytes, max_inflated: int) -> tuple[list[Segment], dict[str, Any]]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            if sum(i.file_size for i in zf.infolist()) > max_inflated:
                raise InvalidInput("docx inflates beyond the size limit (zip bomb?)")
    except zipfile.BadZipFile:
        raise InvalidInput("corrupt docx: not a zip archive") from None
    import docx
    from docx.table import Table

    try:
        document = docx.Document(io.BytesIO(data))
        segments: list[Segment] = []
        section: str | None = None
        buf: list[str] = []
        heading_lines = 0  # leading lines of buf that are headings only
        for block in document.iter_inner_content():
            if isinstance(block, Table):
                rows = [" | ".join(c.text.strip() for c in row.cells) for row in block.rows]
                buf.extend(rows)
                continue
            style = (block.style.name if block.style is not None else "") or ""
            if (style.startswith("Heading") or style == "Title") and block.text.strip():
                if any(b.strip() for b in buf[heading_lines:]):
                    segments.append(Segment("\n".join(buf), section=section))
                    buf, heading_lines = [], 0
                section = block.text.strip()[:200]
                buf.append(block.text)
                heading_lines = len(buf)
            else:
                buf.append(block.text)
        if buf:
            segments.append(Segment("\n".join(buf), section=section))
    except InvalidInput:
        raise
    except Exception as exc:
        raise InvalidInput(f"corrupt docx ({exc.__class__.__name__})") from None
    try:
        created = document.core_properties.created
    except Exception:  # a damaged core.xml costs the date, not the document
        created = None
    return segments, document_date(created, "docx metadata")


# -- csv / json ---------------------------------------------------------------------------------


def _csv(text: str) -> list[Segment]:
    try:
        try:
            dialect: Any = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|")
        except csv.Error:
            dialect = csv.excel
        rows = list(csv.reader(io.StringIO(text), dialect))
    except csv.Error as exc:
        raise InvalidInput(f"invalid CSV: {exc}") from None
    if not rows:
        return []
    header, body = rows[0], rows[1:]
    if not body:
        return [Segment(", ".join(header))]
    # "column: value" keeps each cell meaningful once rows are split across chunks.
    lines = ["; ".join(f"{h}: {v}" for h, v in zip(header, row) if v.strip()) for row in body]
    return [Segment("\n".join(lines))]


def _flatten(obj: Any, prefix: str, out: list[str]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _flatten(v, f"{prefix}[{i}]", out)
    elif obj is not None:
        out.append(f"{prefix}: {obj}" if prefix else str(obj))


def json_text(obj: Any) -> str:
    """A JSON value as indexable text: one ``path: value`` line per scalar."""
    out: list[str] = []
    _flatten(obj, "", out)
    return "\n".join(out)


MAX_JSON_DEPTH = 200


def _depth_ok(obj: Any) -> bool:
    stack = [(obj, 1)]
    while stack:
        cur, d = stack.pop()
        if d > MAX_JSON_DEPTH:
            return False
        if isinstance(cur, dict):
            stack.extend((v, d + 1) for v in cur.values())
        elif isinstance(cur, list):
            stack.extend((v, d + 1) for v in cur)
    return True


def _parse_json(text: str, where: str = "") -> Any:
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"invalid JSON{where}: {exc}") from None
    except RecursionError:
        raise InvalidInput(f"JSON nested too deeply{where}") from None
    if not _depth_ok(obj):  # the flattener recurses: refuse before it could overflow the stack
        raise InvalidInput(f"JSON nested too deeply{where} (more than {MAX_JSON_DEPTH} levels)")
    return obj


def _json(text: str) -> list[Segment]:
    return [Segment(json_text(_parse_json(text)))]


def _jsonl(text: str) -> list[Segment]:
    segments = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        obj = _parse_json(line, f" on line {n}")
        segments.append(Segment(json_text(obj), section=f"line {n}"))
    return segments
