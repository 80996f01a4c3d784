"""Terminal escapes from documents and users never reach the terminal (through the real CLI).

A malicious enrolled user ingests a document whose name, heading and text carry OSC (window
title, hyperlinks), CSI (clear screen, colours, cursor moves), 8-bit C1 controls, BEL, backspace,
carriage return and bidi overrides, then has others run ``search``, ``ask``, ``docs list``,
``docs show`` and ``audit tail``. Every line printed must be free of control characters (newline
and tab excepted) while the document's readable text still shows.
"""

from __future__ import annotations

import json
import unicodedata

import pytest

from offline.textsafe import StreamSanitizer, one_line, terminal_safe
from offline.vault import set_setting

ESC = "\x1b"
NASTY_NAME = f"evil{ESC}]0;pwned-title\x07{ESC}[2J\nfake-row.md"
NASTY_TEXT = (
    f"# Pay {ESC}[31mrates{ESC}[0m\n\n"
    f"The Zephyr ward pays {ESC}]8;;http://evil.example/{ESC}\\on-call staff{ESC}]8;;{ESC}\\ "
    f"ninety pounds a night.\x07\x08\x08 \x9b2J\rOVERWRITE \u202egnp.exe {ESC}P1$qm{ESC}\\ {ESC}c"
    f" {ESC}]52;c;ZXZpbA==\x07 done.\n"
)
QUESTION = f"What does the Zephyr ward pay {ESC}]0;q-title\x07 per night?"


def assert_clean(text: str) -> None:
    """No control character but newline and tab, no bidi override, nothing undecodable."""
    for ch in text:
        if ch in "\n\t":
            continue
        assert unicodedata.category(ch) != "Cc", f"control character {ch!r} in {text!r}"
        assert ch not in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069", f"bidi {ch!r} in {text!r}"
        assert not "\ud800" <= ch <= "\udfff"


@pytest.fixture
def nasty(admin_session, cli, tmp_path):
    set_setting(admin_session, "audit_questions", "full")  # the question shows in audit tail too
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / NASTY_NAME).write_text(NASTY_TEXT)
    (folder / "plain.txt").write_text("The Zephyr ward moved to building 7 in 2021.")
    assert cli(["collections", "create", "kb"]).exit_code == 0
    r = cli(["ingest", str(folder), "-c", "kb"])
    assert r.exit_code == 0, r.output
    assert_clean(r.output)
    return admin_session


def test_search_ask_docs_and_audit_print_no_control_sequences(nasty, cli):
    r = cli(["search", "Zephyr ward pay on-call", "-c", "kb", "-k", "5"])
    assert r.exit_code == 0, r.output
    assert_clean(r.output)
    assert "on-call staff" in r.output and "ninety pounds" in r.output  # the text itself still shows
    assert "pwned-title" not in r.output and "evil.example" not in r.output  # sequences go whole
    lines = r.output.splitlines()
    assert not any(line.startswith("fake-row") for line in lines)  # a newline in a name is not a line

    r = cli(["ask", QUESTION, "-c", "kb", "-k", "2", "--max-tokens", "24", "--min-score", "0"])
    assert r.exit_code == 0, r.output
    assert_clean(r.output)
    # an answer lists its sources, a refusal the closest passages: both print the hostile names
    assert ("Sources:" in r.output or "Closest passages:" in r.output) and "evil" in r.output
    assert not any(line.startswith("fake-row") for line in r.output.splitlines())

    r = cli(["docs", "list", "-c", "kb"])
    assert r.exit_code == 0, r.output
    assert_clean(r.output)
    assert len(r.output.strip().splitlines()) == 3  # header + two documents, one line each

    doc_id = next(
        d["id"]
        for d in json.loads(cli(["--json", "docs", "list", "-c", "kb"]).output)
        if d["name"].startswith("evil")
    )
    r = cli(["docs", "show", str(doc_id), "-c", "kb"])
    assert r.exit_code == 0, r.output
    assert_clean(r.output)
    assert "rates" in r.output

    r = cli(["audit", "tail", "-n", "20"])
    assert r.exit_code == 0, r.output
    assert_clean(r.output)
    assert " ask " in r.output and "q-title" not in r.output
    tail = json.loads(cli(["--json", "audit", "tail", "--action", "ask"]).output)
    assert ESC in tail[-1]["payload"]["question"]  # it is the logged question that was cleaned above

    # Errors quote what was typed: still one clean line.
    r = cli(["search", "x", "-c", f"kb{ESC}]0;err-title\x07"])
    assert r.exit_code == 4
    assert_clean(r.output)
    r = cli(["search", "x", "-k", f"3{ESC}[2J"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    assert_clean(r.output)


def test_json_output_escapes_control_characters(nasty, cli):
    r = cli(["--json", "search", "Zephyr ward pay", "-c", "kb"])
    assert r.exit_code == 0
    assert_clean(r.output)
    hits = json.loads(r.output)["hits"]
    assert any(ESC in h["text"] for h in hits)  # the data is kept as it is, only printed safely


def test_shared_function_and_stream():
    raw = f"a{ESC}]0;t\x07b{ESC}[1mc\r\nd\re\x00f\x9b2Jg\u202eh\udcff\ti"
    assert terminal_safe(raw) == "abc\ndefgh\ufffd\ti"
    assert one_line("a\nb\tc\u2028d") == "a b c d"
    assert one_line("x" * 50, limit=10) == "x" * 9 + "…"
    s = StreamSanitizer()
    pieces = ["hello ", ESC, "]0;ti", "tle\x07 wor", "ld ", ESC + "[", "31mred", ESC, "[0m\r", "\nend"]
    out = "".join(s.feed(p) for p in pieces) + s.flush()
    assert out == "hello  world red\nend"
