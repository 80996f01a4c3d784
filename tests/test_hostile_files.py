"""Issue 12, hostile files: fuzzed and hand-made malformed inputs are refused or skipped, one line each.

* A hypothesis fuzzer mutates valid seeds of every supported format (flipped bytes, cuts, spliced
  junk) and feeds pure noise: the loader returns text or raises ``InvalidInput`` with a one-line
  reason, within the per-file time limit; nothing else ever escapes.
* Hand-made attacks (zip bomb, PDF flate bomb and page-tree loop, deeply nested JSON, huge lines,
  invalid UTF-8, binaries with text extensions, symlink loops, links leaving the folder, a FIFO)
  go through the real ``offline ingest``: each file is skipped or failed with a one-line reason,
  the good file is ingested, and the vault is consistent afterwards.
"""

from __future__ import annotations

import io
import json
import os
import random
import resource
import time
import zipfile
import zlib
from pathlib import Path

import pytest
from _docfactory import write_docx, write_pdf
from hostile_helpers import check_vault_healthy, record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offline.errors import InvalidInput
from offline.ingest import loaders
from offline.ingest.discovery import discover
from offline.ingest.pipeline import time_limit

# -- seeds and builders ---------------------------------------------------------------------------


def _seeds(tmp: Path) -> dict[str, bytes]:
    tmp.mkdir(parents=True, exist_ok=True)
    pdf = write_pdf(tmp / "s.pdf", ["First page about retention.", "Second page about audits."]).read_bytes()
    docx = write_docx(
        tmp / "s.docx", [("Scope", "Applies to records."), ("Duties", "Review yearly.")]
    ).read_bytes()
    return {
        ".pdf": pdf,
        ".docx": docx,
        ".json": json.dumps({"a": [1, {"b": "text"}], "c": "more text"}).encode(),
        ".jsonl": b'{"q": "one"}\n{"q": "two", "n": [1, 2]}\n',
        ".csv": b"name,role\nann,admin\nbob,member\n",
        ".html": b"<html><head><title>T</title></head><body><h1>H</h1><p>para <b>bold</b></p></body></html>",
        ".md": b"# Title\n\nSome text.\n\n## Section\n\nMore.\n",
        ".txt": "plain text \u00e9\u00e8 with accents\n".encode(),
    }


def _mutate(seed: bytes, flips: list[tuple[int, int]], cut: int | None, junk: bytes, at: int) -> bytes:
    data = bytearray(seed)
    for pos, val in flips:
        data[pos % len(data)] = val
    if junk:
        p = at % (len(data) + 1)
        data[p:p] = junk
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    return bytes(data)


def _load_or_refuse(ext: str, data: bytes) -> str:
    """'ok' or 'refused'; anything but InvalidInput (or a multi-line reason) fails the test."""
    try:
        with time_limit(10):
            loaded = loaders.load(Path(f"f{ext}"), data, max_bytes=1 << 20)
    except InvalidInput as exc:
        msg = str(exc)
        assert msg and "\n" not in msg and len(msg) < 400, repr(msg)
        return "refused"
    assert all(isinstance(s.text, str) for s in loaded.segments)
    return "ok"


def _fuzz(tmp_path: Path, examples: int) -> dict[str, int]:
    seeds = _seeds(tmp_path / "seeds")
    outcomes = {"ok": 0, "refused": 0}

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        ext=st.sampled_from(sorted(seeds)),
        flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=6),
        cut=st.one_of(st.none(), st.integers(0, 1 << 20)),
        junk=st.binary(max_size=64),
        at=st.integers(0, 1 << 20),
        noise=st.booleans(),
    )
    def check(ext, flips, cut, junk, at, noise):
        data = junk * 8 if noise else _mutate(seeds[ext], flips, cut, junk, at)
        outcomes[_load_or_refuse(ext, data)] += 1

    check()
    return outcomes


def test_fuzzed_files_are_parsed_or_refused(tmp_path):
    out = _fuzz(tmp_path, 200)
    assert out["ok"] and out["refused"]  # the fuzzer reached both outcomes
    record("hostile files: fuzzed (hypothesis) loader inputs", sum(out.values()), 0, **out)


@pytest.mark.slow
def test_fuzzed_files_many(tmp_path):
    out = _fuzz(tmp_path, 6000)
    record("hostile files: fuzzed (hypothesis) loader inputs", sum(out.values()), 0, **out)


def _pdf_with(objects: list[bytes]) -> bytes:
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def _deflate_bomb(mib: int, head: bytes = b"") -> bytes:
    c = zlib.compressobj(9)
    block = b" " * (1 << 20)
    return c.compress(head) + b"".join(c.compress(block) for _ in range(mib)) + c.flush()


def make_hostile(folder: Path, big: bool) -> dict[str, str]:
    """Write the hand-made attack files; returns {name: expected outcome substring or 'added'}."""
    folder.mkdir(parents=True)
    expect: dict[str, str] = {}
    (folder / "good.txt").write_text("The records office reviews the retention schedule every quarter.\n")
    expect["good.txt"] = "added"

    # A docx that is a 100-400 MiB zip bomb in a ~0.1-0.4 MiB file (members declare their true size).
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("word/document.xml")
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as w:
            block = b" " * (1 << 20)
            for _ in range(400 if big else 100):
                w.write(block)
    (folder / "bomb.docx").write_bytes(buf.getvalue())
    expect["bomb.docx"] = "zip bomb"
    (folder / "notazip.docx").write_bytes(os.urandom(3000))
    expect["notazip.docx"] = "not a zip"

    pdf = write_pdf(folder / "tmp.pdf", ["page one text", "page two text"]).read_bytes()
    (folder / "tmp.pdf").unlink()
    (folder / "truncated.pdf").write_bytes(pdf[: len(pdf) // 2])
    expect["truncated.pdf"] = "PDF"
    (folder / "header-only.pdf").write_bytes(b"%PDF-1.7\n")
    expect["header-only.pdf"] = "PDF"
    stream = _deflate_bomb(400 if big else 100, b"BT /F1 12 Tf 72 720 Td (boom) Tj ET\n")
    (folder / "flate-bomb.pdf").write_bytes(
        _pdf_with(
            [
                b"<< /Type /Catalog /Pages 2 0 R >>",
                b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
                b"<< /Length "
                + str(len(stream)).encode()
                + b" /Filter /FlateDecode >>\nstream\n"
                + stream
                + b"\nendstream",
            ]
        )
    )
    expect["flate-bomb.pdf"] = "PDF"
    (folder / "page-loop.pdf").write_bytes(
        _pdf_with(
            [
                b"<< /Type /Catalog /Pages 2 0 R >>",
                b"<< /Type /Pages /Kids [2 0 R 3 0 R] /Count 2 >>",
                b"<< /Type /Pages /Parent 2 0 R /Kids [2 0 R] /Count 1 >>",
            ]
        )
    )
    expect["page-loop.pdf"] = "PDF"

    depth = 1_000_000 if big else 100_000
    (folder / "deep.json").write_text("[" * depth + "]" * depth)
    expect["deep.json"] = "nested too deeply"
    (folder / "deep.jsonl").write_text('{"ok": 1}\n' + '{"a":' * 5000 + "1" + "}" * 5000 + "\n")
    expect["deep.jsonl"] = "nested too deeply"
    (folder / "wide-field.csv").write_text("a,b\n" + "x" * 200_000 + ",y\n")
    expect["wide-field.csv"] = "CSV"

    # Huge lines: one unbroken "word" and one very long line of prose. Both are legitimate text:
    # they must be ingested (or refused) without a crash, within the limits.
    (folder / "unbroken-line.txt").write_text("z" * ((8 << 20) if big else (64 << 10)))
    expect["unbroken-line.txt"] = "added"
    (folder / "long-line.md").write_text("the quarterly register review " * ((60_000) if big else 600))
    expect["long-line.md"] = "added"

    (folder / "invalid-utf8.txt").write_bytes(
        b"valid start \xff\xfe\xc3\x28 broken middle \xed\xa0\x80 end\n"
    )
    expect["invalid-utf8.txt"] = "added"
    (folder / "picture.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(4000))
    expect["picture.txt"] = "binary"
    (folder / "program.md").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(64) + os.urandom(2000))
    expect["program.md"] = "binary"
    rng = random.Random(5)
    (folder / "noise.csv").write_bytes(bytes(rng.choice(range(1, 32)) for _ in range(5000)))
    expect["noise.csv"] = "binary"
    (folder / "bad-utf16.txt").write_bytes(b"\xff\xfe" + b"a\x00b\x00\x00\xd8")
    expect["bad-utf16.txt"] = "UTF-16"
    (folder / "empty.txt").write_bytes(b"")
    expect["empty.txt"] = "no text"

    (folder / "loop").symlink_to(folder)
    expect["loop"] = "loop"
    sub = folder / "sub"
    sub.mkdir()
    (sub / "back-up").symlink_to(folder)
    expect["back-up"] = "loop"
    (folder / "outside.txt").symlink_to("/etc/hostname")
    expect["outside.txt"] = "outside"
    (folder / "outside-dir").symlink_to("/usr/share")
    expect["outside-dir"] = "outside"
    (folder / "broken.txt").symlink_to(folder / "nowhere.txt")
    expect["broken.txt"] = "broken"
    os.mkfifo(folder / "fifo.txt")
    expect["fifo.txt"] = "not a regular file"
    (folder / "tool.exe").write_bytes(b"MZ" + os.urandom(100))
    expect["tool.exe"] = "unsupported"
    return expect


def _outcomes(report: dict) -> dict[str, tuple[str, str]]:
    out = {}
    for kind in ("added", "updated", "unchanged"):
        for d in report[kind]:
            out[Path(d["path"]).name] = (kind, "")
    for kind in ("skipped", "failed"):
        for d in report[kind]:
            out[Path(d["path"]).name] = (kind, d["reason"])
    return out


def test_hand_made_files_refused_by_loaders_and_discovery(tmp_path):
    """Without the model: discovery skips links and specials; loaders refuse the rest, in bounded memory."""
    folder = tmp_path / "hostile"
    expect = make_hostile(folder, big=False)
    files, skipped, failed = discover([folder])
    seen = {Path(s["path"]).name: s["reason"] for s in skipped + failed}
    for name in ("loop", "back-up", "outside.txt", "outside-dir", "broken.txt", "fifo.txt", "tool.exe"):
        assert expect[name] in seen[name], (name, seen.get(name))
        assert "\n" not in seen[name]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    for f in files:
        want = expect[f.name]
        got = _load_or_refuse(f.suffix, f.read_bytes())
        if want == "added" or want == "no text":
            assert got == "ok" or want == "no text", f.name
        else:
            with pytest.raises(InvalidInput, match=want):
                loaders.load(f, f.read_bytes(), max_bytes=50 << 20)
    grew_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grew_mib < 400, f"parsing the bombs grew the peak RSS by {grew_mib:.0f} MiB"
    assert time.monotonic() - t0 < 120
    record("hostile files: hand-made (bombs, nesting, binaries, links, FIFO)", len(expect) - 1, 0)


def _ingest_hostile(cli, tmp_path: Path, big: bool) -> int:
    folder = tmp_path / "hostile"
    expect = make_hostile(folder, big=big)
    assert cli(["collections", "create", "h"]).exit_code == 0
    r = cli(["--json", "ingest", str(folder), "-c", "h", "--timeout", "60"])
    assert r.exit_code == 1, r.output[-2000:]
    assert r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1, r.stderr
    report = json.loads(r.stdout)
    got = _outcomes(report)
    for name, want in expect.items():
        kind, reason = got[name]
        assert "\n" not in reason and len(reason) < 400, (name, reason)
        if want == "added":
            assert kind == "added", (name, kind, reason)
        else:
            assert kind in ("skipped", "failed") and want.lower() in reason.lower(), (name, kind, reason)
    check_vault_healthy(
        Path(os.environ["OFFLINE_VAULT"]) if "OFFLINE_VAULT" in os.environ else tmp_path / "vault", ("alice",)
    )
    r = cli(["--json", "search", "quarterly register review", "-c", "h"])
    assert r.exit_code == 0 and json.loads(r.stdout)["hits"]
    return len(expect) - 1


def test_hand_made_files_through_the_cli(admin_session, cli, tmp_path):
    admin_session.close()
    n = _ingest_hostile(cli, tmp_path, big=False)
    record("hostile files: hand-made, through `offline ingest`", n, 0)


@pytest.mark.slow
def test_hand_made_big_files_through_the_cli(admin_session, cli, tmp_path):
    admin_session.close()
    n = _ingest_hostile(cli, tmp_path, big=True)
    record("hostile files: hand-made, through `offline ingest`", n, 0, big=True)
