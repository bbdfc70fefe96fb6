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


def scan_series(folder: Path) -> list[DicomSlice]:
    """Every DICOM file in ``folder`` (any names, any order), checked to be ONE series and
    sorted along the slice normal (InstanceNumber when positions are missing)."""
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
