"""Statistics of predictions, independent of how they were made: metrics with patient-bootstrap
CIs, DeLong's test and patient aggregation (``metrics``), prediction files (``predictions``),
paired comparisons of two runs (``compare``), the clinical characteristics table (``clinical``)
and the figures of all of them (``figures``).
"""

from ccrcc_grade.core.exports import lazy_getattr

_EXPORTS = {
    "bootstrap_metrics": "metrics",
    "delong_paired_test": "metrics",
    "metric": "metrics",
    "metric_value": "metrics",
    "read_predictions": "predictions",
    "patient_level": "predictions",
    "compare": "compare",
    "clinical_table": "clinical",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
