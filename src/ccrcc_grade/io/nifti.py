"""NIfTI volumes (own cohorts and KiTS): axial slices the radiological way round, and tumour
boxes derived from 2-D masks (``ingest.layouts.volume_rois`` turns a mask volume into ROIs).

Volumes are reoriented to RAS+ with nibabel; an axial slice is then shown as radiologists view
it: image rows run anterior -> posterior and columns patient right -> left (the same orientation
as a DICOM slice with ImageOrientationPatient [1,0,0,0,1,0]). This holds whatever the file's own
axis order is - KiTS stores (slice, row, col) with an anti-diagonal, flipped affine.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.io.boxes import Box

_CACHE: OrderedDict[str, tuple[np.ndarray, tuple[float, float, float]]] = OrderedDict()
_CACHE_SIZE = 2  # volumes kept decoded: ingest walks one case at a time


def load_ras(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Volume as an array in RAS+ axis order (x, y, z) and its voxel sizes (mm)."""
    import nibabel as nib

    key = str(Path(path).resolve())
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    try:
        img = nib.as_closest_canonical(nib.load(str(path)))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises several types for truncated / foreign files
        raise CcrccError(f"{path}: not a readable NIfTI volume ({exc.__class__.__name__}: {exc})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CcrccError(f"{path}: expected a 3-D volume, got shape {data.shape}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    _CACHE[key] = (data, zooms)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return data, zooms


def axial(data: np.ndarray, z: int) -> np.ndarray:
    """Axial slice ``z`` of a RAS+ volume as (rows anterior->posterior, cols right->left)."""
    return data[::-1, ::-1, z].T


def read_axial_slice(path: Path, z: int) -> np.ndarray:
    """One axial slice in HU (float32); NIfTI CT stores HU (scl_slope/inter applied by nibabel)."""
    data, _ = load_ras(path)
    if not 0 <= z < data.shape[2]:
        raise CcrccError(f"{path}: slice {z} outside the volume ({data.shape[2]} slices)")
    return np.ascontiguousarray(axial(data, z), dtype=np.float32)


def mask_boxes(mask2d: np.ndarray, margin_px: tuple[float, float] = (0.0, 0.0)) -> list[Box]:
    """One box per connected tumour component (8-connected) of a 2-D mask, grown by
    ``margin_px`` (col, row) pixels; the box edges enclose every voxel of the component."""
    from scipy import ndimage

    lab, n = ndimage.label(mask2d > 0, structure=np.ones((3, 3), bool))
    boxes = []
    for sl in ndimage.find_objects(lab):
        if sl is None:
            continue
        rows, cols = sl
        boxes.append(
            Box(
                cols.start - margin_px[0], rows.start - margin_px[1], cols.stop + margin_px[0], rows.stop + margin_px[1]
            )
        )
    return boxes
