"""Where each image came from: the centre, the scanner and the acquisition, per patient and phase.

Reporting standards for prediction models across sites (TRIPOD+AI, CLAIM 2024, PROBAST+AI) ask
for performance by centre and scanner; `ingest` records what that needs in WORK/acquisition.csv:

* ``center``: the clinical.csv column ``center`` (or ``centre``/``site``) when present, else the
  DICOM InstitutionName, else empty;
* from the first DICOM header of the phase's series: Manufacturer, ManufacturerModelName,
  SliceThickness, KVP, ConvolutionKernel; the NIfTI voxel's z size as the slice thickness;
* ``pixel_spacing_mm`` (every kind whose spacing is known) and ``tumor_size_mm``: the longest box
  side of the patient in mm (the size band when clinical.csv has no ``tumor_size_cm``).

DICOM text is untrusted: it is kept as plain text (control characters dropped, 64 characters at
most) and never rendered as HTML. ``patient_attributes`` reads it back for the subgroup analyses
of `evaluate` and the study report; a WORK folder made before this file existed gives the
clinical.csv columns only.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

from ccrcc_grade.core.fileio import atomic_write_csv
from ccrcc_grade.core.paths import WorkDir
from ccrcc_grade.ingest.cohort import Cohort, Roi

ACQUISITION_COLUMNS = [
    "patient_id",
    "phase",
    "center",
    "institution",
    "manufacturer",
    "model_name",
    "slice_thickness_mm",
    "kvp",
    "kernel",
    "pixel_spacing_mm",
    "tumor_size_mm",
]
CENTER_COLUMNS = ("center", "centre", "site")
TUMOR_SIZE_COLUMNS = ("tumor_size_cm", "tumour_size_cm", "size_cm")


def clean_text(v: object, limit: int = 64) -> str:
    """DICOM or CSV text as one plain line: multi-values joined by '/', control characters gone."""
    if v is None:
        return ""
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        v = "/".join(str(x) for x in v)
    s = "".join(ch for ch in str(v) if ch.isprintable()).strip()
    return s[:limit]


def _number(v: object, lo: float, hi: float) -> float | None:
    """A finite number within [lo, hi], else None (a header value out of range is not believed)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and lo <= f <= hi else None


def _dicom_fields(path: Path) -> dict:
    from ccrcc_grade.core.errors import CcrccError
    from ccrcc_grade.io.dicom import read_header

    try:
        ds = read_header(path)
    except CcrccError:
        return {}
    return {
        "institution": clean_text(ds.get("InstitutionName")),
        "manufacturer": clean_text(ds.get("Manufacturer")),
        "model_name": clean_text(ds.get("ManufacturerModelName")),
        "slice_thickness_mm": _number(ds.get("SliceThickness"), 0.01, 50),
        "kvp": _number(ds.get("KVP"), 20, 200),
        "kernel": clean_text(ds.get("ConvolutionKernel")),
    }


def _nifti_thickness(path: Path) -> float | None:
    try:
        import nibabel as nib

        zooms = nib.load(str(path)).header.get_zooms()
    except Exception:  # noqa: BLE001 - any unreadable header: the thickness stays unknown
        return None
    return _number(zooms[2], 0.01, 50) if len(zooms) >= 3 else None


def column(row: dict[str, str], names: tuple[str, ...]) -> str:
    """The first of ``names`` present in a clinical row (case-insensitive), '' when none is."""
    lower = {k.lower(): v for k, v in row.items()}
    return next((lower[n] for n in names if lower.get(n)), "")


def acquisition_rows(cohort: Cohort) -> list[dict]:
    """One row per patient and phase (see the module's docstring)."""
    by_key: dict[tuple[str, str], list[Roi]] = defaultdict(list)
    for r in cohort.rois:
        by_key[(r.patient_id, r.phase)].append(r)
    size: dict[str, float] = {}
    for r in cohort.rois:
        if r.spacing:
            mm = max((r.box.x_max - r.box.x_min) * r.spacing[1], (r.box.y_max - r.box.y_min) * r.spacing[0])
            size[r.patient_id] = max(size.get(r.patient_id, 0.0), mm)
    rows = []
    for (pid, phase), rois in sorted(by_key.items()):
        first = rois[0]
        fields = {}
        if first.kind == "dicom":
            fields = _dicom_fields(first.path)
        elif first.kind == "nifti":
            fields = {"slice_thickness_mm": _nifti_thickness(first.path)}
        center = clean_text(column(cohort.clinical.rows.get(pid, {}), CENTER_COLUMNS)) or fields.get("institution", "")
        row = {c: "" for c in ACQUISITION_COLUMNS}
        row.update({k: ("" if v is None else v) for k, v in fields.items()})
        row.update(
            patient_id=pid,
            phase=phase,
            center=center,
            pixel_spacing_mm=round(first.spacing[1], 4) if first.spacing else "",
            tumor_size_mm=round(size[pid], 1) if pid in size else "",
        )
        rows.append(row)
    return rows


def write_acquisition(rows: list[dict], path: Path) -> None:
    atomic_write_csv(path, ACQUISITION_COLUMNS, rows)


def patient_attributes(work: Path | str, phase: str | None = None) -> dict[str, dict]:
    """patient_id -> {"center", "manufacturer", "slice_thickness_mm", "tumor_size_cm"} for the
    subgroup analyses: the phase's acquisition row (else the patient's first), the tumour size of
    clinical.csv (else the longest box side); None or '' where unknown."""
    wd = WorkDir(work)
    acq: dict[str, dict] = {}
    if wd.acquisition.is_file():
        with open(wd.acquisition, newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                if r.get("patient_id") and (r["patient_id"] not in acq or r.get("phase") == phase):
                    acq[r["patient_id"]] = r
    clinical: dict[str, dict] = {}
    if wd.clinical.is_file():
        with open(wd.clinical, newline="", encoding="utf-8-sig") as fh:
            clinical = {r["patient_id"]: r for r in csv.DictReader(fh) if r.get("patient_id")}
    out = {}
    for pid in sorted(set(acq) | set(clinical)):
        a, c = acq.get(pid, {}), clinical.get(pid, {})
        size_cm = _number(column(c, TUMOR_SIZE_COLUMNS), 0.1, 40)
        if size_cm is None:
            mm = _number(a.get("tumor_size_mm"), 1, 400)
            size_cm = None if mm is None else mm / 10
        out[pid] = {
            "center": clean_text(column(c, CENTER_COLUMNS)) or a.get("center", ""),
            "manufacturer": a.get("manufacturer", ""),
            "slice_thickness_mm": _number(a.get("slice_thickness_mm"), 0.01, 50),
            "tumor_size_cm": size_cm,
        }
    return out
