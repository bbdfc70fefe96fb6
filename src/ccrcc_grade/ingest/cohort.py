"""A validated cohort: every tumour box to crop (:class:`Roi`) with the patients' clinical rows.

Every layout reader (``layouts``) returns a :class:`Cohort`; nothing here reads pixels (ingest
decodes them when it crops). ``reconcile`` is the rule all readers of own cohorts share: a patient
needs both a clinical row and annotated images, otherwise it is excluded with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.phases import canonical_phase
from ccrcc_grade.io.boxes import Box
from ccrcc_grade.io.clinical import ClinicalTable


@dataclass
class Roi:
    """One tumour box on one slice."""

    patient_id: str
    phase: str
    source: str  # slice file relative to the cohort root (or file#slice for volumes)
    box: Box
    kind: str  # 'image' | 'dicom' | 'nifti'
    path: Path  # file to decode
    image_data: bytes | None = None  # labelme-embedded image when the file is absent
    slice_index: int = -1  # axial slice of a volume (NIfTI)
    spacing: tuple[float, float] | None = None
    flip: tuple[bool, bool] = (False, False)  # (rows, cols) flips of the crop to the radiological view


@dataclass
class Cohort:
    root: Path
    layout: str  # 'slices' | 'dicom' | 'detect' | 'nifti' | 'kits' (layouts.LAYOUTS)
    clinical: ClinicalTable
    rois: list[Roi]
    warnings: list[str] = field(default_factory=list)
    skipped_slices: int = 0  # slices without annotation (not ROIs)
    excluded_patients: dict[str, str] = field(default_factory=dict)  # id -> reason
    report: dict = field(default_factory=dict)  # what the reader adds to ingest_report.json

    def label(self, pid: str) -> int:
        return self.clinical.labels[pid]


def patient_dirs(root: Path) -> list[Path]:
    """Patient folders of a cohort folder (hidden and _-prefixed folders are not patients)."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def phase_dirs(pdir: Path, phases: tuple[str, ...], warnings: list[str]) -> dict[str, Path]:
    """Map canonical phase -> folder inside a patient folder (aliases accepted)."""
    found: dict[str, Path] = {}
    for sub in sorted(p for p in pdir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        phase = canonical_phase(sub.name)
        if phase is None:
            warnings.append(f"{sub}: not a phase folder name; ignored")
            continue
        if phase in found:
            raise CcrccError(f"{sub}: phase {phase!r} given twice in {pdir} ({found[phase].name} and {sub.name})")
        if phase in phases:
            found[phase] = sub
    return found


def reconcile(cohort: Cohort) -> None:
    """Patients in the CSV without images, and image folders without a CSV row, are reported and
    excluded (a warning each), so a partial export never silently mislabels anyone."""
    with_images = {r.patient_id for r in cohort.rois}
    for pid in sorted(with_images - set(cohort.clinical.rows)):
        cohort.excluded_patients[pid] = "images but no row in clinical.csv"
        cohort.warnings.append(f"patient {pid!r}: images but no row in clinical.csv; excluded")
    for pid in sorted(set(cohort.clinical.rows) - with_images):
        cohort.excluded_patients[pid] = "row in clinical.csv but no annotated images"
        cohort.warnings.append(f"patient {pid!r}: in clinical.csv but no annotated images; excluded")
    cohort.rois = [r for r in cohort.rois if r.patient_id in cohort.clinical.rows]
    if not cohort.rois:
        raise CcrccError(
            f"{cohort.root}: no annotated slices of patients in clinical.csv "
            f"(layout {cohort.layout}; see README for the expected folders)"
        )
