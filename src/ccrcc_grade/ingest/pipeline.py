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
    stats: list[dict | None] = []
    crops = crop_rois(cohort.rois, cfg, cohort.warnings, show_progress, stats=stats)
    seconds = time.perf_counter() - t0
    n_slices = len({(str(r.path), r.slice_index, r.source) for r in cohort.rois})
    return write_cache(
        cohort,
        crops,
        cfg,
        work,
        overwrite,
        {
            **cohort.report,
            "seconds": round(seconds, 3),
            "slices_per_second": round(n_slices / max(seconds, 1e-9), 1),
            "reference": training_reference(cohort.rois, stats),
        },
    )


def training_reference(rois: list, stats: list[dict | None]) -> dict:
    """Per phase: where the boxes lay, what they held and the series' geometry
    (`anatomy.reference`); a model trained on the phase carries it (the plausibility checks)."""
    from ccrcc_grade.ingest.anatomy import reference

    out = {}
    thickness: dict = {}
    for phase in sorted({r.phase for r in rois}):
        pairs = [(r, s) for r, s in zip(rois, stats) if r.phase == phase and s is not None]
        if not pairs:
            continue
        series = []
        for r, s in pairs:
            folder = r.path.parent
            if folder not in thickness:
                thickness[folder] = _slice_thickness(r)
            series.append({"pixel_spacing": s["pixel_spacing"], "slice_thickness": thickness[folder]})
        out[phase] = reference([s for _, s in pairs], series)
    return out


def _slice_thickness(roi: object) -> float | None:
    """A DICOM series' SliceThickness (one header per folder); None for other kinds."""
    if getattr(roi, "kind", "") != "dicom":
        return None
    from ccrcc_grade.io.dicom import read_header

    try:
        v = float(read_header(roi.path).SliceThickness)
    except (AttributeError, TypeError, ValueError):
        return None
    return v if v == v and abs(v) < 1e4 else None
