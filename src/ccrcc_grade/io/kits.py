"""The KiTS19 / KiTS23 challenge data as a cohort (one contrast phase per case, tumour masks).

KITS_DIR/case_XXXXX/imaging.nii.gz + segmentation.nii.gz (labels: 1 kidney, 2 tumour, 3 cyst in
KiTS23) and the clinical JSON (kits.json or kits23.json). Only clear cell RCC with an ISUP grade
1-4 is kept; every exclusion is reported with its reason. The data are CC BY-NC-SA 4.0 and are
fetched by the KiTS repository's own download script, never by this package. This module reads
the clinical JSON; ``ingest.layouts.KitsReader`` reads the folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.io.clinical import ClinicalTable, grade_to_label

TUMOUR_LABEL = 2
CLEAR_CELL = "clear_cell_rcc"
CLINICAL_FIELDS = {
    "age": "age_at_nephrectomy",
    "sex": "gender",
    "bmi": ("bmi", "body_mass_index"),
    "tumor_size_cm": "radiographic_size",
    "pathology_t_stage": "pathology_t_stage",
    "tumor_necrosis": "tumor_necrosis",
}


def read_kits_clinical(path: Path) -> list[dict]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CcrccError(f"{path}: not a readable KiTS clinical JSON ({exc})") from None
    if not isinstance(data, list) or not data or not isinstance(data[0], dict) or "case_id" not in data[0]:
        raise CcrccError(f"{path}: not a KiTS clinical JSON (a list of cases with case_id)")
    return data


def kits_grade(case: dict) -> str | None:
    """'1'..'4' or None for ungraded ('na', null, missing). KiTS19 stores ints, KiTS23 strings."""
    g = case.get("tumor_isup_grade")
    if g is None or str(g).strip().lower() in ("na", "n/a", "", "none"):
        return None
    return str(int(float(g)))


def select_cases(cases: list[dict]) -> tuple[list[dict], dict[str, str]]:
    """Clear cell RCC with grade 1-4; returns (kept, {case_id: reason excluded})."""
    kept, excluded = [], {}
    for c in cases:
        sub = str(c.get("tumor_histologic_subtype"))
        if sub != CLEAR_CELL:
            excluded[c["case_id"]] = f"subtype {sub}"
        elif kits_grade(c) is None:
            excluded[c["case_id"]] = "clear cell RCC without ISUP grade"
        else:
            kept.append(c)
    return kept, excluded


def kits_clinical_table(cases: list[dict], source: Path) -> ClinicalTable:
    cols = ["patient_id", "who_isup_grade", *CLINICAL_FIELDS, "center"]
    rows, labels, grades = {}, {}, {}
    for c in cases:
        row = {"patient_id": c["case_id"], "center": "KiTS"}
        g, lab = grade_to_label(kits_grade(c), f"{source}:{c['case_id']}")
        row["who_isup_grade"] = g
        for k, src in CLINICAL_FIELDS.items():
            keys = src if isinstance(src, tuple) else (src,)
            v = next((c[s] for s in keys if c.get(s) is not None), "")
            row[k] = str(v)
        rows[c["case_id"]], labels[c["case_id"]], grades[c["case_id"]] = row, lab, g
    return ClinicalTable(Path(source), cols, rows, labels, grades)
