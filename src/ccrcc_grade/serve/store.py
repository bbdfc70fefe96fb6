"""Studies of the workstation on disk: uploaded (or PACS-retrieved) DICOM, the series -> phase
assignment, the boxes, predictions and SRs.

Layout of ``DATA/<study_id>/`` (ids are generated; uploaded file names are never used as paths):

    study.json                 series summary (uid, description, phase, reason, slices in order)
    series/<n>/<k>.dcm         the series' instances, k in slice order (the order of the viewer)
    boxes.json                 [{"sop_instance_uid", "x_min", "y_min", "x_max", "y_max"}]
    cohort/boxes.csv           the same boxes in ingest's cohort format (file relative to cohort/)
    predictions/<model>/...    the last prediction per model (JSON, Grad-CAM overlays)

Every write is atomic; a failed upload removes its half-written study folder, so nothing of it
is left behind; a server restart finds every study and box as it was.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import shutil
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ccrcc_grade.core.config import ServeOptions
from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.fileio import atomic_write_json, atomic_write_text
from ccrcc_grade.core.phases import PHASES
from ccrcc_grade.ingest.phase_detect import detect_phases, series_tags
from ccrcc_grade.io.boxes import Box
from ccrcc_grade.io.dicom import display_flips, read_hu, slice_position

STUDY_ID = re.compile(r"^[0-9a-f]{16}$")
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


class NotFound(CcrccError):
    """A study, series, slice or model that does not exist (HTTP 404)."""


class TooLarge(CcrccError):
    """An upload over the configured limits (HTTP 413)."""


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = ServeOptions.max_upload_mb * 2**20  # total size of one upload
    max_files: int = ServeOptions.max_files  # DICOM instances in one upload


def _datasets_from_upload(files: list[tuple[str, bytes]], limits: UploadLimits) -> list[pydicom.Dataset]:
    """Read every uploaded file (DICOM files or zips of them) as DICOM; anything else is a 400
    naming the file. Names are only used in messages."""
    total = sum(len(b) for _, b in files)
    if total > limits.max_bytes:
        raise TooLarge(f"upload of {total / 1e6:.0f} MB exceeds the limit of {limits.max_bytes / 1e6:.0f} MB")
    out: list[pydicom.Dataset] = []

    def add(name: str, data: bytes) -> None:
        if len(out) >= limits.max_files:
            raise TooLarge(f"upload holds more than {limits.max_files} files")
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except (InvalidDicomError, EOFError, ValueError, TypeError, AttributeError, OSError) as exc:
            raise CcrccError(f"{name}: not a DICOM file ({exc.__class__.__name__})") from None
        if "PixelData" not in ds:
            raise CcrccError(f"{name}: DICOM file without an image")
        if not _uid(ds, "SOPInstanceUID") and not _uid(
            getattr(ds, "file_meta", pydicom.Dataset()), "MediaStorageSOPInstanceUID"
        ):
            raise CcrccError(f"{name}: DICOM file without a SOPInstanceUID (in the dataset or its file meta)")
        out.append(ds)

    for name, data in files:
        if data[:4] == b"PK\x03\x04":
            try:
                with zipfile.ZipFile(io.BytesIO(data)) as zf:
                    members = [m for m in zf.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX")]
                    if sum(m.file_size for m in members) > limits.max_bytes:
                        raise TooLarge(f"{name}: unpacks to more than {limits.max_bytes / 1e6:.0f} MB")
                    for m in members:
                        add(f"{name}:{m.filename}", zf.read(m))
            except zipfile.BadZipFile:
                raise CcrccError(f"{name}: a damaged zip file") from None
        else:
            add(name, data)
    if not out:
        raise CcrccError("no DICOM files in the upload")
    return out


class StudyStore:
    """All studies under one data folder. Thread-safe: one lock per study for writes."""

    def __init__(self, root: Path, limits: UploadLimits | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.limits = limits or UploadLimits()
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def lock(self, study_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(study_id, threading.Lock())

    def folder(self, study_id: str) -> Path:
        if not STUDY_ID.match(study_id or "") or not (self.root / study_id / "study.json").is_file():
            raise NotFound(f"study {study_id!r} not found")
        return self.root / study_id

    # --- create ------------------------------------------------------------------------
    def add_upload(self, files: list[tuple[str, bytes]]) -> dict:
        return self.add_datasets(_datasets_from_upload(files, self.limits))

    def add_datasets(self, datasets: list[pydicom.Dataset]) -> dict:
        """A new study from DICOM datasets (one study; several series): written in a temporary
        folder and renamed into place, so a failure leaves nothing behind."""
        notes = complete_uids(datasets)
        studies = {str(ds.StudyInstanceUID) for ds in datasets}
        if len(studies) > 1:
            raise CcrccError(f"the upload mixes {len(studies)} studies; upload one patient's study at a time")
        modalities = {str(getattr(ds, "Modality", "")) for ds in datasets}
        if modalities - {"CT"}:
            raise CcrccError(f"only CT series can be graded; the upload holds modality {', '.join(sorted(modalities))}")
        by_series: dict[str, list[pydicom.Dataset]] = {}
        for ds in datasets:
            by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
        study_id = secrets.token_hex(8)
        tmp = self.root / f".{study_id}.upload"
        tmp.mkdir()
        try:
            series = []
            for n, (uid, group) in enumerate(sorted(by_series.items())):
                group.sort(key=lambda d: (slice_position(d), int(getattr(d, "InstanceNumber", 0) or 0)))
                sops = [str(d.SOPInstanceUID) for d in group]
                if len(set(sops)) != len(sops):
                    raise CcrccError(f"series {uid}: the same SOPInstanceUID twice")
                folder = tmp / "series" / str(n)
                folder.mkdir(parents=True)
                for k, d in enumerate(group):
                    d.save_as(folder / f"{k}.dcm", enforce_file_format=True)
                first = group[0]
                series.append(
                    {
                        "series_uid": uid,
                        "folder": str(n),
                        **series_tags(first),
                        "slices": len(group),
                        "sop_instance_uids": sops,
                        "positions": [slice_position(d) for d in group],
                        "rows": int(first.Rows),
                        "columns": int(first.Columns),
                        "pixel_spacing": [float(v) for v in getattr(first, "PixelSpacing", [1.0, 1.0])],
                        "flip": list(display_flips(first)),
                    }
                )
            for s in detect_phases(series):
                s["phase_reason"] = s.pop("rule")
            order = {p: i for i, p in enumerate(PHASES)}  # shown in phase order, unassigned last
            series.sort(key=lambda s: (order.get(s["phase"], len(PHASES)), s["description"], s["series_uid"]))
            first = datasets[0]
            summary = {
                "study_id": study_id,
                "study_uid": str(getattr(first, "StudyInstanceUID", "")),
                "patient_id": str(getattr(first, "PatientID", "") or study_id),
                "series": series,
                "notes": notes,
            }
            atomic_write_json(tmp / "study.json", summary)
            atomic_write_json(tmp / "boxes.json", [])
            tmp.rename(self.root / study_id)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.summary(study_id)

    # --- read --------------------------------------------------------------------------
    def raw(self, study_id: str) -> dict:
        return json.loads((self.folder(study_id) / "study.json").read_text())

    def summary(self, study_id: str) -> dict:
        """The public summary (no file layout): study id and its series with their phases."""
        s = self.raw(study_id)
        keys = ("series_uid", "description", "phase", "phase_reason", "slices", "rows", "columns", "pixel_spacing")
        return {
            "study_id": s["study_id"],
            "series": [{k: x.get(k) for k in keys} for x in s["series"]],
            "notes": s.get("notes", []),
        }

    def series(self, study_id: str, series_uid: str) -> dict:
        for s in self.raw(study_id)["series"]:
            if s["series_uid"] == series_uid:
                return s
        raise NotFound(f"series {series_uid!r} not in study {study_id}")

    def slice_path(self, study_id: str, series_uid: str, k: int) -> Path:
        s = self.series(study_id, series_uid)
        if not 0 <= k < s["slices"]:
            raise NotFound(f"slice {k} out of range (series has {s['slices']} slices)")
        return self.folder(study_id) / "series" / s["folder"] / f"{k}.dcm"

    def slice_hu(self, study_id: str, series_uid: str, k: int) -> np.ndarray:
        return read_hu(self.slice_path(study_id, series_uid, k))[0]

    def locate(self, study_id: str, sop_uid: str) -> tuple[dict, int]:
        """(series, slice index) of an instance of the study."""
        for s in self.raw(study_id)["series"]:
            if sop_uid in s["sop_instance_uids"]:
                return s, s["sop_instance_uids"].index(sop_uid)
        raise CcrccError(f"SOPInstanceUID {sop_uid!r} is not an image of study {study_id}")

    # --- change ------------------------------------------------------------------------
    def set_phases(self, study_id: str, assignment: dict[str, str | None]) -> dict:
        with self.lock(study_id):
            s = self.raw(study_id)
            uids = {x["series_uid"] for x in s["series"]}
            for uid, phase in assignment.items():
                if uid not in uids:
                    raise NotFound(f"series {uid!r} not in study {study_id}")
                if phase is not None and phase not in PHASES:
                    raise CcrccError(f"unknown phase {phase!r} (use one of {', '.join(PHASES)} or null)")
            for x in s["series"]:
                if x["series_uid"] in assignment:
                    x["phase"] = assignment[x["series_uid"]]
                    x["phase_reason"] = "set by the user"
            taken = [x["phase"] for x in s["series"] if x["phase"]]
            dup = sorted({p for p in taken if taken.count(p) > 1})
            if dup:
                raise CcrccError(f"two series assigned to {', '.join(dup)}; each phase takes one series")
            atomic_write_json(self.folder(study_id) / "study.json", s)
            self._write_cohort_boxes(study_id, s, self.boxes(study_id))
        return self.summary(study_id)

    def boxes(self, study_id: str) -> list[dict]:
        return json.loads((self.folder(study_id) / "boxes.json").read_text())

    def set_boxes(self, study_id: str, boxes: list[dict]) -> list[dict]:
        """Replace the study's boxes after checking each lies on an image of the study, inside it,
        with a positive area; saved atomically as JSON and as ingest's boxes.csv."""
        clean = []
        s = self.raw(study_id)
        for i, b in enumerate(boxes):
            series, _ = self.locate(study_id, str(b["sop_instance_uid"]))
            box = Box.from_corners(b["x_min"], b["y_min"], b["x_max"], b["y_max"])
            if box.width < 1 or box.height < 1:
                raise CcrccError(f"box {i + 1}: zero or sub-pixel area ({box.width:g} x {box.height:g} pixels)")
            if not box.inside(series["columns"], series["rows"]):
                raise CcrccError(
                    f"box {i + 1}: ({box.x_min:g}, {box.y_min:g})-({box.x_max:g}, {box.y_max:g}) lies "
                    f"outside the {series['columns']}x{series['rows']} image"
                )
            clean.append(
                {
                    "sop_instance_uid": str(b["sop_instance_uid"]),
                    **{k: round(float(v), 2) for k, v in zip(("x_min", "y_min", "x_max", "y_max"), box.as_tuple())},
                }
            )
        with self.lock(study_id):
            atomic_write_json(self.folder(study_id) / "boxes.json", clean)
            self._write_cohort_boxes(study_id, s, clean)
        return clean

    def _write_cohort_boxes(self, study_id: str, s: dict, boxes: list[dict]) -> None:
        """boxes.csv in the cohort format, for `export_cohort` (phase from the assignment)."""
        lines = ["patient_id,phase,file,x_min,y_min,x_max,y_max"]
        for b in boxes:
            series, k = self.locate(study_id, b["sop_instance_uid"])
            lines.append(
                f"{_csv_id(s['patient_id'])},{series['phase'] or ''},{_csv_id(s['patient_id'])}/"
                f"{series['phase'] or 'unassigned-' + series['folder']}/{k}.dcm,"
                f"{b['x_min']},{b['y_min']},{b['x_max']},{b['y_max']}"
            )
        atomic_write_text(self.folder(study_id) / "cohort" / "boxes.csv", "\n".join(lines) + "\n")

    def export_cohort(self, study_id: str) -> bytes:
        """A zip in the cohort layout B (COHORT/<patient>/<phase>/*.dcm + boxes.csv + a clinical.csv
        template whose grade the research team fills in), for research after grading."""
        s = self.raw(study_id)
        folder = self.folder(study_id)
        pid = _csv_id(s["patient_id"])
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for x in s["series"]:
                name = x["phase"] or f"unassigned-{x['folder']}"
                for k in range(x["slices"]):
                    zf.write(folder / "series" / x["folder"] / f"{k}.dcm", f"{pid}/{name}/{k}.dcm")
            csv_path = folder / "cohort" / "boxes.csv"
            zf.writestr(
                "boxes.csv",
                csv_path.read_text() if csv_path.is_file() else "patient_id,phase,file,x_min,y_min,x_max,y_max\n",
            )
            zf.writestr("clinical.csv", f"patient_id,who_isup_grade\n{pid},\n")
        return buf.getvalue()

    def prediction_dir(self, study_id: str, model_id: str) -> Path:
        return self.folder(study_id) / "predictions" / model_id


def _uid(ds: pydicom.Dataset, keyword: str) -> str:
    return str(getattr(ds, keyword, "") or "").strip()


def complete_uids(datasets: list[pydicom.Dataset]) -> list[str]:
    """Anonymised exports often blank the UIDs. The SOP Instance UID falls back to the file
    meta's; a missing Study/Series Instance UID is generated (deterministically from what the
    files share: study, series number and description) so the series can be told apart and the
    SR can reference them. Returns notes for the study summary."""
    from pydicom.uid import generate_uid

    notes = []
    for ds in datasets:  # the SOP class likewise (the SR names the class of every image it references)
        if not _uid(ds, "SOPClassUID"):
            ds.SOPClassUID = _uid(ds.file_meta, "MediaStorageSOPClassUID") or CT_IMAGE_STORAGE
    blank = [ds for ds in datasets if not _uid(ds, "SOPInstanceUID")]
    for ds in blank:
        ds.SOPInstanceUID = _uid(ds.file_meta, "MediaStorageSOPInstanceUID")
    if blank:
        notes.append(f"{len(blank)} file(s) without a SOPInstanceUID in the dataset: the file meta's is used")
    no_study = [ds for ds in datasets if not _uid(ds, "StudyInstanceUID")]
    if no_study:
        study = generate_uid(entropy_srcs=sorted(_uid(ds, "SOPInstanceUID") for ds in no_study))
        for ds in no_study:
            ds.StudyInstanceUID = study
        notes.append(f"{len(no_study)} file(s) without a StudyInstanceUID: one was generated for this upload")
    no_series = [ds for ds in datasets if not _uid(ds, "SeriesInstanceUID")]
    for ds in no_series:
        ds.SeriesInstanceUID = generate_uid(
            entropy_srcs=[
                _uid(ds, "StudyInstanceUID"),
                str(getattr(ds, "SeriesNumber", "")),
                str(getattr(ds, "SeriesDescription", "")),
            ]
        )
    if no_series:
        notes.append(
            f"{len(no_series)} file(s) without a SeriesInstanceUID: grouped into series by SeriesNumber "
            "and SeriesDescription, with generated UIDs"
        )
    return notes


def _csv_id(text: str) -> str:
    """An id safe inside a CSV cell and a path component."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text) or "patient"
