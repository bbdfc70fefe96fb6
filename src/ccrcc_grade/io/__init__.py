"""Readers for the input formats: labelme JSON, exported slices, DICOM series, NIfTI, KiTS.

These modules only read files into arrays, HU values and boxes; they know nothing of cohorts,
caches or models.
"""

from ccrcc_grade.core.exports import lazy_getattr

_EXPORTS = {
    "Box": "boxes",
    "read_boxes_csv": "boxes",
    "read_clinical": "clinical",
    "read_labelme": "labelme",
    "read_hu": "dicom",
    "scan_series": "dicom",
    "read_gray": "images",
    "load_ras": "nifti",
    "read_kits_clinical": "kits",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
