"""The study end to end (`ccrcc-grade study`): its typed protocol (``protocol``), ingest ->
splits -> one model per phase + combined + SE-ResNet34 -> evaluation -> evidence (``run``), and
the report for a paper (``report``: results.json -> report.md / report.html).
"""

_EXPORTS = {
    "run_study": "run",
    "StudyOptions": "run",
    "write_report": "report",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    """Public names, imported on first use (so importing the sub-package stays cheap)."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
