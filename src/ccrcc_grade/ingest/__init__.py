"""From a cohort folder to the crop cache: a validated :class:`Cohort` (``cohort``), one reader
per folder layout and ``detect_layout`` (``layouts``), phase detection of unsorted DICOM
(``phase_detect``), box -> crop (``preprocess``), the cache on disk (``cache``), ``ingest`` that
validates, crops and writes for every layout (``pipeline``), and patient splits (``splits``).
"""

from ccrcc_grade.core.exports import lazy_getattr

_EXPORTS = {
    "Cohort": "cohort",
    "Roi": "cohort",
    "CohortSource": "layouts",
    "detect_layout": "layouts",
    "read_cohort": "layouts",
    "READERS": "layouts",
    "LayoutReader": "layouts",
    "ingest": "pipeline",
    "CropCache": "cache",
    "make_splits": "splits",
    "load_splits": "splits",
    "make_crop": "preprocess",
    "detect_phases": "phase_detect",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
