"""Export formats for audit entries: JSONL, CSV, ArcSight CEF and RFC 5424 syslog.

Every format carries every field needed to recompute an entry's hash (seq, ts, user, action,
severity, payload as canonical JSON, prev_hash, hash, sig), escaped per its own spec, one entry per
line. The payload is canonical JSON, which escapes control characters, so no format ever needs a raw
newline inside a record.

- JSONL: one canonical JSON object per line (sorted keys, no spaces, UTF-8).
- CSV: RFC 4180 (CRLF, double-quote quoting), header row first. Every cell that comes from user
  input is the JSON payload, which starts with ``{``, so no cell can start a spreadsheet formula.
- CEF (ArcSight, version 0): header fields escape ``\\`` and ``|`` (and CR/LF as ``\\r``/``\\n`` to keep
  one record per line); extension values escape ``\\``, ``=``, CR and LF. Severity maps
  info=3, notice=5, warning=7, high=9. Extension keys: ``rt`` (ms since epoch), ``externalId`` (seq),
  ``suser``, ``act``, ``cs1`` payload, ``cs2`` hash, ``cs3`` prev_hash, ``cs4`` sig, ``cs5`` exact
  timestamp, ``cs6`` vault id, each with its ``csNLabel``.
- Syslog (RFC 5424): ``<PRI>1 TIMESTAMP - offline - MSGID [audit@32473 ...] BOM MSG`` with facility 13
  (log audit), severity info=6, notice=5, warning=4, high=2; every field is a PARAM-VALUE with ``"``,
  ``\\`` and ``]`` escaped; UTF-8 throughout; one message per LF-terminated line (no octet counting).
  32473 is the documentation enterprise number (RFC 5612); MSGID is the action.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
from collections.abc import Callable

from .. import __version__
from .chain import Entry, canonical_json

FORMATS = ("jsonl", "csv", "cef", "syslog")
CSV_COLUMNS = ("seq", "ts", "user", "action", "severity", "payload", "prev_hash", "hash", "sig")
CEF_SEVERITY = {"info": 3, "notice": 5, "warning": 7, "high": 9}
SYSLOG_SEVERITY = {"info": 6, "notice": 5, "warning": 4, "high": 2}
SYSLOG_FACILITY = 13  # log audit
SD_ID = "audit@32473"
BOM = "\ufeff"


def _payload(e: Entry) -> str:
    return canonical_json(e.payload).decode()


def jsonl_line(e: Entry, vault_id: str) -> str:
    return canonical_json(e.to_dict()).decode() + "\n"


def csv_header() -> str:
    return _csv_row(list(CSV_COLUMNS))


def _csv_row(cells: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow(cells)
    return buf.getvalue()


def csv_line(e: Entry, vault_id: str) -> str:
    return _csv_row([str(e.seq), e.ts, e.user, e.action, e.severity, _payload(e), e.prev_hash, e.hash, e.sig])


def cef_header_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "\\r").replace("\n", "\\n")


def cef_value_escape(text: str) -> str:
    return (
        text.replace("\\", "\\\\")
        .replace("=", "\\=")
        .replace("\r\n", "\\n")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
    )


def _epoch_ms(ts: str) -> str:
    try:
        return str(int(_dt.datetime.fromisoformat(ts).timestamp() * 1000))
    except ValueError:
        return "0"


def cef_line(e: Entry, vault_id: str) -> str:
    header = [
        "CEF:0",
        "offline",
        "offline-audit",
        __version__,
        e.action,
        e.action,
        str(CEF_SEVERITY.get(e.severity, 0)),
    ]
    ext = [
        ("rt", _epoch_ms(e.ts)),
        ("externalId", str(e.seq)),
        ("suser", e.user),
        ("act", e.action),
        ("cs1Label", "payload"),
        ("cs1", _payload(e)),
        ("cs2Label", "hash"),
        ("cs2", e.hash),
        ("cs3Label", "prev_hash"),
        ("cs3", e.prev_hash),
        ("cs4Label", "sig"),
        ("cs4", e.sig),
        ("cs5Label", "ts"),
        ("cs5", e.ts),
        ("cs6Label", "vault_id"),
        ("cs6", vault_id),
    ]
    head = "|".join([header[0]] + [cef_header_escape(h) for h in header[1:]])
    return head + "|" + " ".join(f"{k}={cef_value_escape(v)}" for k, v in ext) + "\n"


def sd_escape(text: str) -> str:
    """RFC 5424 PARAM-VALUE: ``"``, ``\\`` and ``]`` are escaped with a backslash."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _msgid(action: str) -> str:
    ok = 0 < len(action) <= 32 and all(33 <= ord(c) <= 126 for c in action)
    return action if ok else "-"


def syslog_line(e: Entry, vault_id: str) -> str:
    pri = SYSLOG_FACILITY * 8 + SYSLOG_SEVERITY.get(e.severity, 6)
    stamp = e.ts.replace("+00:00", "Z")
    params = [
        ("vault", vault_id),
        ("seq", str(e.seq)),
        ("ts", e.ts),
        ("user", e.user),
        ("action", e.action),
        ("severity", e.severity),
        ("payload", _payload(e)),
        ("prev_hash", e.prev_hash),
        ("hash", e.hash),
        ("sig", e.sig),
    ]
    sd = "[" + SD_ID + "".join(f' {k}="{sd_escape(v)}"' for k, v in params) + "]"
    msg = f"{e.user} {e.action} seq={e.seq}"
    return f"<{pri}>1 {stamp} - offline - {_msgid(e.action)} {sd} {BOM}{msg}\n"


RENDERERS: dict[str, Callable[[Entry, str], str]] = {
    "jsonl": jsonl_line,
    "csv": csv_line,
    "cef": cef_line,
    "syslog": syslog_line,
}


def render(fmt: str, e: Entry, vault_id: str) -> str:
    """One record, newline-terminated; refuses to emit a record that would span lines."""
    line = RENDERERS[fmt](e, vault_id)
    body = line[:-2] if fmt == "csv" else line[:-1]
    if "\n" in body or "\r" in body:
        raise ValueError(f"audit entry {e.seq} would span lines in {fmt}")
    return line
