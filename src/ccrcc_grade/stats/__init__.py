"""Statistics of predictions, independent of how they were made: metrics with patient-bootstrap
CIs, DeLong's test and patient aggregation (``metrics``), prediction files (``predictions``),
paired comparisons of two runs (``compare``), the clinical characteristics table (``clinical``)
and the figures of all of them (``figures``).
"""

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


def __getattr__(name: str) -> object:
    """Public names, imported on first use (so importing the sub-package stays cheap)."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
