#!/usr/bin/env python3
"""Write the labelled synthetic clinic set into tests/data/clinic/ (issue 17's figures and tests).

    .venv/bin/python scripts/make_clinic_set.py [--out tests/data/clinic]

Everything is invented (names, ids, numbers: NHS 943 476 5919 is the NHS's own test number, phones
are Ofcom drama numbers, e-mails use example.org). One patient, Maria Gonzalez (PT-00417), appears
in 12 places: tagged and untagged letters and notes, CSV and JSON rows, a shared ward list, a DOCX,
an HTML page and one scanned letter (a PNG with no text layer), under name variants ("GONZALEZ,
María", "María González", "Maria J. Gonzalez"), her old hospital number and her e-mail only.
Another patient shares her surname (Carlos Gonzalez) and must survive her erasure.

``labels.json`` records, per file: how to ingest it (tag, subject field), which places are hers
(each with a unique marker word to search for after an erasure) and every identifier written
into it by kind, for detection recall and precision.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

SUBJECT = {
    "id": "PT-00417",
    "name": "Maria Gonzalez",
    "aliases": ["RC-88121", "maria.gonzalez@example.org"],
    "dob": "1961-03-14",
}
OTHERS = {
    "PT-00999": "John Smith",
    "PT-03456": "Carlos Gonzalez",
    "PT-01234": "Aisha Khan",
    "PT-02345": "Oliver Brown",
    "PT-04567": "Li Wei",
}


class Doc:
    """Text with its identifiers recorded as they are written in."""

    def __init__(self) -> None:
        self.ids: list[list[str]] = []

    def _k(self, kind: str, value: str) -> str:
        self.ids.append([kind, value])
        return value

    def P(self, v: str) -> str:
        return self._k("PERSON", v)  # noqa: E704

    def ID(self, v: str) -> str:
        return self._k("SUBJECT_ID", v)  # noqa: E704

    def E(self, v: str) -> str:
        return self._k("EMAIL_ADDRESS", v)  # noqa: E704

    def T(self, v: str) -> str:
        return self._k("PHONE_NUMBER", v)  # noqa: E704

    def D(self, v: str) -> str:
        return self._k("DATE_OF_BIRTH", v)  # noqa: E704

    def N(self, v: str) -> str:
        return self._k("UK_NHS", v)  # noqa: E704

    def S(self, v: str) -> str:
        return self._k("US_SSN", v)  # noqa: E704


def build(out: Path) -> dict:
    from _docfactory import render_page, write_docx

    files: dict[str, dict] = {}
    places: list[dict] = []

    def put(
        rel: str,
        text: str | None,
        doc: Doc,
        *,
        subject: str | None = None,
        marker: str | None = None,
        how: str = "",
        about: list[str] | None = None,
    ) -> None:
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if text is not None:
            path.write_text(text, encoding="utf-8")
        files[rel] = {
            "subjects_tag": [subject] if subject else [],
            "identifiers": doc.ids,
            "about": about or [],
        }
        if marker:
            places.append({"file": rel, "marker": marker, "tagged": bool(subject), "how": how})

    # 1. tagged referral letter
    d = Doc()
    put(
        "letters/referral-2024-02-gonzalez.txt",
        f"Riverside Clinic, 12 Mill Lane, Leeds\n\nDear {d.P('Dr Tom Lee')},\n\n"
        f"Re: {d.P('Maria Gonzalez')}, {d.ID('PT-00417')}, DOB {d.D('14/03/1961')}\n\n"
        "I would be grateful if you could see this 63-year-old lady "
        "with poorly controlled type 2 diabetes. Her HbA1c is 71 mmol/mol despite metformin. "
        "She can be reached on "
        f"{d.T('07700 900123')}. Marker mgz01.\n\nYours sincerely,\n{d.P('Dr Aisha Patel')}\n",
        d,
        subject="PT-00417",
        marker="mgz01",
        how="tagged at ingest",
        about=["PT-00417"],
    )
    # 2. untagged discharge summary, surname first with accents
    d = Doc()
    put(
        "letters/discharge-summary-0415.md",
        f"# Discharge summary\n\nPatient: {d.P('GONZALEZ, María')} ({d.ID('PT-00417')})\n\n"
        "## Course\n\nAdmitted with "
        "hyperglycaemia, treated with insulin, discharged on day 3. "
        f"Follow-up with {d.P('Dr Aisha Patel')} in four "
        f"weeks. Marker mgz02.\n",
        d,
        marker="mgz02",
        how="untagged; GONZALEZ, María",
        about=["PT-00417"],
    )
    # 3. untagged phone note, middle initial, no id
    d = Doc()
    put(
        "notes/phone-call-0312.txt",
        f"Phone call 12 March. {d.P('Maria J. Gonzalez')} rang about her metformin dose; "
        "advised to keep 500 mg twice "
        f"daily and to book bloods. Marker mgz03.\n",
        d,
        marker="mgz03",
        how="untagged; middle initial, no id",
        about=["PT-00417"],
    )
    # 4. untagged nurse note: only her e-mail
    d = Doc()
    put(
        "notes/nurse-0320.txt",
        f"Nurse note 20 March: sent the diet sheet to {d.E('maria.gonzalez@example.org')} "
        "as requested at the desk. "
        f"Marker mgz04.\n",
        d,
        marker="mgz04",
        how="untagged; e-mail only (a registered alias)",
        about=["PT-00417"],
    )
    # 5. untagged pharmacy HTML, old hospital number
    d = Doc()
    put(
        "letters/pharmacy-0402.html",
        "<html><body><h1>Pharmacy reconciliation</h1>"
        f"<p>Patient: {d.P('María González')}, old hospital number "
        f"RC-88121.</p><p>Metformin 500 mg, atorvastatin 20 mg. Marker mgz05.</p></body></html>\n",
        d,
        marker="mgz05",
        how="untagged; accents, old hospital number",
        about=["PT-00417"],
    )
    # 6. appointments CSV (one document per row by --subject-field patient_id)
    rows = [
        ("PT-00417", "Maria Gonzalez", "2024-02-10", "diabetes review mgz06a"),
        ("PT-00999", "John Smith", "2024-02-10", "hip review keep01"),
        ("PT-03456", "Carlos Gonzalez", "2024-02-11", "asthma review keep02"),
        ("PT-00417", "Maria Gonzalez", "2024-03-02", "bloods mgz06b"),
        ("PT-01234", "Aisha Khan", "2024-03-02", "antenatal keep03"),
    ]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["patient_id", "name", "date", "reason"])
    w.writerows(rows)
    d = Doc()
    for pid, name, _, _ in rows:
        d.ID(pid)
        d.P(name)
    put("appointments.csv", buf.getvalue(), d, how="subject field patient_id", about=[r[0] for r in rows])
    files["appointments.csv"]["subject_field"] = "patient_id"
    places += [
        {"file": "appointments.csv", "row": "row-1", "marker": "mgz06a", "tagged": True, "how": "CSV row"},
        {"file": "appointments.csv", "row": "row-4", "marker": "mgz06b", "tagged": True, "how": "CSV row"},
    ]
    # 7. lab results JSON (one document per record by --subject-field patient.id)
    labs = [
        {
            "patient": {"id": "PT-00417", "name": "Maria Gonzalez"},
            "test": "HbA1c",
            "value": 71,
            "note": "mgz07",
        },
        {
            "patient": {"id": "PT-02345", "name": "Oliver Brown"},
            "test": "eGFR",
            "value": 58,
            "note": "keep04",
        },
        {"patient": {"id": "PT-04567", "name": "Li Wei"}, "test": "TSH", "value": 2.1, "note": "keep05"},
    ]
    d = Doc()
    for r in labs:
        d.ID(r["patient"]["id"])
        d.P(r["patient"]["name"])
    put(
        "lab-results.json",
        json.dumps(labs, indent=1),
        d,
        how="subject field patient.id",
        about=[r["patient"]["id"] for r in labs],
    )
    files["lab-results.json"]["subject_field"] = "patient.id"
    places.append(
        {"file": "lab-results.json", "row": "row-1", "marker": "mgz07", "tagged": True, "how": "JSON record"}
    )
    # 8. shared ward list: her line in one chunk, other patients' lines in others
    d = Doc()
    lines = [
        f"Ward 7 list, 4 March. Bed 1: {d.ID('PT00417')} {d.P('Maria Gonzalez')}, "
        "diabetes review, marker mgz08."
    ]
    beds = list(OTHERS.items()) + [(f"PT-{20000 + n}", None) for n in range(14)]
    for n, (pid, name) in enumerate(beds, start=2):
        who = f" {d.P(name)}" if name else ""
        lines.append(
            f"Bed {n}: {d.ID(pid)}{who}, observations stable, fluids and mobilisation as charted, "
            "review by the consultant on the morning round, family informed of the plan."
        )
    lines.append("End of list, keep06.")
    put(
        "ward-list-0304.txt",
        "\n".join(lines) + "\n",
        d,
        marker="mgz08",
        how="shared ward list (her line only)",
        about=["PT-00417", *OTHERS],
    )
    # 9. scanned referral letter: a PNG, no text layer
    d = Doc()
    scan = [
        "Riverside Clinic, 12 Mill Lane, Leeds",
        "",
        f"Dear {d.P('Dr Tom Lee')},",
        "",
        f"Re: {d.P('Maria Gonzalez')}, {d.ID('PT-00417')}, DOB {d.D('14/03/1961')}",
        "",
        "Thank you for seeing her. Her feet were checked today and sensation is intact.",
        "Please review her statin dose. Marker mgz09.",
        "",
        "Yours sincerely,",
        d.P("Dr Aisha Patel"),
    ]
    (out / "scans").mkdir(parents=True, exist_ok=True)
    render_page(scan).save(out / "scans/referral-scan-0210.png", optimize=True)
    put(
        "scans/referral-scan-0210.png",
        None,
        d,
        marker="mgz09",
        how="scanned letter (OCR)",
        about=["PT-00417"],
    )
    files["scans/referral-scan-0210.png"]["ocr_truth"] = "\n".join(scan)
    # 10. insurance DOCX: name and NHS number
    d = Doc()
    body = (
        f"Claim for Ms {d.P('Maria Gonzalez')}, NHS number {d.N('943 476 5919')}, for podiatry sessions "
        "in April. Marker mgz10."
    )
    (out / "letters").mkdir(parents=True, exist_ok=True)
    write_docx(out / "letters/insurance-0501.docx", [("Insurance claim", body)])
    put(
        "letters/insurance-0501.docx",
        None,
        d,
        marker="mgz10",
        how="untagged DOCX; NHS number",
        about=["PT-00417"],
    )
    # 11. untagged note: lower-case id only
    d = Doc()
    put(
        "notes/untagged-note.txt",
        f"{d.ID('pt-00417')} seen in the foot clinic, HbA1c 52. Marker mgz11.\n",
        d,
        marker="mgz11",
        how="untagged; id only, lower case",
        about=["PT-00417"],
    )
    # Other patients: letters and notes that must all survive her erasure.
    others = [
        (
            "letters/referral-smith.txt",
            "PT-00999",
            lambda d: (
                f"Dear {d.P('Dr Tom Lee')},\nRe: {d.P('John Smith')}, {d.ID('PT-00999')}, "
                f"DOB {d.D('02/07/1950')}. "
                f"Hip replacement went well; physiotherapy booked. Phone {d.T('07700 900456')}. keep07\n"
            ),
        ),
        (
            "letters/asthma-carlos-gonzalez.txt",
            "PT-03456",
            lambda d: (
                f"Re: {d.P('Carlos Gonzalez')} ({d.ID('PT-03456')}), born {d.D('1988-11-02')}. "
                f"{d.P('Mr Gonzalez')} uses "
                f"his inhaler twice daily. E-mail {d.E('c.gonzalez@example.net')}. keep08\n"
            ),
        ),
        (
            "notes/khan-antenatal.txt",
            "PT-01234",
            lambda d: (
                f"Antenatal check for {d.P('Aisha Khan')}, {d.ID('PT-01234')}; NHS {d.N('401 023 2137')}. "
                f"Call {d.T('+44 20 7946 0958')}. keep09\n"
            ),
        ),
        (
            "notes/brown-renal.md",
            "PT-02345",
            lambda d: (
                f"# Renal clinic\n\n{d.P('Oliver Brown')} ({d.ID('PT-02345')}) eGFR 58, stable. "
                "Visiting from the US: "
                f"SSN {d.S('536-22-1234')}. keep10\n"
            ),
        ),
        (
            "notes/wei-thyroid.txt",
            "PT-04567",
            lambda d: (
                f"{d.P('Li Wei')}, {d.ID('PT-04567')}, date of birth {d.D('23 May 1975')}, TSH normal. "
                f"Contact {d.E('li.wei@example.com')}. keep11\n"
            ),
        ),
        (
            "notes/staff-rota.txt",
            None,
            lambda d: (
                f"Rota: {d.P('Dr Aisha Patel')} Monday, {d.P('Dr Tom Lee')} Tuesday, "
                f"nurse {d.P('Grace Okafor')} "
                f"Wednesday. Practice line {d.T('0113 496 0000')}. keep12\n"
            ),
        ),
    ]
    for rel, pid, make in others:
        d = Doc()
        put(
            rel,
            make(d),
            d,
            subject=pid if rel.startswith("letters/referral") else None,
            about=[pid] if pid else [],
        )
    labels = {
        "subject": SUBJECT,
        "others": OTHERS,
        "places": places,
        "files": files,
        "keep_markers": [f"keep{n:02d}" for n in range(1, 13)],
    }
    (out / "labels.json").write_text(
        json.dumps(labels, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "clinic")
    args = ap.parse_args()
    labels = build(args.out)
    print(
        f"wrote {len(labels['files'])} files, {len(labels['places'])} places of {SUBJECT['id']} "
        f"into {args.out}"
    )


if __name__ == "__main__":
    main()
