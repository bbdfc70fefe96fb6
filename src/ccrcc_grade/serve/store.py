"""Studies of the workstation on disk: uploaded (or PACS-retrieved) DICOM, the series -> phase
assignment, the boxes, predictions and SRs.

Layout of ``DATA/<study_id>/`` (ids are generated; uploaded file names are never used as paths):

    study.json                 series summary (uid, description, phase, reason, slices in order)
    series/<n>/<k>.dcm         the series' instances, k in slice order (the order of the viewer)
    cohort/boxes.csv           the confirmed boxes in ingest's cohort format (file relative to cohort/),
                               with their source
    predictions/<model>/...    the Grad-CAM overlays of the last grade per model and every DICOM
                               result made (sr/<n>.dcm, sr-ohif/, key/, seg/)

The index of the studies, their status, the boxes (with their version), the grades and
sign-offs, the versions of the DICOM results and the audit log live in ``DATA/worklist.sqlite``
(``worklist``); the receiver's instances wait in ``DATA/.incoming``
until their study is complete. Every write is atomic; a failed upload removes its half-written
study folder, so nothing of it is left behind; a server restart finds every study and box as it
was.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import shutil
import stat
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from zlib import error as zlib_error

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ccrcc_grade.core.config import ServeOptions
from ccrcc_grade.core.errors import CannotWrite, CcrccError
from ccrcc_grade.core.fileio import atomic_write_json, atomic_write_text
from ccrcc_grade.core.phases import PHASES
from ccrcc_grade.ingest.phase_detect import detect_phases, series_tags
from ccrcc_grade.io.boxes import Box
from ccrcc_grade.io.dicom import (
    check_distinct_positions,
    check_one_patient,
    display_flips,
    image_problem,
    pixel_bytes_problem,
    read_hu,
    slice_position,
)
from ccrcc_grade.serve.errors import NotFound, TooLarge
from ccrcc_grade.serve.worklist import Worklist

STUDY_ID = re.compile(r"^[0-9a-f]{16}$")
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = ServeOptions.max_upload_mb * 2**20  # total size of one upload, unpacked
    max_files: int = ServeOptions.max_files  # DICOM instances in one upload
    max_boxes: int = ServeOptions.max_boxes  # boxes in one study
    max_uploads: int = ServeOptions.max_uploads  # uploads read at the same time


def _datasets_from_upload(files: list[tuple[str, BinaryIO]], limits: UploadLimits) -> list[tuple[str, pydicom.Dataset]]:
    """Read every uploaded file (DICOM files or zips of them, as spooled file objects) as DICOM;
    anything else is a 400 naming the file. Names are only used in messages. Memory is bounded:
    a zip member is read only up to its declared size and the declared sizes together stay
    within the upload limit; no pixel data are decoded here, and an image header claiming more
    pixels than a CT slice has (a decompression bomb) is refused before it could be."""
    out: list[tuple[str, pydicom.Dataset]] = []
    total = 0

    def add(name: str, fh: BinaryIO) -> None:
        if len(out) >= limits.max_files:
            raise TooLarge(f"upload holds more than {limits.max_files} files")
        try:
            ds = pydicom.dcmread(fh)
        except (InvalidDicomError, EOFError, ValueError, TypeError, AttributeError, OSError, KeyError) as exc:
            raise CcrccError(f"{name}: not a DICOM file ({exc.__class__.__name__})") from None
        if "PixelData" not in ds:
            raise CcrccError(f"{name}: DICOM file without an image")
        if not _uid(ds, "SOPInstanceUID") and not _uid(
            getattr(ds, "file_meta", pydicom.Dataset()), "MediaStorageSOPInstanceUID"
        ):
            raise CcrccError(f"{name}: DICOM file without a SOPInstanceUID (in the dataset or its file meta)")
        out.append((name, ds))

    for name, fh in files:
        fh.seek(0, io.SEEK_END)
        size = fh.tell()
        fh.seek(0)
        total += size
        if total > limits.max_bytes:
            raise TooLarge(f"upload exceeds the limit of {limits.max_bytes / 1e6:.0f} MB")
        if fh.read(4) == b"PK\x03\x04":
            fh.seek(0)
            try:
                with zipfile.ZipFile(fh) as zf:
                    members = [m for m in zf.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX")]
                    total += sum(m.file_size for m in members) - size
                    if total > limits.max_bytes:
                        raise TooLarge(f"{name}: unpacks to more than {limits.max_bytes / 1e6:.0f} MB")
                    for m in members:
                        with zf.open(m) as member:  # yields at most the declared size
                            add(f"{name}:{m.filename}", io.BytesIO(member.read(m.file_size + 1)))
            except (zipfile.BadZipFile, NotImplementedError, EOFError, zlib_error) as exc:
                raise CcrccError(
                    f"{name}: a damaged zip file or one packed in a way zip cannot read ({exc.__class__.__name__})"
                ) from None
        else:
            fh.seek(0)
            add(name, fh)
    if not out:
        raise CcrccError("no DICOM files in the upload")
    return out


class StudyStore:
    """All studies under one data folder. Thread-safe: one lock per study for writes."""

    def __init__(self, root: Path, limits: UploadLimits | None = None):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise CcrccError(f"--data {self.root}: is a file, not a folder")
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise CcrccError(f"--data {self.root}: cannot create the folder ({exc.strerror or exc})") from None
        mode = stat.S_IMODE(self.root.stat().st_mode)
        if mode & 0o077:
            raise CcrccError(
                f"--data {self.root}: other users can open this folder (mode {mode:o}); patient images are kept "
                f"there, so it must be the owner's only: chmod 700 {self.root}, or give a new folder"
            )
        self.limits = limits or UploadLimits()
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.worklist = Worklist(self.root / "worklist.sqlite")
        self._index_older_studies()

    def _index_older_studies(self) -> None:
        """Studies stored before the worklist existed join it: their boxes (boxes.json), grades
        (predictions/<model>/result.json), sign-offs (signoff.json) and the versions of the SRs
        made (<kind>/index.json), each read once."""
        wl, who = self.worklist, "workstation (index of older studies)"
        if wl.indexed_files:  # done once per data folder, not at every start
            return
        for f in sorted(self.root.glob("*/study.json")):
            sid = f.parent.name
            if not STUDY_ID.match(sid):
                continue
            if not wl.has(sid):
                wl.add_study(sid, json.loads(f.read_text()).get("study_uid", ""), "upload", who)
                if (f.parent / "boxes.json").is_file():
                    wl.set_boxes(sid, json.loads((f.parent / "boxes.json").read_text()), None, who)
            for result in sorted(f.parent.glob("predictions/*/result.json")):
                model = result.parent.name
                if wl.grade(sid, model)[0] is not None:
                    continue
                wl.set_grade(sid, model, json.loads(result.read_text()))
                if (result.parent / "signoff.json").is_file():
                    wl.set_signoff(sid, model, json.loads((result.parent / "signoff.json").read_text()))
                for index in sorted(result.parent.glob("*/index.json")):
                    kept = json.loads(index.read_text())
                    for n, v in enumerate(kept.get("versions", []), start=1):
                        ds = pydicom.dcmread(index.parent / v["file"], stop_before_pixels=True)
                        wl.add_object(sid, model, index.parent.name, n, v["file"], v["key"], ds)
        wl.indexed_files = True

    def lock(self, study_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(study_id, threading.Lock())

    def folder(self, study_id: str) -> Path:
        if not STUDY_ID.match(study_id or "") or not (self.root / study_id / "study.json").is_file():
            raise NotFound(f"study {study_id!r} not found")
        return self.root / study_id

    # --- create ------------------------------------------------------------------------
    def add_upload(self, files: list[tuple[str, BinaryIO]], actor: str = "workstation") -> dict:
        return self.add_datasets(_datasets_from_upload(files, self.limits), "upload", actor)

    def add_datasets(
        self,
        named: list[tuple[str, pydicom.Dataset]],
        source: str = "upload",
        actor: str = "workstation",
        study_id: str | None = None,
    ) -> dict:
        """A new study from (name, DICOM dataset) pairs - one patient, one study, several series:
        written in a temporary folder and renamed into place, so a failure leaves nothing behind.
        Two patients (even anonymised with blank UIDs), the same image twice, two slices at one
        position of a series (interleaved series) are refused naming the files; a series of
        derived, reformatted or localizer images is kept but never assigned a phase.

        ``source``: upload, pacs or dicom (the receiver); ``study_id``: the receiver's id of the
        study - when it is stored already (instances came after it was complete), its series are
        replaced by the full set while its boxes and predictions stay."""
        for name, ds in named:  # uploads and PACS retrievals alike, before any pixel is decoded
            if too_large := pixel_bytes_problem(ds):
                raise TooLarge(f"{name}: {too_large}")
        check_one_patient([(f"upload/{name}", ds) for name, ds in named], "this upload")
        datasets = [ds for _, ds in named]
        names = {id(ds): name for name, ds in named}
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
        replace = study_id is not None and (self.root / study_id / "study.json").is_file()
        study_id = study_id or secrets.token_hex(8)
        tmp = self.root / f".{study_id}.upload"
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written folder of an earlier crash
        try:
            tmp.mkdir()
        except OSError as exc:
            raise CannotWrite(f"{tmp}: cannot write ({exc.strerror})", exc.strerror or "error") from None
        try:
            series = []
            for n, (uid, group) in enumerate(sorted(by_series.items())):
                group.sort(key=lambda d: (slice_position(d), int(getattr(d, "InstanceNumber", 0) or 0)))
                sops = [str(d.SOPInstanceUID) for d in group]
                if len(set(sops)) != len(sops):
                    raise CcrccError(f"series {uid}: the same SOPInstanceUID twice")
                check_distinct_positions([(names[id(d)], slice_position(d)) for d in group], f"series {uid}")
                problem = next((p for p in map(image_problem, group) if p), None)
                folder = tmp / "series" / str(n)
                folder.mkdir(parents=True)
                for k, d in enumerate(group):
                    try:
                        d.save_as(folder / f"{k}.dcm", enforce_file_format=True)
                    except OSError as exc:  # a full disk: the temporary folder goes, nothing is left
                        raise CannotWrite(f"{folder}: cannot write ({exc.strerror})", exc.strerror or "error") from None
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
                        "slice_thickness": _number(first, "SliceThickness"),
                        "problem": problem,
                        "override": False,
                    }
                )
            for s in detect_phases(series):
                s["phase_reason"] = s.pop("rule")
                if s["problem"]:
                    notes.append(f"series {s['description'] or s['series_uid']}: {s['problem']}; not assigned a phase")
            order = {p: i for i, p in enumerate(PHASES)}  # shown in phase order, unassigned last
            series.sort(key=lambda s: (order.get(s["phase"], len(PHASES)), s["description"], s["series_uid"]))
            first = datasets[0]
            summary = {
                "study_id": study_id,
                "study_uid": str(getattr(first, "StudyInstanceUID", "")),
                "patient_id": str(getattr(first, "PatientID", "") or study_id),
                "patient": patient_banner(first),
                "series": series,
                "notes": notes,
            }
            atomic_write_json(tmp / "study.json", summary)
            if replace:
                with self.lock(study_id):
                    self._swap(study_id, tmp)
            else:
                tmp.rename(self.root / study_id)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.worklist.add_study(study_id, summary["study_uid"], source, actor)
        if replace:
            self._write_cohort_boxes(study_id, summary, self.boxes(study_id))
        return self.summary(study_id)

    def _swap(self, study_id: str, tmp: Path) -> None:
        """The study folder replaced by ``tmp`` (its predictions and exports moved over)."""
        old = self.root / study_id
        for keep in ("predictions", "cohort"):
            if (old / keep).exists():
                (old / keep).rename(tmp / keep)
        aside = self.root / f".{study_id}.old"
        shutil.rmtree(aside, ignore_errors=True)
        old.rename(aside)
        tmp.rename(old)
        shutil.rmtree(aside, ignore_errors=True)

    # --- read --------------------------------------------------------------------------
    def raw(self, study_id: str) -> dict:
        return json.loads((self.folder(study_id) / "study.json").read_text())

    def summary(self, study_id: str) -> dict:
        """The public summary (no file layout): study id and its series with their phases."""
        s = self.raw(study_id)
        keys = (
            "series_uid",
            "description",
            "phase",
            "phase_reason",
            "slices",
            "rows",
            "columns",
            "pixel_spacing",
            "slice_thickness",
            "problem",
            "override",
        )
        return {
            "study_id": s["study_id"],
            "study_uid": s.get("study_uid", ""),
            "patient": s.get("patient") or {},
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

    def listing(self, study_uid: str | None = None) -> list[dict]:
        """The worklist: every study (received, uploaded or pulled from the PACS), newest change
        first, with its status, where it came from, its series and phases, and its last error;
        ``study_uid``: only the stored studies of that StudyInstanceUID (launch by URL)."""
        out = []
        for w in self.worklist.studies(study_uid):
            entry = {k: w[k] for k in ("study_id", "study_uid", "status", "source", "updated")}
            if w["error"]:
                entry["error"] = w["error"]
            f = self.root / w["study_id"] / "study.json"
            s = json.loads(f.read_text()) if f.is_file() else {}
            entry["patient"] = s.get("patient") or {}
            entry["series"] = [
                {k: x.get(k) for k in ("series_uid", "description", "phase", "slices")} for x in s.get("series", [])
            ]
            out.append(entry)
        return out

    def locate(self, study_id: str, sop_uid: str) -> tuple[dict, int]:
        """(series, slice index) of an instance of the study."""
        for s in self.raw(study_id)["series"]:
            if sop_uid in s["sop_instance_uids"]:
                return s, s["sop_instance_uids"].index(sop_uid)
        raise CcrccError(f"SOPInstanceUID {sop_uid!r} is not an image of study {study_id}")

    # --- change ------------------------------------------------------------------------
    def set_phases(self, study_id: str, assignment: dict[str, str | None], allow_derived: bool = False) -> dict:
        """Assign series to phases. A series of derived, reformatted or localizer images takes a
        phase only with ``allow_derived`` (the user's explicit override, which its grade states)."""
        with self.lock(study_id):
            s = self.raw(study_id)
            by_uid = {x["series_uid"]: x for x in s["series"]}
            for uid, phase in assignment.items():
                if uid not in by_uid:
                    raise NotFound(f"series {uid!r} not in study {study_id}")
                if phase is not None and phase not in PHASES:
                    raise CcrccError(f"unknown phase {phase!r} (use one of {', '.join(PHASES)} or null)")
                problem = by_uid[uid].get("problem")
                if phase is not None and problem and not allow_derived:
                    raise CcrccError(
                        f"series {by_uid[uid]['description'] or uid}: {problem}; the model was made for original "
                        "axial CT slices (assign it anyway with allow_derived=true; its grade then says so)"
                    )
            for x in s["series"]:
                if x["series_uid"] in assignment:
                    x["phase"] = assignment[x["series_uid"]]
                    x["phase_reason"] = "set by the user" + (" (derived images: override)" if x.get("problem") else "")
                    x["override"] = bool(x.get("problem")) and x["phase"] is not None
            taken = [x["phase"] for x in s["series"] if x["phase"]]
            dup = sorted({p for p in taken if taken.count(p) > 1})
            if dup:
                raise CcrccError(f"two series assigned to {', '.join(dup)}; each phase takes one series")
            atomic_write_json(self.folder(study_id) / "study.json", s)
            self._write_cohort_boxes(study_id, s, self.boxes(study_id))
        return self.summary(study_id)

    def boxes(self, study_id: str) -> list[dict]:
        self.folder(study_id)
        return self.worklist.boxes(study_id)[0]

    def boxes_version(self, study_id: str) -> int:
        self.folder(study_id)
        return self.worklist.boxes(study_id)[1]

    def set_boxes(
        self, study_id: str, boxes: list[dict], expected_version: int | None = None, actor: str = "workstation"
    ) -> list[dict]:
        """Replace the study's boxes after checking each lies on an image of the study, inside it,
        with a positive area; saved in the worklist (refused with 409 when ``expected_version``
        is not the current one: another tab changed them) and as ingest's boxes.csv."""
        clean = []
        s = self.raw(study_id)
        if len(boxes) > self.limits.max_boxes:
            raise TooLarge(f"{len(boxes)} boxes: a study takes at most {self.limits.max_boxes}")
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
                    "source": str(b.get("source") or "person"),
                    "confirmed": bool(b.get("confirmed", True)),
                    "history": [str(h) for h in b.get("history") or []][-8:],
                }
            )
        with self.lock(study_id):
            self.worklist.set_boxes(study_id, clean, expected_version, actor)
            self._write_cohort_boxes(study_id, s, clean)
        return clean

    def _write_cohort_boxes(self, study_id: str, s: dict, boxes: list[dict]) -> None:
        """boxes.csv in the cohort format, for `export_cohort` (phase from the assignment): the
        confirmed boxes only (unconfirmed proposals are not the clinician's), with their source."""
        lines = ["patient_id,phase,file,x_min,y_min,x_max,y_max,source"]
        for b in boxes:
            if not b.get("confirmed", True):
                continue
            series, k = self.locate(study_id, b["sop_instance_uid"])
            lines.append(
                f"{_csv_id(s['patient_id'])},{series['phase'] or ''},{_csv_id(s['patient_id'])}/"
                f"{series['phase'] or 'unassigned-' + series['folder']}/{k}.dcm,"
                f"{b['x_min']},{b['y_min']},{b['x_max']},{b['y_max']},{CSV_SOURCE.get(b.get('source'), 'drawn')}"
            )
        atomic_write_text(self.folder(study_id) / "cohort" / "boxes.csv", "\n".join(lines) + "\n")

    def export_cohort(self, study_id: str, identifiable: bool = False) -> bytes:
        """A zip in the cohort layout B (COHORT/<patient>/<phase>/*.dcm + boxes.csv + a clinical.csv
        template whose grade the research team fills in), for research after grading.

        De-identified by default: every image goes through dicognito (a maintained implementation
        of the PS3.15 Basic Application Level Confidentiality Profile: names, IDs, dates, UIDs and
        institution replaced consistently within the export) and the patient folder, boxes.csv and
        clinical.csv use the pseudonym; PatientIdentityRemoved and the de-identification method
        are recorded in every file. ``identifiable`` exports the images as stored (the caller's
        explicit choice)."""
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence

        s = self.raw(study_id)
        folder = self.folder(study_id)
        pid = _csv_id(s["patient_id"])
        anonymizer = None
        if not identifiable:
            from dicognito.anonymizer import Anonymizer

            anonymizer = Anonymizer(seed=secrets.token_hex(16))  # a fresh pseudonym per export
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for x in s["series"]:
                name = x["phase"] or f"unassigned-{x['folder']}"
                for k in range(x["slices"]):
                    path = folder / "series" / x["folder"] / f"{k}.dcm"
                    if anonymizer is None:
                        zf.write(path, f"{pid}/{name}/{k}.dcm")
                        continue
                    ds = pydicom.dcmread(path)
                    anonymizer.anonymize(ds)
                    ds.PatientIdentityRemoved = "YES"
                    method = Dataset()
                    method.CodeValue, method.CodingSchemeDesignator = "113100", "DCM"
                    method.CodeMeaning = "Basic Application Confidentiality Profile"
                    ds.DeidentificationMethod = "dicognito (PS3.15 basic profile)"
                    ds.DeidentificationMethodCodeSequence = Sequence([method])
                    pseudonym = _csv_id(str(ds.PatientID))
                    out = io.BytesIO()
                    ds.save_as(out, enforce_file_format=True)
                    zf.writestr(f"{pseudonym}/{name}/{k}.dcm", out.getvalue())
            if anonymizer is not None and s["series"]:
                pid, old = pseudonym, pid
            else:
                old = pid
            csv_path = folder / "cohort" / "boxes.csv"
            text = csv_path.read_text() if csv_path.is_file() else "patient_id,phase,file,x_min,y_min,x_max,y_max\n"
            if pid != old:  # rows are "<id>,<phase>,<id>/<phase>/<k>.dcm,...": the pseudonym in both places
                text = "\n".join(
                    line.replace(f"{old},", f"{pid},", 1).replace(f",{old}/", f",{pid}/", 1) if n else line
                    for n, line in enumerate(text.split("\n"))
                )
            zf.writestr("boxes.csv", text)
            zf.writestr("clinical.csv", f"patient_id,who_isup_grade\n{pid},\n")
        return buf.getvalue()

    def prediction_dir(self, study_id: str, model_id: str) -> Path:
        return self.folder(study_id) / "predictions" / model_id


BANNER = {
    "name": "PatientName",
    "patient_id": "PatientID",
    "birth_date": "PatientBirthDate",
    "sex": "PatientSex",
    "study_date": "StudyDate",
    "accession": "AccessionNumber",
    "study_description": "StudyDescription",
    "institution": "InstitutionName",
}


# the workstation's box sources as the boxes.csv `source` column of `ccrcc-grade propose`
CSV_SOURCE = {
    "person": "drawn",
    "interpolation": "interpolated",
    "propagation": "propagated",
    "proposal model": "proposed",
}


def patient_banner(ds: pydicom.Dataset) -> dict:
    """Who and which study, as the DICOM says (the viewer's, worklist's and report's banner):
    text only, shown as text; empty where the header is silent."""
    return {key: str(getattr(ds, kw, "") or "").strip()[:128] for key, kw in BANNER.items()}


def _number(ds: pydicom.Dataset, keyword: str) -> float | None:
    try:
        v = float(getattr(ds, keyword))
    except (AttributeError, TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


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
