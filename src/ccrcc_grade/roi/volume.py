"""A phase as a volume in patient coordinates (DICOM LPS, mm), read from a DICOM series folder or
a NIfTI file, with the checks a proposal needs: one orientation, equal slice spacing.

Slices are kept as stored (boxes live in stored-pixel coordinates, as everywhere else in the
project) and in ascending position along the slice normal. A pixel (column x, row y) of slice k
lies at ``origin[k] + x * spacing_col * row_dir + y * spacing_row * col_dir`` - DICOM's
ImagePositionPatient / ImageOrientationPatient / PixelSpacing, PS3.3 C.7.6.2.1.1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ccrcc_grade.core.errors import CcrccError

GAP_TOLERANCE = 0.05  # relative difference of two slice gaps still called equal (DICOM DS rounding)


@dataclass
class PhaseVolume:
    hu: np.ndarray  # (slices, rows, cols) float32, ascending position
    origin: np.ndarray  # (slices, 3) ImagePositionPatient per slice (LPS mm)
    row_dir: np.ndarray  # (3,) direction of increasing column
    col_dir: np.ndarray  # (3,) direction of increasing row
    spacing: tuple[float, float]  # (row, col) mm
    frame_uid: str = ""
    refs: list[str] = field(default_factory=list)  # per slice: the file (or file#z) a box row names
    sops: list[str] = field(default_factory=list)  # per slice: SOPInstanceUID (DICOM)
    name: str = ""

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    @property
    def positions(self) -> np.ndarray:
        return self.origin @ self.normal

    @property
    def gap(self) -> float:
        """Distance between neighbouring slices (mm)."""
        p = self.positions
        return float(np.median(np.diff(p))) if len(p) > 1 else 1.0

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)

    def to_patient(self, k: float, x: float, y: float) -> np.ndarray:
        """Patient coordinates (mm) of column x, row y on (fractional) slice k."""
        k0 = int(np.clip(np.floor(k), 0, len(self.origin) - 1))
        base = self.origin[k0] + (k - k0) * self.gap * self.normal
        return base + x * self.spacing[1] * self.row_dir + y * self.spacing[0] * self.col_dir

    def to_pixel(self, p: np.ndarray) -> tuple[float, float, float]:
        """(fractional slice index, column, row) of a point in patient coordinates."""
        d = np.asarray(p, float) - self.origin[0]
        x = float(d @ self.row_dir) / self.spacing[1]
        y = float(d @ self.col_dir) / self.spacing[0]
        k = float(d @ self.normal) / self.gap if len(self.origin) > 1 else 0.0
        return k, x, y


def check_geometry(origin: np.ndarray, orientations: list[np.ndarray], where: str) -> None:
    """One orientation for every slice and equal spacing between them: a one-line error otherwise."""
    ref = orientations[0]
    for k, o in enumerate(orientations):
        if not np.allclose(o, ref, atol=1e-3):
            raise CcrccError(
                f"{where}: slice {k + 1} has another orientation ({np.round(o, 3).tolist()} vs "
                f"{np.round(ref, 3).tolist()}); a proposal needs one orientation for the whole series"
            )
    normal = np.cross(ref[:3], ref[3:])
    gaps = np.diff(origin @ normal)
    if len(gaps) and (gaps.min() <= 0 or gaps.max() - gaps.min() > GAP_TOLERANCE * max(gaps.max(), 1e-6)):
        k = int(np.argmax(np.abs(gaps - np.median(gaps))))
        raise CcrccError(
            f"{where}: slices of unequal spacing ({gaps.min():.2f} to {gaps.max():.2f} mm; between slices "
            f"{k + 1} and {k + 2}); a proposal walks slice by slice and needs equal spacing"
        )


def read_dicom_volume(folder: Path, root: Path | None = None, allow_derived: bool = False) -> PhaseVolume:
    """A DICOM series folder (one series, the checks of ``io.dicom.scan_series``) as a volume; the
    slices' ``refs`` are file paths relative to ``root`` (the cohort folder) when given."""
    from ccrcc_grade.io.dicom import read_hu, scan_series

    folder = Path(folder)
    slices = scan_series(folder, allow_derived)
    if any(not np.isfinite(s.position) for s in slices):
        raise CcrccError(f"{folder}: slices without ImagePositionPatient/ImageOrientationPatient; no geometry")
    ori = [np.array([float(v) for v in s.header.ImageOrientationPatient]) for s in slices]
    origin = np.array([[float(v) for v in s.header.ImagePositionPatient] for s in slices])
    check_geometry(origin, ori, str(folder))
    spacings = {s.pixel_spacing for s in slices}
    if len(spacings) > 1:
        raise CcrccError(f"{folder}: pixel spacing differs between slices ({sorted(spacings)})")
    shapes = {(int(s.header.Rows), int(s.header.Columns)) for s in slices}
    if len(shapes) > 1:
        raise CcrccError(f"{folder}: image size differs between slices ({sorted(shapes)})")
    hu = np.stack([read_hu(s.path)[0] for s in slices]).astype(np.float32)
    root = Path(root).resolve() if root else None
    refs = [
        str(s.path.resolve().relative_to(root)) if root and s.path.resolve().is_relative_to(root) else s.path.name
        for s in slices
    ]
    frames = {str(getattr(s.header, "FrameOfReferenceUID", "") or "") for s in slices}
    return PhaseVolume(
        hu=hu,
        origin=origin,
        row_dir=ori[0][:3],
        col_dir=ori[0][3:],
        spacing=slices[0].pixel_spacing,
        frame_uid=frames.pop() if len(frames) == 1 else "",
        refs=refs,
        sops=[s.sop_uid for s in slices],
        name=str(folder),
    )


def read_nifti_volume(path: Path, root: Path | None = None, frame_uid: str = "") -> PhaseVolume:
    """A NIfTI CT volume in the radiological display orientation of ``io.nifti.axial`` (rows
    anterior -> posterior, columns right -> left), in LPS patient coordinates from its affine.
    ``load_ras`` gives RAS+ axes, so slice index and position rise together (inferior to superior).
    NIfTI carries no FrameOfReferenceUID; the volumes of one patient folder share the scanner's
    frame, which the caller states with ``frame_uid``."""
    import nibabel as nib

    from ccrcc_grade.io.nifti import axial, load_ras

    data, zooms = load_ras(path)
    img = nib.as_closest_canonical(nib.load(str(path)))
    aff = img.affine
    nx, ny, nz = data.shape
    lps = np.diag([-1.0, -1.0, 1.0])

    def world(c: float, r: float, z: float) -> np.ndarray:  # display (col, row, slice) -> LPS
        return lps @ (aff @ np.array([nx - 1 - c, ny - 1 - r, z, 1.0]))[:3]

    o0 = world(0, 0, 0)
    row_dir = world(1, 0, 0) - o0
    col_dir = world(0, 1, 0) - o0
    spacing = (float(np.linalg.norm(col_dir)), float(np.linalg.norm(row_dir)))
    origin = np.array([world(0, 0, z) for z in range(nz)])
    hu = np.stack([axial(data, z) for z in range(nz)]).astype(np.float32)
    root = Path(root).resolve() if root else None
    p = Path(path).resolve()
    rel = str(p.relative_to(root)) if root and p.is_relative_to(root) else p.name
    return PhaseVolume(
        hu=hu,
        origin=origin,
        row_dir=row_dir / spacing[1],
        col_dir=col_dir / spacing[0],
        spacing=spacing,
        frame_uid=frame_uid,
        refs=[f"{rel}#z{z:04d}" for z in range(nz)],
        name=str(path),
    )


def read_nifti_mask(path: Path, like: PhaseVolume, labels: tuple[int, ...] | None = None) -> np.ndarray:
    """A tumour mask volume in the slice order and orientation of ``like`` (boolean): non-zero
    voxels, or those of the given label values (KiTS: 2, the tumour)."""
    from ccrcc_grade.io.nifti import axial, load_ras

    data, _ = load_ras(path)
    seg = np.stack([axial(data, z) for z in range(data.shape[2])])
    m = np.isin(seg, labels) if labels else seg > 0
    if m.shape != like.hu.shape:
        raise CcrccError(f"{path}: mask shape {m.shape} differs from the volume's {like.hu.shape}")
    return m
