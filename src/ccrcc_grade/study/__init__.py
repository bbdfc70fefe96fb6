"""The study end to end (`ccrcc-grade study`): its typed protocol (``protocol``), ingest ->
splits -> one model per phase + combined + SE-ResNet34 -> evaluation -> evidence (``run``), and
the report for a paper (``report``: results.json -> report.md / report.html).
"""

from ccrcc_grade.core.exports import lazy_getattr

_EXPORTS = {
    "run_study": "run",
    "StudyOptions": "run",
    "write_report": "report",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
