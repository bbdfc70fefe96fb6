"""The preprocessing cache: every crop of a cohort in one uint8 array + manifest.csv.

Layout of an ingested WORK folder::

    WORK/crops.npy            uint8 (N, size, size), row i = manifest index i
    WORK/manifest.csv         one row per crop (patient_id, phase, source, box, grade, label, index)
    WORK/preprocess.json      the PreprocessConfig used (reused by predict / external validation)
    WORK/clinical.csv         copy of the cohort's clinical table (for the clinical statistics)
    WORK/ingest_report.json   counts and every warning

Training reads the crops once into memory and never decodes an image again.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ccrcc_grade.core.config import PreprocessConfig, from_dict, to_dict
from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.fileio import atomic_write_csv, atomic_write_json, normal_mode
from ccrcc_grade.core.paths import WorkDir
from ccrcc_grade.core.phases import CLASSES, PHASES
from ccrcc_grade.core.progress import progress
from ccrcc_grade.ingest.acquisition import acquisition_rows, write_acquisition
from ccrcc_grade.ingest.cohort import Cohort, Roi
from ccrcc_grade.ingest.preprocess import make_crop

MANIFEST_COLUMNS = ["index", "patient_id", "phase", "source", "x_min", "y_min", "x_max", "y_max", "grade", "label"]


@dataclass
class CropCache:
    """An ingested cohort: crops (memory-mapped), manifest rows and the preprocessing used."""

    work: Path
    crops: np.ndarray
    manifest: list[dict]
    preprocess: PreprocessConfig

    @classmethod
    def load(cls, work: Path | str) -> CropCache:
        work = Path(work)
        wd = WorkDir(work)
        if not wd.is_ingested():
            raise CcrccError(f"{work}: not an ingested cohort (no manifest.csv); run `ccrcc-grade ingest` first")
        try:
            crops = np.load(wd.crops, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise CcrccError(f"{wd.crops}: unreadable crop cache ({exc})") from None
        try:
            with open(wd.manifest, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
            for r in rows:
                r["index"] = int(r["index"])
                r["label"] = int(r["label"])
        except (OSError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CcrccError(f"{wd.manifest}: damaged manifest ({exc.__class__.__name__}: {exc})") from None
        if rows and max(r["index"] for r in rows) >= len(crops):
            raise CcrccError(f"{work}: manifest.csv refers to crops beyond crops.npy ({len(crops)} rows)")
        try:
            pre = from_dict(PreprocessConfig, json.loads(wd.preprocess.read_text())).validate()
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
            raise CcrccError(
                f"{work / 'preprocess.json'}: missing or damaged ({exc.__class__.__name__}); re-ingest the cohort"
            ) from None
        return cls(work, crops, rows, pre)

    def select(self, phase: str, patients: set[str] | None = None) -> list[dict]:
        """Manifest rows of one phase (or all for 'combined'), optionally of some patients."""
        return [
            r
            for r in self.manifest
            if (phase == "combined" or r["phase"] == phase) and (patients is None or r["patient_id"] in patients)
        ]

    def patient_labels(self) -> dict[str, int]:
        return {r["patient_id"]: r["label"] for r in self.manifest}

    def phases(self) -> list[str]:
        present = {r["phase"] for r in self.manifest}
        return [p for p in PHASES if p in present]


def decode_roi(roi: Roi, warnings: list[str]) -> tuple[np.ndarray, bool]:
    """Decode the slice behind an ROI: (array, is_hu)."""
    if roi.kind == "image":
        from ccrcc_grade.io.images import read_gray

        return read_gray(roi.image_data if roi.image_data is not None else roi.path, roi.path), False
    if roi.kind == "dicom":
        from ccrcc_grade.io.dicom import read_hu

        return read_hu(roi.path, warnings)[0], True
    if roi.kind == "nifti":
        from ccrcc_grade.io.nifti import read_axial_slice

        return read_axial_slice(roi.path, roi.slice_index), True
    raise CcrccError(f"{roi.source}: unknown slice kind {roi.kind}")


def crop_rois(
    rois: list[Roi],
    cfg: PreprocessConfig,
    warnings: list[str],
    show_progress: bool = True,
    desc: str = "ingest",
    stats: list[dict | None] | None = None,
) -> np.ndarray:
    """Decode each slice once (several boxes on a slice share the decode) and crop every ROI.
    Boxes far smaller than a renal tumour are named in ``warnings`` (one line per patient).
    ``stats``: a list filled with each ROI's `plausibility.box_stats` (None for 8-bit slices),
    the training reference a model carries."""
    small_box_warnings(rois, warnings)
    if stats is not None:
        stats[:] = [None] * len(rois)
    out = np.empty((len(rois), cfg.size, cfg.size), dtype=np.uint8)
    by_slice: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(rois):
        by_slice[(str(r.path), r.slice_index, r.source)].append(i)
    for idxs in progress(by_slice.values(), total=len(by_slice), desc=desc, unit="slice", enable=show_progress):
        image, is_hu = decode_roi(rois[idxs[0]], warnings)
        spine = None
        if stats is not None and is_hu:
            from ccrcc_grade.ingest.anatomy import spine_centre

            spine = spine_centre(image, rois[idxs[0]].spacing or (1.0, 1.0))
        for i in idxs:
            r = rois[i]
            if stats is not None and is_hu:
                from ccrcc_grade.ingest.anatomy import box_stats

                spacing = r.spacing[1] if r.spacing else None
                stats[i] = box_stats(image, r.box, r.spacing, spine) | {"pixel_spacing": spacing}
            out[i] = make_crop(
                image, r.box, cfg, is_hu=is_hu, spacing=r.spacing, source=r.source, warnings=warnings, flip=r.flip
            )
            if not r.box.inside(image.shape[1], image.shape[0]):  # the manifest records the box cropped
                r.box = r.box.clip(image.shape[1], image.shape[0])
    return out


MIN_BOX_MM = 5.0  # renal tumours graded in the study and in KiTS measure >= 1 cm; 5 mm leaves room for a pole


def small_box_warnings(rois: list[Roi], warnings: list[str]) -> None:
    """One warning per patient whose boxes (of known pixel spacing) span less than MIN_BOX_MM in
    both directions: such a box holds a few pixels of the tumour's pole at best, more often a
    mis-click, and its crop is mostly interpolation."""
    small: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for r in rois:
        if r.spacing is None:
            continue
        w, h = r.box.width * r.spacing[1], r.box.height * r.spacing[0]
        if max(w, h) < MIN_BOX_MM:
            small[r.patient_id].append((w, h, r.source))
    for pid, boxes in small.items():
        w, h, source = min(boxes, key=lambda b: b[0] * b[1])
        warnings.append(
            f"{pid}: {len(boxes)} box(es) smaller than {MIN_BOX_MM:g} mm, far smaller than a renal tumour "
            f"(smallest {w:.1f} x {h:.1f} mm on {source}); check that they box the tumour"
        )


def summarize(manifest: list[dict]) -> dict:
    """Crops and patients per phase and class (the study's dataset table)."""
    table: dict = {}
    for phase in PHASES + ("combined",):
        rows = [r for r in manifest if phase == "combined" or r["phase"] == phase]
        if not rows:
            continue
        table[phase] = {
            cls: {
                "crops": sum(1 for r in rows if int(r["label"]) == k),
                "patients": len({r["patient_id"] for r in rows if int(r["label"]) == k}),
            }
            for k, cls in enumerate(CLASSES)
        }
    return table


def format_summary(table: dict) -> str:
    lines = [f"{'phase':<18}{'low crops':>10}{'high crops':>11}{'low pts':>9}{'high pts':>10}"]
    for phase, t in table.items():
        lines.append(
            f"{phase:<18}{t['low']['crops']:>10}{t['high']['crops']:>11}"
            f"{t['low']['patients']:>9}{t['high']['patients']:>10}"
        )
    return "\n".join(lines)


def cohort_fingerprint(root: Path) -> str:
    """A fingerprint of a cohort folder's content: every file's relative path and size, and the
    bytes of its tables (clinical.csv, boxes.csv). Two different cohorts - or one edited since -
    give different fingerprints; recorded by ingest, checked by `study` before it reuses WORK."""
    import hashlib

    h = hashlib.sha256()
    root = Path(root)
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(root)}\0{p.stat().st_size}\n".encode())
        if p.name in ("clinical.csv", "boxes.csv") or p.suffix == ".json" and p.parent == root:
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


WORK_FILES = WorkDir.CACHE_FILES


def check_output(work: Path, overwrite: bool, source: Path | None = None) -> None:
    """Refuse to write WORK where it could destroy anything ingest did not create (checked before
    any work starts, and again under the lock): never the input cohort or a folder holding it,
    never a file, and with --overwrite only a folder that is recognisably a crop cache holding
    nothing but the cache's own files (trained runs/ and splits.json would be orphaned: refused)."""
    work = Path(work)
    if work.exists() and not work.is_dir():
        raise CcrccError(f"{work}: --out is a file, not a folder")
    if source is not None:
        src, dst = Path(source).resolve(), work.resolve()
        if src == dst or src.is_relative_to(dst):
            raise CcrccError(f"{work}: --out is (or contains) the input cohort {source}; give a new folder")
        if dst.is_relative_to(src):
            raise CcrccError(f"{work}: --out lies inside the input cohort {source}; give a folder outside it")
    if not work.exists() or not any(work.iterdir()):
        return
    if not overwrite:
        raise CcrccError(f"{work}: output folder exists and is not empty (use --overwrite to replace it)")
    names = {p.name for p in work.iterdir()}
    if not {WorkDir.MANIFEST, WorkDir.PREPROCESS} <= names:
        raise CcrccError(
            f"{work}: --overwrite only replaces an ingested WORK folder (manifest.csv, preprocess.json); "
            "this folder is not one, and nothing in it was touched"
        )
    other = sorted(names - set(WORK_FILES))
    if other:
        raise CcrccError(
            f"{work}: holds {', '.join(other)} besides the crop cache (trained runs or splits made from "
            "it); re-ingesting would orphan them, so nothing was replaced: ingest into a new folder"
        )


@contextlib.contextmanager
def work_lock(work: Path) -> Iterator[None]:
    """An exclusive lock on WORK for one ingest at a time (a second one is refused, not queued),
    and the clean-up of temporary folders that a killed ingest left behind."""
    import fcntl

    work = Path(work)
    try:
        work.parent.mkdir(parents=True, exist_ok=True)
        fh = open(work.parent / f".{work.name}.lock", "w")
    except OSError as exc:
        raise CcrccError(f"{work}: cannot write here ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise CcrccError(f"{work}: another ingest is writing this folder right now") from None
        for stale in work.parent.glob(f".{work.name}.ingest-*"):  # nobody else can be writing: stale
            shutil.rmtree(stale, ignore_errors=True)
        yield
    finally:
        fh.close()


def write_cache(
    cohort: Cohort,
    crops: np.ndarray,
    cfg: PreprocessConfig,
    work: Path,
    overwrite: bool,
    extra_report: dict | None = None,
) -> dict:
    """Write the cache into a temporary sibling folder and rename it to ``work`` at the end,
    so an interrupted or failed ingest leaves ``work`` untouched."""
    work = Path(work)
    with work_lock(work):
        check_output(work, overwrite, cohort.root)
        try:
            return _write_cache_locked(cohort, crops, cfg, work, extra_report)
        except OSError as exc:  # a full or read-only disk: the temporary folder is gone, WORK untouched
            raise CcrccError(f"{work}: cannot write the cache ({exc.strerror or exc}); nothing was replaced") from None


def _write_cache_locked(
    cohort: Cohort, crops: np.ndarray, cfg: PreprocessConfig, work: Path, extra_report: dict | None
) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f".{work.name}.ingest-", dir=work.parent))
    normal_mode(tmp, directory=True)  # WORK gets an ordinary folder's mode, not mkdtemp's 0700
    try:
        manifest = []
        for i, r in enumerate(cohort.rois):
            manifest.append(
                {
                    "index": i,
                    "patient_id": r.patient_id,
                    "phase": r.phase,
                    "source": r.source,
                    "x_min": round(r.box.x_min, 2),
                    "y_min": round(r.box.y_min, 2),
                    "x_max": round(r.box.x_max, 2),
                    "y_max": round(r.box.y_max, 2),
                    "grade": cohort.clinical.grades[r.patient_id],
                    "label": cohort.clinical.labels[r.patient_id],
                }
            )
        np.save(WorkDir(tmp).crops, crops)
        atomic_write_csv(WorkDir(tmp).manifest, MANIFEST_COLUMNS, manifest)
        atomic_write_json(WorkDir(tmp).preprocess, to_dict(cfg))
        included = {r.patient_id for r in cohort.rois}
        clin = cohort.clinical
        atomic_write_csv(WorkDir(tmp).clinical, clin.columns, (clin.rows[p] for p in clin.rows if p in included))
        acquisition = acquisition_rows(cohort)
        write_acquisition(acquisition, WorkDir(tmp).acquisition)
        report = {
            "cohort": str(cohort.root.resolve()),
            "cohort_fingerprint": cohort_fingerprint(cohort.root),
            "layout": cohort.layout,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "preprocess": to_dict(cfg),
            "n_crops": len(manifest),
            "n_patients": len(included),
            "n_slices_without_annotation": cohort.skipped_slices,
            "excluded_patients": cohort.excluded_patients,
            "summary": summarize(manifest),
            "centers": sorted({r["center"] for r in acquisition if r["center"]}),
            "manufacturers": sorted({r["manufacturer"] for r in acquisition if r["manufacturer"]}),
            "warnings": cohort.warnings,
            **(extra_report or {}),
        }
        atomic_write_json(WorkDir(tmp).ingest_report, report)
        if work.exists():
            old = work.with_name(f".{work.name}.old-{os.getpid()}")
            os.replace(work, old)
            os.replace(tmp, work)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, work)
        return report
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
