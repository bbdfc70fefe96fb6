"""Prediction files: image-level rows (one per crop) and patient-level rows, read with every
value checked, aggregated to patients, written atomically. Whatever made the predictions (a run,
another tool, `evaluate --predictions`), the statistics read them through here.

    predictions.csv           patient_id, phase, source, label, prob_high, x_min, y_min, x_max, y_max
    predictions_patient.csv   patient_id, label, prob_high
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ccrcc_grade.core.errors import CcrccError, check_number
from ccrcc_grade.core.fileio import atomic_write_csv
from ccrcc_grade.stats.metrics import aggregate_patients

IMAGE_COLUMNS = ["patient_id", "phase", "source", "label", "prob_high", "x_min", "y_min", "x_max", "y_max"]
PATIENT_COLUMNS = ["patient_id", "label", "prob_high"]


def read_predictions(path: Path | str) -> list[dict]:
    """A predictions CSV: image level (patient_id, phase, source, label, prob_high) or patient
    level (patient_id, label, prob_high)."""
    path = Path(path)
    if not path.is_file():
        raise CcrccError(f"{path}: predictions file not found")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        need = {"patient_id", "label", "prob_high"}
        missing = need - set(reader.fieldnames or [])
        if missing:
            raise CcrccError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        rows = []
        for lineno, r in enumerate(reader, start=2):
            r["label"] = int(check_number(r["label"], f"{path}:{lineno}: label (0 low, 1 high)", 0, 1, integer=True))
            r["prob_high"] = check_number(r["prob_high"], f"{path}:{lineno}: prob_high", 0, 1)
            rows.append(r)
    if not rows:
        raise CcrccError(f"{path}: no predictions")
    check_prediction_rows(rows, str(path))
    return rows


def check_prediction_rows(rows: list[dict], where: str) -> None:
    """One label per patient, each case once: a patient whose rows disagree on the grade, or a
    row listed twice (which would count a patient twice), is refused."""
    labels: dict[str, int] = {}
    seen: set[tuple] = set()
    image = is_image_level(rows)
    for r in rows:
        pid = r["patient_id"]
        if labels.setdefault(pid, r["label"]) != r["label"]:
            raise CcrccError(f"{where}: patient {pid!r} has rows with label 0 and label 1; one patient has one grade")
        key = (
            (
                pid,
                r.get("phase", ""),
                r.get("source", ""),
                *(str(r.get(k, "")) for k in ("x_min", "y_min", "x_max", "y_max")),
            )
            if image
            else pid
        )
        if key in seen:
            raise CcrccError(
                f"{where}: "
                + (
                    f"patient {pid!r} is listed twice"
                    if not image
                    else f"the row of {pid!r} {r.get('source', '')} is listed twice"
                )
            )
        seen.add(key)


def is_image_level(rows: list[dict]) -> bool:
    return bool(rows) and "source" in rows[0] and rows[0].get("source") not in (None, "")


def patient_level(rows: list[dict], how: str = "mean") -> list[dict]:
    if not is_image_level(rows):
        return [
            {"patient_id": r["patient_id"], "label": int(r["label"]), "prob_high": float(r["prob_high"])} for r in rows
        ]
    ids, y, p = aggregate_patients(
        [r["patient_id"] for r in rows],
        np.array([r["prob_high"] for r in rows]),
        np.array([r["label"] for r in rows]),
        how,
    )
    return [{"patient_id": i, "label": int(a), "prob_high": float(b)} for i, a, b in zip(ids, y, p)]


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    atomic_write_csv(path, columns, ({k: (f"{v:.6f}" if k == "prob_high" else v) for k, v in r.items()} for r in rows))
