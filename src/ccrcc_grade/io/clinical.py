"""clinical.csv: one row per patient with its WHO/ISUP grade and clinical variables."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ccrcc_grade.core.errors import CcrccError


@dataclass
class ClinicalTable:
    path: Path
    columns: list[str]
    rows: dict[str, dict[str, str]]  # patient_id -> row (all columns, as text)
    labels: dict[str, int]  # patient_id -> 0 (low, I-II) / 1 (high, III-IV)
    grades: dict[str, str]  # patient_id -> '1'..'4' or 'low'/'high'
    lines: dict[str, int] | None = None  # patient_id -> line of the file (for messages per cell)


def grade_to_label(value: str, where: str) -> tuple[str, int]:
    """'1'..'4' (also 'I'..'IV', 'G1'.., '2.0') or 'low'/'high' -> (normalised grade, label)."""
    v = value.strip().lower()
    roman = {"i": "1", "ii": "2", "iii": "3", "iv": "4"}
    v = roman.get(v, v)
    v = v[1:] if v[:1] == "g" and v[1:].isdigit() else v
    if v in ("low", "high"):
        return v, int(v == "high")
    try:
        f = float(v)
    except ValueError:
        raise CcrccError(f"{where}: grade {value!r} is not 1-4 (or low/high)") from None
    if f not in (1.0, 2.0, 3.0, 4.0):
        raise CcrccError(f"{where}: WHO/ISUP grade {value!r} outside 1-4")
    g = int(f)
    return str(g), int(g >= 3)


def read_clinical(path: Path) -> ClinicalTable:
    """Read and validate clinical.csv (comma or semicolon separated, UTF-8 with or without BOM)."""
    path = Path(path)
    if not path.is_file():
        raise CcrccError(f"{path}: clinical.csv not found (required: patient_id and who_isup_grade or grade)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CcrccError(f"{path}: cannot read ({exc})") from None
    try:
        dialect = csv.Sniffer().sniff(text.splitlines()[0] if text else "", delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(text.splitlines(), dialect=dialect)
    columns = [c.strip() for c in (reader.fieldnames or [])]
    lower = {c.lower(): c for c in columns}
    twice = sorted({c for c in columns if [x.lower() for x in columns].count(c.lower()) > 1})
    if twice:
        raise CcrccError(f"{path}: column {', '.join(repr(c) for c in twice)} appears twice; which one holds the data?")
    if "patient_id" not in lower:
        raise CcrccError(f"{path}: missing required column 'patient_id' (found: {', '.join(columns) or 'none'})")
    grade_col = lower.get("who_isup_grade") or lower.get("grade")
    if grade_col is None:
        raise CcrccError(f"{path}: missing required column 'who_isup_grade' (or 'grade' with low/high)")
    pid_col = lower["patient_id"]
    rows: dict[str, dict[str, str]] = {}
    labels: dict[str, int] = {}
    grades: dict[str, str] = {}
    lines: dict[str, int] = {}
    for lineno, raw in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        pid = row.get(pid_col, "")
        if not pid:
            if not any(row.values()):
                continue  # blank line
            raise CcrccError(f"{path}:{lineno}: empty patient_id")
        if pid in rows:
            raise CcrccError(f"{path}:{lineno}: duplicate patient_id {pid!r}")
        if not row.get(grade_col):
            raise CcrccError(f"{path}:{lineno}: patient {pid!r} has no grade")
        grades[pid], labels[pid] = grade_to_label(row[grade_col], f"{path}:{lineno}")
        rows[pid] = row
        lines[pid] = lineno
    if not rows:
        raise CcrccError(f"{path}: no patients")
    return ClinicalTable(path, columns, rows, labels, grades, lines)
