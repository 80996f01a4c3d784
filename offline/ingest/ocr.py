"""OCR for scanned pages: PDF pages without a text layer, and PNG/JPEG/TIFF images.

The engine is Tesseract 5 (Debian packages, run as a subprocess on stdin/stdout: no temp file,
no network), with its English model pinned by sha256 in ``models/manifest.toml`` (``[[ocr]]``) and
checked before the first page is read. PDF pages are rendered with pypdfium2 at 200 dpi.

Each page's text comes back with a confidence (the mean of Tesseract's word confidences, 0-1).
Chunks cut from OCR text carry the flags ``ocr`` and ``ocr-confidence:0.93``; a page under
:data:`LOW_CONFIDENCE` is also flagged ``ocr-low-confidence`` and listed in the document's
``meta.ocr.low_confidence_pages``, which ingest reports, because a misread name is a name an
erasure will not find.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInput, ModelIntegrityError

DPI = 200
LOW_CONFIDENCE = 0.80
PAGE_TIMEOUT_S = 120
MAX_PIXELS = 60_000_000  # a 200 dpi A0 page; anything larger is refused (decompression bombs)
OCR_NAME = "tesseract-eng"
_verified: dict[str, str] = {}


@dataclass
class PageText:
    text: str
    confidence: float


def ocr_entry() -> dict[str, Any]:
    from ..models.packaged import entry

    return entry(OCR_NAME, "ocr")


def verify_engine() -> dict[str, Any]:
    """The Tesseract binary is present and its English model matches the pinned sha256."""
    e = ocr_entry()
    binary = shutil.which("tesseract")
    if binary is None:
        raise InvalidInput(
            "scanned page needs OCR: install the Debian packages tesseract-ocr and "
            "tesseract-ocr-eng (see models/manifest.toml)"
        )
    path = e["traineddata"]
    if _verified.get(path) != e["traineddata_sha256"]:
        try:
            with open(path, "rb") as f:
                got = hashlib.sha256(f.read()).hexdigest()
        except OSError:
            raise InvalidInput(
                f"scanned page needs OCR: {path} is missing (install tesseract-ocr-eng)"
            ) from None
        if got != e["traineddata_sha256"]:
            raise ModelIntegrityError(
                f"OCR model {path} hashes to {got[:16]}…, the manifest pins {e['traineddata_sha256'][:16]}…"
            )
        _verified[path] = got
    return {"name": OCR_NAME, "binary": binary, "traineddata": path, "sha256": e["traineddata_sha256"]}


def ocr_image(image: Any) -> PageText:
    """Text and confidence of one page image (a PIL image)."""
    info = verify_engine()
    if image.width * image.height > MAX_PIXELS:
        raise InvalidInput(f"image of {image.width}x{image.height} pixels is too large to OCR")
    buf = io.BytesIO()
    image.convert("L").save(buf, format="PNG")
    try:
        out = subprocess.run(
            [info["binary"], "stdin", "stdout", "-l", "eng", "--dpi", str(DPI), "--psm", "3", "tsv"],
            input=buf.getvalue(),
            capture_output=True,
            timeout=PAGE_TIMEOUT_S,
            check=False,
            env={"OMP_THREAD_LIMIT": "1", "PATH": "/usr/bin:/bin"},
        )
    except subprocess.TimeoutExpired:
        raise InvalidInput(f"OCR took longer than {PAGE_TIMEOUT_S} s for one page") from None
    if out.returncode != 0:
        raise InvalidInput(
            f"OCR failed: {out.stderr.decode(errors='replace').strip().splitlines()[-1:] or '?'}"
        )
    return _from_tsv(out.stdout.decode("utf-8", errors="replace"))


def _from_tsv(tsv: str) -> PageText:
    """Rebuild lines (block, paragraph, line) from Tesseract's TSV; confidence weighted by length."""
    lines: dict[tuple[int, int, int], list[str]] = {}
    weight = total = 0.0
    for row in tsv.splitlines()[1:]:
        cols = row.split("\t")
        if len(cols) < 12 or cols[0] != "5":
            continue
        word, conf = cols[11].strip(), float(cols[10])
        if not word or conf < 0:
            continue
        lines.setdefault((int(cols[2]), int(cols[3]), int(cols[4])), []).append(word)
        weight += len(word)
        total += len(word) * conf / 100.0
    paras: list[str] = []
    last = None
    for key in sorted(lines):
        if last is not None and key[:2] != last[:2]:
            paras.append("")
        paras.append(" ".join(lines[key]))
        last = key
    return PageText("\n".join(paras).strip(), round(total / weight, 3) if weight else 0.0)


def images_of_file(data: bytes) -> list[Any]:
    """Every frame of a PNG/JPEG/TIFF (a multi-page TIFF is one image per page)."""
    from PIL import Image, ImageSequence, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        img = Image.open(io.BytesIO(data))
        frames = [f.copy() for f in ImageSequence.Iterator(img)]
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise InvalidInput(f"unreadable image ({exc.__class__.__name__})") from None
    return frames


def render_pdf_page(data: bytes, index: int) -> Any:
    """Page ``index`` (0-based) of a PDF as a PIL image at :data:`DPI`."""
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(data)
        try:
            page = pdf[index]
            w, h = page.get_size()
            if (w * DPI / 72) * (h * DPI / 72) > MAX_PIXELS:
                raise InvalidInput(f"page {index + 1} is too large to OCR")
            return page.render(scale=DPI / 72, grayscale=True).to_pil()
        finally:
            pdf.close()
    except InvalidInput:
        raise
    except Exception as exc:  # pdfium raises its own error types on damaged files
        raise InvalidInput(f"cannot render PDF page {index + 1} for OCR ({exc.__class__.__name__})") from None


def page_flags(confidence: float) -> set[str]:
    flags = {"ocr", f"ocr-confidence:{confidence:.2f}"}
    if confidence < LOW_CONFIDENCE:
        flags.add("ocr-low-confidence")
    return flags
