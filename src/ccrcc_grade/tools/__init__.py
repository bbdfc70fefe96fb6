"""Tools around the pipeline: the phantom cohort generator (``synth``) and the benchmarks
(``bench``, ``bench_mem``)."""

_EXPORTS = {
    "make_cohort": "synth",
    "bench": "bench",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    """Public names, imported on first use (so importing the sub-package stays cheap)."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
