"""One reader per cohort folder layout, all returning the same validated :class:`Cohort`.

    slices   COHORT/<patient>/<phase>/*.png|bmp|jpg + labelme JSON beside each annotated slice
    dicom    COHORT/<patient>/<phase>/<DICOM series> + COHORT/boxes.csv
    detect   COHORT/<patient>/<any folders of DICOM> + boxes.csv whose phase column may be empty:
             series assigned to phases from their tags (``phase_detect``)
    nifti    COHORT/<patient>/<phase>.nii.gz + <phase>_mask.nii.gz (tumour mask instead of boxes)
    kits     KITS/case_XXXXX/imaging.nii.gz + segmentation.nii.gz + kits.json / kits23.json

``detect_layout`` is the one rule that tells them apart (and recognises an already ingested WORK
folder); ``read_cohort`` validates a folder with the reader of its layout. Everything is
validated here, before any crop is written; ingest (``pipeline``) decodes and crops. The
per-folder helpers (``slice_folder_rois``, ``dicom_folder_rois``, ``volume_rois``) also serve
`predict`, which reads one patient's folder the same way.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ccrcc_grade.core.config import PreprocessConfig
from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.paths import WorkDir
from ccrcc_grade.core.phases import KITS_PHASE, PHASES, canonical_phase, check_phase
from ccrcc_grade.ingest.cohort import Cohort, Roi, patient_dirs, phase_dirs, reconcile
from ccrcc_grade.ingest.phase_detect import detect_phases, scan_patient
from ccrcc_grade.io import kits
from ccrcc_grade.io.boxes import read_boxes_csv
from ccrcc_grade.io.clinical import read_clinical
from ccrcc_grade.io.dicom import ALLOW_DERIVED_NOTE, check_one_patient
from ccrcc_grade.io.images import IMAGE_SUFFIXES
from ccrcc_grade.io.labelme import read_labelme
from ccrcc_grade.io.nifti import axial, load_ras, mask_boxes

LAYOUTS = ("slices", "dicom", "detect", "nifti", "kits")


@dataclass(frozen=True)
class CohortSource:
    """Where a cohort is and how to read it. ``layout`` 'auto' asks ``detect_layout``;
    ``clinical`` and ``phase`` only concern KiTS (its clinical JSON and the phase of its scans)."""

    root: Path
    layout: str = "auto"
    phases: tuple[str, ...] = PHASES
    clinical: Path | None = None
    phase: str = KITS_PHASE
    allow_derived: bool = False  # DICOM: grade derived/reformatted images too (the report says so)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if self.layout not in ("auto", *LAYOUTS):
            raise CcrccError(f"unknown layout {self.layout!r} (one of auto, {', '.join(LAYOUTS)})")

    @classmethod
    def of(cls, source: CohortSource | Path | str, layout: str = "auto") -> CohortSource:
        return source if isinstance(source, CohortSource) else cls(Path(source), layout)


def is_kits_folder(root: Path) -> bool:
    return any(root.glob("kits*.json")) or any(root.glob("case_*/segmentation.nii.gz"))


def detect_layout(root: Path | str) -> str:
    """The layout of a folder: 'work' (already ingested), 'kits' (a KiTS data folder or its
    clinical JSON beside case folders), 'dicom' (boxes.csv), 'nifti' (patient folders holding
    .nii/.nii.gz), else 'slices'. The one rule used by ingest, study, evaluate and the CLI."""
    root = Path(root)
    if not root.is_dir():
        raise CcrccError(f"{root}: cohort folder not found")
    if WorkDir(root).is_ingested():
        return "work"
    if is_kits_folder(root):
        return "kits"
    if (root / "boxes.csv").is_file():
        return "dicom"
    for pdir in patient_dirs(root):
        if any(p.name.endswith((".nii", ".nii.gz")) for p in pdir.iterdir()):
            return "nifti"
    return "slices"


def read_cohort(source: CohortSource | Path | str, cfg: PreprocessConfig | None = None) -> Cohort:
    """Read and validate a cohort folder with the reader of its layout; raise
    :class:`CcrccError` on the first bad input."""
    source = CohortSource.of(source)
    cfg = cfg or PreprocessConfig()
    layout = detect_layout(source.root) if source.layout == "auto" else source.layout
    if not source.root.is_dir():
        raise CcrccError(f"{source.root}: cohort folder not found")
    if layout == "work":
        raise CcrccError(f"{source.root}: is an ingested WORK folder; give the raw cohort folder")
    return READERS[layout].read(source, cfg)


class LayoutReader:
    """A cohort folder layout: ``read`` returns the validated :class:`Cohort`."""

    name: ClassVar[str] = ""

    def read(self, source: CohortSource, cfg: PreprocessConfig) -> Cohort:
        raise NotImplementedError


class SlicesReader(LayoutReader):
    """Exported slices with a labelme JSON beside each annotated one."""

    name = "slices"

    def read(self, source: CohortSource, cfg: PreprocessConfig) -> Cohort:
        cohort = Cohort(source.root, self.name, read_clinical(source.root / "clinical.csv"), [])
        root = cohort.root.resolve()
        for pdir in patient_dirs(cohort.root):
            for phase, fdir in phase_dirs(pdir, source.phases, cohort.warnings).items():
                rois, skipped = slice_folder_rois(fdir, pdir.name, phase, root, cohort.warnings)
                cohort.rois += rois
                cohort.skipped_slices += skipped
        reconcile(cohort)
        return cohort


class DicomBoxesReader(LayoutReader):
    """DICOM series in phase folders, boxes in COHORT/boxes.csv."""

    name = "dicom"

    def read(self, source: CohortSource, cfg: PreprocessConfig) -> Cohort:
        cohort = Cohort(source.root, self.name, read_clinical(source.root / "clinical.csv"), [])
        rows = read_boxes_csv(cohort.root / "boxes.csv", cohort.root)
        by_folder: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for r in rows:
            if r["phase"] in source.phases:
                by_folder[(r["patient_id"], r["phase"])].append(r)
        pdirs = {p.name: p for p in patient_dirs(cohort.root)}
        seen: dict[str, list] = defaultdict(list)
        for (pid, phase), boxes in sorted(by_folder.items(), key=lambda kv: (kv[0][0], PHASES.index(kv[0][1]))):
            if pid not in pdirs:
                raise CcrccError(f"{boxes[0]['where']}: patient folder {pid!r} not found in {cohort.root}")
            folders = phase_dirs(pdirs[pid], source.phases, cohort.warnings)
            if phase not in folders:
                raise CcrccError(f"{boxes[0]['where']}: no {phase} folder for patient {pid!r}")
            rois, skipped = dicom_folder_rois(
                folders[phase], pid, phase, boxes, cohort.root, allow_derived=source.allow_derived, seen=seen[pid]
            )
            cohort.rois += rois
            cohort.skipped_slices += skipped
        for pid, items in seen.items():
            check_one_patient(items, f"the folder of patient {pid} ({pdirs[pid]})")
        derived_note(cohort, source)
        reconcile(cohort)
        return cohort


class DetectedPhasesReader(LayoutReader):
    """DICOM whose series are not sorted into phase folders: phases detected from the tags; the
    assignment goes to the ingest report for the user to confirm."""

    name = "detect"

    def read(self, source: CohortSource, cfg: PreprocessConfig) -> Cohort:
        root = source.root
        clinical = read_clinical(root / "clinical.csv")
        if not (root / "boxes.csv").is_file():
            raise CcrccError(f"{root}: --detect-phases needs boxes.csv (its phase column may be empty)")
        boxes = read_boxes_csv(root / "boxes.csv", root, require_phase=False)
        cohort = Cohort(root, "dicom", clinical, [])
        assignment = []
        file_phase: dict[Path, tuple[str, dict]] = {}
        pdirs = {p.name: p.resolve() for p in patient_dirs(root)}
        for pdir in patient_dirs(root):
            groups = scan_patient(pdir, source.allow_derived)
            for s in detect_phases(list(groups.values())):
                assignment.append(
                    {
                        "patient_id": pdir.name,
                        "series_uid": s["uid"],
                        "description": s["description"],
                        "contrast": s["contrast"],
                        "acquisition_s": s["time"],
                        "n_files": len(s["files"]),
                        "phase": s["phase"],
                        "rule": s["rule"],
                    }
                )
                if s["phase"] is None:
                    cohort.warnings.append(
                        f"{pdir.name}: series {s['uid']} ({s['description'] or 'no description'}): "
                        f"{s['rule']}; left out"
                    )
                for f, info in s["files"].items():
                    file_phase[f] = (s["phase"], info)
        for r in boxes:
            if r["file"] not in file_phase:
                raise CcrccError(f"{r['where']}: {r['file']} is not a DICOM file of the cohort")
            own = pdirs.get(r["patient_id"])
            if own is None or not r["file"].is_relative_to(own):
                raise CcrccError(
                    f"{r['where']}: {r['file']} lies outside the folder of patient {r['patient_id']!r}"
                    + ("" if own else " (no such patient folder)")
                    + ": a box is graded under its row's patient, so it must be that patient's image"
                )
            phase, (pos, spacing, flip) = file_phase[r["file"]]
            if phase is None or phase not in source.phases:
                continue
            cohort.rois.append(
                Roi(
                    r["patient_id"],
                    phase,
                    str(r["file"].relative_to(root.resolve())),
                    r["box"],
                    "dicom",
                    r["file"],
                    spacing=spacing,
                    flip=flip,
                )
            )
        cohort.rois.sort(key=lambda r: (r.patient_id, PHASES.index(r.phase), r.source))
        cohort.skipped_slices = len(file_phase) - len({r.path for r in cohort.rois})
        derived_note(cohort, source)
        reconcile(cohort)
        cohort.report["phase_assignment"] = assignment
        return cohort


class NiftiReader(LayoutReader):
    """COHORT/<patient>/<phase>.nii.gz with <phase>_mask.nii.gz beside it."""

    name = "nifti"

    def read(self, source: CohortSource, cfg: PreprocessConfig) -> Cohort:
        cohort = Cohort(source.root, self.name, read_clinical(source.root / "clinical.csv"), [])
        for pdir in patient_dirs(cohort.root):
            vols = sorted(p for p in pdir.iterdir() if p.name.endswith((".nii", ".nii.gz")) and "_mask" not in p.name)
            for vol in vols:
                stem = vol.name[:-7] if vol.name.endswith(".nii.gz") else vol.name[:-4]
                phase = canonical_phase(stem)
                if phase is None:
                    cohort.warnings.append(f"{vol}: file name is not a phase; ignored")
                    continue
                if phase not in source.phases:
                    continue
                mask = next(
                    (pdir / f"{stem}_mask{e}" for e in (".nii.gz", ".nii") if (pdir / f"{stem}_mask{e}").is_file()),
                    None,
                )
                if mask is None:
                    raise CcrccError(f"{vol}: no tumour mask {stem}_mask.nii.gz beside it")
                rois, skipped = volume_rois(vol, mask, pdir.name, phase, cohort.root, cfg.mask_margin_mm)
                if not rois:
                    cohort.warnings.append(f"{mask}: empty tumour mask; no crops")
                cohort.rois += rois
                cohort.skipped_slices += skipped
        reconcile(cohort)
        return cohort


class KitsReader(LayoutReader):
    """The KiTS19 / KiTS23 challenge data: one contrast phase per case, tumour label of the
    segmentation; only clear cell RCC with an ISUP grade, every exclusion reported."""

    name = "kits"

    def read(self, source: CohortSource, cfg: PreprocessConfig) -> Cohort:
        kits_dir = source.root
        phase = check_phase(source.phase)
        json_path = (
            Path(source.clinical)
            if source.clinical
            else next(
                (
                    p
                    for p in (kits_dir / "kits23.json", kits_dir / "kits.json", kits_dir.parent / "kits23.json")
                    if p.is_file()
                ),
                None,
            )
        )
        if json_path is None:
            raise CcrccError(f"{kits_dir}: no kits23.json / kits.json; pass --clinical PATH")
        kept, excluded = kits.select_cases(kits.read_kits_clinical(json_path))
        present = []
        for c in kept:
            d = kits_dir / c["case_id"]
            if (d / "imaging.nii.gz").is_file() and (d / "segmentation.nii.gz").is_file():
                present.append(c)
            else:
                excluded[c["case_id"]] = "imaging.nii.gz or segmentation.nii.gz not downloaded"
        if not present:
            raise CcrccError(
                f"{kits_dir}: none of the {len(kept)} graded clear cell cases has imaging.nii.gz and "
                "segmentation.nii.gz (download them with the KiTS repository's script)"
            )
        cohort = Cohort(kits_dir, self.name, kits.kits_clinical_table(present, json_path), [])
        for c in present:
            d = kits_dir / c["case_id"]
            rois, skipped = volume_rois(
                d / "imaging.nii.gz",
                d / "segmentation.nii.gz",
                c["case_id"],
                phase,
                kits_dir,
                cfg.mask_margin_mm,
                labels=(kits.TUMOUR_LABEL,),
            )
            if not rois:
                cohort.warnings.append(
                    f"{c['case_id']}: no tumour voxels (label {kits.TUMOUR_LABEL}) in the segmentation"
                )
            cohort.rois += rois
            cohort.skipped_slices += skipped
        cohort.excluded_patients = excluded
        reasons = Counter(r.split(" ")[0] if r.startswith("subtype") else r for r in excluded.values())
        cohort.warnings.append("excluded cases: " + ", ".join(f"{n} {r}" for r, n in reasons.most_common()))
        cohort.report.update({"kits_clinical": str(json_path), "kits_phase": phase})
        return cohort


READERS: dict[str, LayoutReader] = {
    r.name: r for r in (SlicesReader(), DicomBoxesReader(), DetectedPhasesReader(), NiftiReader(), KitsReader())
}


def slice_folder_rois(fdir: Path, pid: str, phase: str, root: Path, warnings: list[str]) -> tuple[list[Roi], int]:
    """Slices layout, one phase folder: a ROI per labelme rectangle; returns (rois, unannotated slices)."""
    root = Path(root).resolve()
    images = {p.resolve(): p for p in fdir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    annotated: set[Path] = set()
    rois: list[Roi] = []
    for jpath in sorted(fdir.glob("*.json")):  # a JSON may only name an image of its own patient
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
            path = jpath  # the pixels come from the JSON: errors and the manifest name it
        annotated.add(path)
        source = str(path.relative_to(root)) if path.is_relative_to(root) else str(jpath.relative_to(root))
        for _, box in lm.boxes:
            rois.append(Roi(pid, phase, source, box, "image", path, data))
    return rois, sum(1 for p in images if p not in annotated)


def dicom_folder_rois(
    folder: Path,
    pid: str,
    phase: str,
    boxes: list[dict],
    root: Path,
    match_sop: bool = False,
    allow_derived: bool = False,
    seen: list | None = None,
) -> tuple[list[Roi], int]:
    """DICOM layout, one series folder + its boxes rows -> ROIs in slice order; returns
    (rois, slices without a box). ``match_sop`` (predict): a row's file is also looked up relative
    to the folder graded and to the cohort holding it, and a row naming an existing file elsewhere
    (the cohort's copy of the folder) matches the image of this folder with the same SOPInstanceUID - never a file name
    alone, which recurs in every patient's series. ``seen`` collects (file, header) of the
    series for the patient-level checks."""
    from ccrcc_grade.io.dicom import read_header, scan_series

    root = Path(root).resolve()
    scanned = scan_series(folder, allow_derived)
    if seen is not None:
        seen += [(s.path, s.header) for s in scanned]
    series = {s.path.resolve(): s for s in scanned}
    by_sop = {s.sop_uid: p for p, s in series.items()}
    order = {p: i for i, p in enumerate(series)}
    rois = []
    used = set()
    for r in boxes:
        f = r["file"]
        cohort_path = (Path(folder).parent.parent / r.get("file_text", "")).resolve()
        if f not in series and match_sop and (Path(folder) / r.get("file_text", "")).resolve() in series:
            f = (Path(folder) / r["file_text"]).resolve()
        elif f not in series and match_sop and cohort_path in series:
            f = cohort_path  # relative to the cohort holding the folder (COHORT/<patient>/<phase>), as its boxes.csv
        elif f not in series and match_sop and f.is_file():
            sop = str(getattr(read_header(f), "SOPInstanceUID", "") or "")
            if sop not in by_sop:
                raise CcrccError(
                    f"{r['where']}: {r['file']} (SOPInstanceUID {sop or 'none'}) is not an image of {folder}: "
                    "the row boxes another series than the one graded"
                )
            f = by_sop[sop]
        if f not in series:
            raise CcrccError(f"{r['where']}: {r['file']} is not a DICOM file of {folder}")
        r["_resolved"] = f
        used.add(f)
    for r in sorted(boxes, key=lambda r: (order[r["_resolved"]], r["box"].as_tuple())):
        f = r["_resolved"]
        source = str(f.relative_to(root)) if f.is_relative_to(root) else f.name
        rois.append(Roi(pid, phase, source, r["box"], "dicom", f, spacing=series[f].pixel_spacing, flip=series[f].flip))
    return rois, len(series) - len(used)


def derived_note(cohort: Cohort, source: CohortSource) -> None:
    """With --allow-derived the ingest report says that derived images were allowed in."""
    if source.allow_derived:
        cohort.warnings.append(ALLOW_DERIVED_NOTE)


def volume_rois(
    volume: Path, mask: Path, pid: str, phase: str, root: Path, margin_mm: float, labels: tuple[int, ...] | None = None
) -> tuple[list[Roi], int]:
    """ROIs of every axial slice holding tumour in ``mask`` (non-zero, or the given label values).
    Returns (rois, slices without tumour)."""
    vol, vz = load_ras(volume)
    seg, sz = load_ras(mask)
    if vol.shape != seg.shape:
        raise CcrccError(f"{mask}: mask shape {seg.shape} differs from the volume {volume.name} {vol.shape}")
    if not np.allclose(vz, sz, rtol=1e-3):
        raise CcrccError(f"{mask}: voxel size {sz} differs from the volume's {vz}")
    tumour = np.isin(seg, labels) if labels else seg > 0
    spacing = (vz[1], vz[0])  # (row = y, col = x) mm
    margin = (margin_mm / vz[0], margin_mm / vz[1])
    rois = []
    zs = np.nonzero(tumour.any(axis=(0, 1)))[0]
    root = Path(root).resolve()
    vp = Path(volume).resolve()
    rel = str(vp.relative_to(root)) if vp.is_relative_to(root) else vp.name
    for z in zs:
        for box in mask_boxes(axial(tumour, int(z)), margin):
            rois.append(Roi(pid, phase, f"{rel}#z{int(z):04d}", box, "nifti", vp, slice_index=int(z), spacing=spacing))
    return rois, int(vol.shape[2] - len(zs))
