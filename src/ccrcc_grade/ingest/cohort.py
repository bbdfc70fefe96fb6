"""A cohort folder on disk -> validated records of every tumour box to crop.

Layouts (see README):
  A  COHORT/<patient>/<phase>/*.png|bmp|jpg + labelme JSON beside each annotated slice
  B  COHORT/<patient>/<phase>/<DICOM series> + COHORT/boxes.csv
  C  COHORT/<patient>/<phase>.nii.gz + <phase>_mask.nii.gz  (tumour mask instead of boxes)
Everything is validated here, before any crop is written; pixel data are decoded in ingest.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ccrcc_grade.io.clinical import ClinicalTable, read_clinical
from ccrcc_grade.core.errors import CcrccError, check_number
from ccrcc_grade.io.boxes import Box
from ccrcc_grade.io.images import IMAGE_SUFFIXES
from ccrcc_grade.io.labelme import read_labelme
from ccrcc_grade.core.phases import PHASES, canonical_phase


@dataclass
class Roi:
    """One tumour box on one slice."""

    patient_id: str
    phase: str
    source: str               # slice file relative to the cohort root (or file#slice for volumes)
    box: Box
    kind: str                 # 'image' | 'dicom' | 'nifti'
    path: Path                # file to decode
    image_data: bytes | None = None     # labelme-embedded image when the file is absent
    slice_index: int = -1     # axial slice of a volume (NIfTI)
    spacing: tuple[float, float] | None = None
    flip: tuple[bool, bool] = (False, False)   # (rows, cols) flips of the crop to the radiological view


@dataclass
class Cohort:
    root: Path
    layout: str               # 'slices' | 'dicom' | 'nifti' | 'kits'
    clinical: ClinicalTable
    rois: list[Roi]
    warnings: list[str] = field(default_factory=list)
    skipped_slices: int = 0   # slices without annotation (not ROIs)
    excluded_patients: dict[str, str] = field(default_factory=dict)   # id -> reason

    def label(self, pid: str) -> int:
        return self.clinical.labels[pid]


def detect_layout(root: Path) -> str:
    """'dicom' when boxes.csv exists, 'nifti' when patient folders hold .nii(.gz), else 'slices'."""
    if (root / "boxes.csv").is_file():
        return "dicom"
    for pdir in _patient_dirs(root):
        if any(p.name.endswith((".nii", ".nii.gz")) for p in pdir.iterdir()):
            return "nifti"
    return "slices"


def load_cohort(root: Path | str, layout: str = "auto", phases: tuple[str, ...] = PHASES,
                mask_margin_mm: float = 1.5) -> Cohort:
    """Read and validate a cohort folder; raise :class:`CcrccError` on the first bad input."""
    root = Path(root)
    if not root.is_dir():
        raise CcrccError(f"{root}: cohort folder not found")
    clinical = read_clinical(root / "clinical.csv")
    if layout == "auto":
        layout = detect_layout(root)
    cohort = Cohort(root, layout, clinical, [])
    if layout == "slices":
        _load_slices(cohort, phases)
    elif layout == "dicom":
        _load_dicom(cohort, phases)
    elif layout == "nifti":
        from ccrcc_grade.io.nifti import load_nifti_layout

        load_nifti_layout(cohort, phases, mask_margin_mm)
    else:
        raise CcrccError(f"unknown layout {layout!r}")
    _reconcile(cohort)
    return cohort


def _patient_dirs(root: Path) -> list[Path]:
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


def _load_slices(cohort: Cohort, phases: tuple[str, ...]) -> None:
    root = cohort.root.resolve()
    for pdir in _patient_dirs(cohort.root):
        for phase, fdir in phase_dirs(pdir, phases, cohort.warnings).items():
            rois, skipped = slice_folder_rois(fdir, pdir.name, phase, root, cohort.warnings)
            cohort.rois += rois
            cohort.skipped_slices += skipped


def slice_folder_rois(fdir: Path, pid: str, phase: str, root: Path, warnings: list[str]) -> tuple[list[Roi], int]:
    """Layout A, one phase folder: a ROI per labelme rectangle; returns (rois, unannotated slices)."""
    root = Path(root).resolve()
    images = {p.resolve(): p for p in fdir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    annotated: set[Path] = set()
    rois: list[Roi] = []
    for jpath in sorted(fdir.glob("*.json")):   # a JSON may only name an image of its own patient
        lm = read_labelme(jpath, fdir.parent, f"the folder of patient {pid} ({fdir.parent})")
        if lm.ignored:
            kinds = ", ".join(f"{k} x{n}" for k, n in sorted(Counter(lm.ignored).items()))
            warnings.append(f"{jpath}: ignored non-rectangle shapes ({kinds})")
        if not lm.boxes:
            warnings.append(f"{jpath}: no rectangle; slice skipped")
            continue
        path = lm.image_path
        data = None
        if path is None or not path.is_file():
            if lm.image_data is None:
                raise CcrccError(f"{jpath}: image {lm.image_path} not found and no imageData embedded")
            data = lm.image_data
            path = jpath   # the pixels come from the JSON: errors and the manifest name it
        annotated.add(path)
        source = str(path.relative_to(root)) if path.is_relative_to(root) else str(jpath.relative_to(root))
        for _, box in lm.boxes:
            rois.append(Roi(pid, phase, source, box, "image", path, data))
    return rois, sum(1 for p in images if p not in annotated)


def read_boxes_csv(path: Path, root: Path, require_phase: bool = True) -> list[dict]:
    """boxes.csv rows: patient_id, phase, file, x_min, y_min, x_max, y_max (pixel col/row);
    ``file`` is relative to ``root`` and must stay inside it. Without ``require_phase`` (phase
    detection) the phase column may be empty or absent."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CcrccError(f"{path}: cannot read ({exc})") from None
    reader = csv.DictReader(text.splitlines())
    need = ["patient_id", "phase", "file", "x_min", "y_min", "x_max", "y_max"]
    missing = [c for c in need if c not in (reader.fieldnames or []) and (require_phase or c != "phase")]
    if missing:
        raise CcrccError(f"{path}: missing column(s) {', '.join(missing)}")
    rows = []
    for lineno, row in enumerate(reader, start=2):
        where = f"{path}:{lineno}"
        phase = canonical_phase(row.get("phase") or "")
        if phase is None and (require_phase or (row.get("phase") or "").strip()):
            raise CcrccError(f"{where}: unknown phase {row.get('phase')!r}")
        box = Box.from_corners(*(check_number(row[c], f"{where}: {c}", -1e5, 1e5) for c in need[3:]))
        if box.width < 1 or box.height < 1:
            raise CcrccError(f"{where}: box has zero area ({box.width:g} x {box.height:g} px)")
        f = (Path(root) / row["file"]).resolve()
        if not f.is_relative_to(Path(root).resolve()):
            raise CcrccError(f"{where}: file {row['file']!r} points outside the cohort folder")
        rows.append({"patient_id": row["patient_id"].strip(), "phase": phase, "file": f, "box": box,
                     "where": where})
    return rows


def dicom_folder_rois(folder: Path, pid: str, phase: str, boxes: list[dict], root: Path,
                      by_name: bool = False) -> tuple[list[Roi], int]:
    """Layout B, one series folder + its boxes rows -> ROIs in slice order; returns
    (rois, slices without a box). ``by_name`` also matches box files by file name alone."""
    from ccrcc_grade.io.dicom import scan_series

    root = Path(root).resolve()
    series = {s.path.resolve(): s for s in scan_series(folder)}
    names = {p.name: p for p in series}
    order = {p: i for i, p in enumerate(series)}
    rois = []
    used = set()
    for r in boxes:
        f = r["file"]
        if f not in series and by_name and f.name in names:
            f = names[f.name]
        if f not in series:
            raise CcrccError(f"{r['where']}: {r['file']} is not a DICOM file of {folder}")
        r["_resolved"] = f
        used.add(f)
    for r in sorted(boxes, key=lambda r: (order[r["_resolved"]], r["box"].as_tuple())):
        f = r["_resolved"]
        source = str(f.relative_to(root)) if f.is_relative_to(root) else f.name
        rois.append(Roi(pid, phase, source, r["box"], "dicom", f, spacing=series[f].pixel_spacing,
                        flip=series[f].flip))
    return rois, len(series) - len(used)


def _load_dicom(cohort: Cohort, phases: tuple[str, ...]) -> None:
    rows = read_boxes_csv(cohort.root / "boxes.csv", cohort.root)
    by_folder: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        if r["phase"] in phases:
            by_folder[(r["patient_id"], r["phase"])].append(r)
    patient_dirs = {p.name: p for p in _patient_dirs(cohort.root)}
    for (pid, phase), boxes in sorted(by_folder.items(), key=lambda kv: (kv[0][0], PHASES.index(kv[0][1]))):
        if pid not in patient_dirs:
            raise CcrccError(f"{boxes[0]['where']}: patient folder {pid!r} not found in {cohort.root}")
        folders = phase_dirs(patient_dirs[pid], phases, cohort.warnings)
        if phase not in folders:
            raise CcrccError(f"{boxes[0]['where']}: no {phase} folder for patient {pid!r}")
        rois, skipped = dicom_folder_rois(folders[phase], pid, phase, boxes, cohort.root)
        cohort.rois += rois
        cohort.skipped_slices += skipped


def _reconcile(cohort: Cohort) -> None:
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
        raise CcrccError(f"{cohort.root}: no annotated slices of patients in clinical.csv "
                         f"(layout {cohort.layout}; see README for the expected folders)")
