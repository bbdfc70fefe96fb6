"""Tools around the pipeline: the phantom cohort generator (``synth``) and the benchmarks
(``bench``, ``bench_mem``)."""

from ccrcc_grade.core.exports import lazy_getattr

_EXPORTS = {
    "make_cohort": "synth",
    "bench": "bench",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
