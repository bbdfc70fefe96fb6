"""``ingest``: a cohort folder of any layout -> validated :class:`Cohort` -> crops -> the cache.

The same three steps for every layout (the reader differs, nothing else): validate everything
first (``layouts.read_cohort``), decode and crop every box once (``cache.crop_rois``), write the
cache atomically (``cache.write_cache``). `ingest`, `study`, `evaluate --cohort` and the
benchmarks all come through here.
"""

from __future__ import annotations

import time
from pathlib import Path

from ccrcc_grade.core.config import PreprocessConfig
from ccrcc_grade.ingest.cache import check_output, crop_rois, write_cache
from ccrcc_grade.ingest.layouts import CohortSource, read_cohort


def ingest(
    source: CohortSource | Path | str,
    work: Path | str,
    cfg: PreprocessConfig | None = None,
    layout: str = "auto",
    overwrite: bool = False,
    show_progress: bool = True,
) -> dict:
    """Validate a cohort folder (a path, read with ``layout``, or a :class:`CohortSource`) and
    build its crop cache in ``work``; returns the ingest report (also WORK/ingest_report.json)."""
    source = CohortSource.of(source, layout)
    cfg = (cfg or PreprocessConfig()).validate()
    work = Path(work)
    check_output(work, overwrite, source.root)
    t0 = time.perf_counter()
    cohort = read_cohort(source, cfg)
    crops = crop_rois(cohort.rois, cfg, cohort.warnings, show_progress)
    seconds = time.perf_counter() - t0
    n_slices = len({(str(r.path), r.slice_index, r.source) for r in cohort.rois})
    return write_cache(
        cohort,
        crops,
        cfg,
        work,
        overwrite,
        {**cohort.report, "seconds": round(seconds, 3), "slices_per_second": round(n_slices / max(seconds, 1e-9), 1)},
    )
