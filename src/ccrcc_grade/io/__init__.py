"""Readers for the input formats: labelme JSON, exported slices, DICOM series, NIfTI, KiTS.

These modules only read files into arrays, HU values and boxes; they know nothing of cohorts,
caches or models.
"""

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


def __getattr__(name: str) -> object:
    """Public names, imported on first use (so importing the sub-package stays cheap)."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
