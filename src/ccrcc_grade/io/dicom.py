"""DICOM CT series: read, check, sort by position, convert to Hounsfield units.

pydicom decodes every transfer syntax its installed plugins support (JPEG 2000 via
pylibjpeg-openjpeg, JPEG-LS via pyjpegls, JPEG lossless via GDCM).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ccrcc_grade.core.errors import CcrccError, check_number


@dataclass
class DicomSlice:
    path: Path
    sop_uid: str
    series_uid: str
    position: float  # along the slice normal (mm); NaN when the tags are missing
    instance: int
    pixel_spacing: tuple[float, float]  # (row, col) mm
    header: pydicom.Dataset  # header only, pixels not loaded
    flip: tuple[bool, bool] = (False, False)  # (rows, cols) to reach the radiological view


def display_flips(ds: pydicom.Dataset) -> tuple[bool, bool]:
    """Flips (rows, cols) that bring an axial slice to the radiological view (rows anterior ->
    posterior, columns patient right -> left, i.e. ImageOrientationPatient [1,0,0,0,1,0]).
    Boxes stay in stored-pixel coordinates; only the crop is flipped, so every series - e.g.
    one stored upside-down with orientation [1,0,0,0,-1,0] - gives crops the same way round."""
    try:
        iop = [float(v) for v in ds.ImageOrientationPatient]
    except (AttributeError, TypeError, ValueError):
        return (False, False)
    row_dir, col_dir = iop[:3], iop[3:]
    flip_cols = abs(row_dir[0]) > 0.9 and row_dir[0] < 0
    flip_rows = abs(col_dir[1]) > 0.9 and col_dir[1] < 0
    return (flip_rows, flip_cols)


def read_header(path: Path) -> pydicom.Dataset:
    """Read a DICOM header (no pixel data); a :class:`CcrccError` when it is not DICOM."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise CcrccError(f"{path}: not a readable DICOM file ({exc})") from None


def slice_position(ds: pydicom.Dataset) -> float:
    """Position of a slice along its normal: ImagePositionPatient . (row x col direction)."""
    try:
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=float)
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=float)
    except (AttributeError, TypeError, ValueError):
        return float("nan")
    normal = np.cross(iop[:3], iop[3:])
    return float(np.dot(ipp, normal))


DERIVED_TERMS = ("DERIVED", "SECONDARY", "MPR", "MIP", "MINIP", "LOCALIZER", "PROJECTION", "REFORMATTED", "VOLUME")
MAX_PIXELS = 4096 * 4096  # a CT slice is 512 x 512; beyond this a header is hostile or not a CT slice


def image_problem(ds: pydicom.Dataset) -> str | None:
    """Why an image is not what the model was made for (an original axial CT slice), or None:
    derived, secondary, reformatted, projected or localizer images (ImageType), a non-axial
    orientation, or a multi-frame object the pipeline does not split."""
    kinds = [str(v).strip().upper() for v in (getattr(ds, "ImageType", None) or [])]
    bad = [t for t in kinds if t in DERIVED_TERMS]
    if bad:
        return f"ImageType {'/'.join(kinds)} marks a {bad[0].lower()} image, not an original axial slice"
    frames = str(getattr(ds, "NumberOfFrames", "") or "1").strip()
    if frames not in ("", "1"):
        return f"a multi-frame object ({frames} frames) that the pipeline does not split into slices"
    try:
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=float)
    except (AttributeError, TypeError, ValueError):
        return None
    normal = np.cross(iop[:3], iop[3:])
    if iop.size == 6 and np.all(np.isfinite(normal)) and abs(normal[2]) < 0.9 * max(np.linalg.norm(normal), 1e-9):
        return f"orientation {', '.join(f'{v:g}' for v in iop)} is not axial (a reformatted plane)"
    return None


def pixel_bytes_problem(ds: pydicom.Dataset) -> str | None:
    """A header whose image would decode to more than MAX_PIXELS pixels per frame (a decompression
    bomb: a few kilobytes of JPEG 2000 can claim 65535 x 65535), before anything is decoded."""
    try:
        rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    except (TypeError, ValueError):
        return "Rows/Columns are not whole numbers"
    if rows * cols > MAX_PIXELS:
        return f"{rows} x {cols} pixels is larger than any CT slice (at most {MAX_PIXELS} pixels)"
    return None


def patient_identity(ds: pydicom.Dataset) -> tuple[str, str]:
    """(PatientID, PatientName + birth date) as written; empty strings where absent."""
    pid = str(getattr(ds, "PatientID", "") or "").strip()
    name = str(getattr(ds, "PatientName", "") or "").strip()
    born = str(getattr(ds, "PatientBirthDate", "") or "").strip()
    return pid, f"{name} {born}".strip()


def check_one_patient(items: list[tuple[object, pydicom.Dataset]], where: str) -> None:
    """One patient, and every image and series once, in a set of DICOM headers (a patient folder,
    an upload): refuses, naming the files, PatientIDs (or names and birth dates where IDs are
    blank) that differ, the same SOPInstanceUID twice and two series folders sharing one
    SeriesInstanceUID (``items``: (file or folder/file name, header))."""
    ids: dict[str, object] = {}
    names: dict[str, object] = {}
    blank_id = False
    sops: dict[str, object] = {}
    folders: dict[str, str] = {}
    for f, ds in items:
        pid, name = patient_identity(ds)
        if pid:
            ids.setdefault(pid, f)
        blank_id |= not pid
        if name:
            names.setdefault(name, f)
        sop = str(getattr(ds, "SOPInstanceUID", "") or "").strip()
        if sop and sop in sops:
            raise CcrccError(
                f"{f}: SOPInstanceUID {sop} is also the image {sops[sop]}: the same image twice in {where}"
            )
        sops.setdefault(sop, f)
        series = str(getattr(ds, "SeriesInstanceUID", "") or "").strip()
        folder = str(Path(str(f)).parent)
        if series and folders.setdefault(series, folder) != folder:
            raise CcrccError(
                f"{f}: SeriesInstanceUID {series} is also the series of {folders[series]}: two series share "
                f"one UID in {where}"
            )
    for what, seen in (("PatientID", ids), ("patient name and birth date", names)):
        if len(seen) > 1:
            (a, fa), (b, fb) = list(seen.items())[:2]
            raise CcrccError(
                f"{where}: images of {len(seen)} patients ({what} {a!r} in {fa}, {b!r} in {fb}); one patient per folder"
            )
        if what == "PatientID" and not blank_id:
            return  # one ID on every image: names may be spelt differently between series


def check_distinct_positions(slices: list[tuple[object, float]], where: str) -> None:
    """No two slices of one series at one position (within 1 micrometre): that is two series or two
    patients interleaved (anonymised exports with blank UIDs fall into one group), refused naming
    both files. ``slices``: (file or upload name, position along the normal); slices without a
    position are not compared."""
    known = sorted((pos, str(f)) for f, pos in slices if np.isfinite(pos))
    for (pa, fa), (pb, fb) in zip(known, known[1:]):
        if pb - pa < 1e-3:
            raise CcrccError(
                f"{fb}: at the same position ({pb:.2f} mm) as {Path(fa).name} in {where}: two series or two "
                "patients interleaved"
            )


ALLOW_DERIVED_NOTE = (
    "--allow-derived: derived, reformatted or localizer DICOM images were not refused; the model was made "
    "for original axial CT slices"
)


def scan_series(folder: Path, allow_derived: bool = False) -> list[DicomSlice]:
    """Every DICOM file in ``folder`` (any names, any order), checked to be ONE series of
    original axial CT slices (``allow_derived``: derived, reformatted or localizer images too)
    and sorted along the slice normal (InstanceNumber when positions are missing); two slices
    at one position (two series or two patients interleaved) are refused."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise CcrccError(f"{folder}: no DICOM files")
    slices = []
    for f in files:
        ds = read_header(f)
        if "PixelData" not in ds and not hasattr(ds, "Rows"):
            raise CcrccError(f"{f}: DICOM file has no image")
        if str(getattr(ds, "Modality", "CT") or "CT") != "CT":
            raise CcrccError(f"{f}: Modality is {ds.Modality}, not CT; the grade model reads CT only")
        if too_large := pixel_bytes_problem(ds):
            raise CcrccError(f"{f}: {too_large}")
        if not allow_derived and (problem := image_problem(ds)):
            raise CcrccError(
                f"{f}: {problem}; the model was made for original axial CT slices "
                "(--allow-derived grades it anyway, and the result says so)"
            )
        spacing = pixel_spacing(ds, f)
        slices.append(
            DicomSlice(
                f,
                str(getattr(ds, "SOPInstanceUID", f.name)),
                str(getattr(ds, "SeriesInstanceUID", "")),
                slice_position(ds),
                int(getattr(ds, "InstanceNumber", 0) or 0),
                spacing,
                ds,
                display_flips(ds),
            )
        )
    uids = sorted({s.series_uid for s in slices})
    if len(uids) > 1:
        counts = ", ".join(f"{u} ({sum(s.series_uid == u for s in slices)} files)" for u in uids)
        raise CcrccError(f"{folder}: {len(uids)} DICOM series mixed in one phase folder: {counts}")
    check_one_patient([(s.path, s.header) for s in slices], f"the series {folder}")
    check_distinct_positions([(s.path, s.position) for s in slices], f"the series {folder}")
    if all(np.isfinite(s.position) for s in slices):
        slices.sort(key=lambda s: (s.position, s.instance))
    else:
        slices.sort(key=lambda s: (s.instance, s.path.name))
    return slices


def read_hu(path: Path, warnings: list[str] | None = None) -> tuple[np.ndarray, tuple[float, float]]:
    """Decode one DICOM slice to float32 HU (rows, cols) and its pixel spacing (row, col) in mm.

    Missing RescaleSlope/Intercept default to 1/0 (or -1024 for unsigned data where CT
    conventionally stores HU + 1024), with a warning appended to ``warnings``.
    """
    try:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
    except (
        InvalidDicomError,
        OSError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        RuntimeError,
        NotImplementedError,
    ) as exc:
        raise CcrccError(f"{path}: cannot decode DICOM pixel data ({exc})") from None
    if arr.ndim != 2:
        raise CcrccError(f"{path}: expected a single 2-D slice, got pixel array shape {arr.shape}")
    slope = getattr(ds, "RescaleSlope", None)
    intercept = getattr(ds, "RescaleIntercept", None)
    if slope is None or intercept is None:
        default_intercept = -1024.0 if (int(getattr(ds, "PixelRepresentation", 1)) == 0 and intercept is None) else 0.0
        slope = 1.0 if slope is None else slope
        intercept = default_intercept if intercept is None else intercept
        if warnings is not None:
            warnings.append(
                f"{path}: RescaleSlope/RescaleIntercept missing; assumed slope {float(slope):g}, "
                f"intercept {float(intercept):g}"
            )
    slope = check_number(slope, f"{path}: RescaleSlope", -1e4, 1e4)
    intercept = check_number(intercept, f"{path}: RescaleIntercept", -1e5, 1e5)
    hu = arr.astype(np.float32) * slope + intercept
    return hu, pixel_spacing(ds, path)


def pixel_spacing(ds: pydicom.Dataset, path: Path) -> tuple[float, float]:
    """PixelSpacing (row, col) in mm: two positive finite numbers (1 mm each when absent)."""
    raw = getattr(ds, "PixelSpacing", None)
    if raw is None:
        return (1.0, 1.0)
    try:
        values = (
            [float(v) for v in raw] if isinstance(raw, (list, tuple, pydicom.multival.MultiValue)) else [float(raw)]
        )
    except (TypeError, ValueError):
        raise CcrccError(f"{path}: PixelSpacing must be two numbers, got {raw!r}") from None
    if len(values) != 2:
        raise CcrccError(f"{path}: PixelSpacing must hold two values (row, column), got {raw!r}")
    return tuple(check_number(v, f"{path}: PixelSpacing", 0, 100, lo_open=True) for v in values)
