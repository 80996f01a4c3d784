"""Builders for small real documents used by the ingest and retrieval tests."""

from __future__ import annotations

from pathlib import Path


def write_pdf(path: Path, pages: list[str]) -> Path:
    """A minimal valid PDF, one text line per page (Helvetica), with a correct xref table."""
    objs: list[bytes] = []
    n_pages = len(pages)
    # 1: catalog, 2: pages, 3: font, then (page, content) pairs
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(n_pages))
    objs.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objs.append(f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>".encode())
    objs.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i, text in enumerate(pages):
        safe = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"BT /F1 12 Tf 72 720 Td ({safe}) Tj ET".encode()
        objs.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >>"
            f" /Contents {5 + 2 * i} 0 R >>".encode()
        )
        objs.append(b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for num, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += f"{num} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(bytes(out))
    return path


def write_docx(path: Path, sections: list[tuple[str, str]]) -> Path:
    """A .docx with a Heading 1 and one paragraph per (heading, body) pair."""
    import docx

    d = docx.Document()
    for heading, body in sections:
        d.add_heading(heading, level=1)
        d.add_paragraph(body)
    d.save(str(path))
    return path


def render_page(lines: list[str], dpi: int = 200, noise: float = 0.0):
    """A typed A4 page rasterised at ``dpi`` (what a flatbed scan of a printed letter looks like)."""
    import matplotlib
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(
        str(Path(matplotlib.__file__).parent / "mpl-data/fonts/ttf/DejaVuSerif.ttf"), int(11 / 72 * dpi)
    )
    img = Image.new("L", (int(8.27 * dpi), int(11.69 * dpi)), 255)
    draw = ImageDraw.Draw(img)
    y = int(0.8 * dpi)
    for line in lines:
        draw.text((int(0.8 * dpi), y), line, font=font, fill=0)
        y += int(16 / 72 * dpi)
    if noise:
        arr = np.asarray(img, dtype=np.float32)
        arr += np.random.default_rng(7).normal(0, noise, arr.shape)
        img = Image.fromarray(np.clip(arr, 0, 255).astype("uint8"))
    return img


def scanned_pdf(images: list) -> bytes:
    """A PDF whose pages are only images (no text layer), at 200 dpi."""
    import io

    buf = io.BytesIO()
    images[0].convert("RGB").save(
        buf, format="PDF", save_all=True, resolution=200, append_images=[i.convert("RGB") for i in images[1:]]
    )
    return buf.getvalue()
