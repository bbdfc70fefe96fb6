"""Assisted tumour boxes (the study's future work: a model proposes, the radiologist corrects).

``volume``: a phase as a geometric volume (DICOM series or NIfTI) with patient coordinates;
``interpolate``: boxes between key slices, over slice position; ``propagate``: boxes of one phase
onto another through patient coordinates and a rigid registration around the tumour (SimpleITK);
``net``: the box-prompted 2-D proposal network (MONAI) and its checkpoint; ``propose``: from one
box to every slice and every phase, and the boxes.csv files the rest of the pipeline reads.
"""

from ccrcc_grade.core.exports import lazy_getattr

_EXPORTS = {
    "PhaseVolume": "volume",
    "read_dicom_volume": "volume",
    "read_nifti_volume": "volume",
    "interpolate_boxes": "interpolate",
    "propagate_boxes": "propagate",
    "register_phases": "propagate",
    "load_roi_model": "net",
    "train_roi": "net",
    "propose_series": "propose",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
