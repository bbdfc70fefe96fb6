"""How much the predicted grade depends on where exactly the box was drawn.

The study's rule boxes the tumour "1-2 mm beyond its longest diameters", so two readers who
both follow it can place each side of the box up to 1 mm apart. For a patient we draw K
plausible box sets: every side of every slice's box moved independently by the difference of
two margins drawn uniformly from the rule's 1-2 mm (a triangular shift on [-1, +1] mm; one
pixel counts as 1 mm where the image has no pixel spacing, as ``--margin-mm`` does), or - when a
second reader exists - by side differences resampled from the readers' observed disagreement.
Each set is graded like the original (same crops, model and aggregation) in one batch, and we
report the spread of P(high) over the K sets and how often the decision flips.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from ccrcc_grade.core.config import BOX_K
from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.threshold import decision_digits
from ccrcc_grade.ingest.cache import crop_rois
from ccrcc_grade.ingest.cohort import Roi
from ccrcc_grade.io.boxes import Box
from ccrcc_grade.stats.metrics import aggregate_patients

RULE_MM = (1.0, 2.0)  # the study's margin beyond the tumour's longest diameters


def rule_shifts(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Side shifts (mm, outward positive) between two boxes that both follow the 1-2 mm rule."""
    return rng.uniform(*RULE_MM, shape) - rng.uniform(*RULE_MM, shape)


def perturbed_boxes(
    rois: list[Roi], k: int, seed: int = 0, observed_shifts_mm: np.ndarray | None = None
) -> list[list[Roi]]:
    """K copies of ``rois``, each with every box side moved (see the module docstring).

    ``observed_shifts_mm``: side differences between two readers (any shape, mm); when given, the
    shifts are resampled from them instead of the rule."""
    rng = np.random.default_rng(seed)
    if observed_shifts_mm is not None:
        pool = np.asarray(observed_shifts_mm, dtype=float).ravel()
        pool = pool[np.isfinite(pool)]
        if not len(pool):
            raise CcrccError("no observed reader differences to resample box shifts from")
        shifts = rng.choice(pool, (k, len(rois), 4))
    else:
        shifts = rule_shifts(rng, (k, len(rois), 4))
    out = []
    for j in range(k):
        copies = []
        for i, r in enumerate(rois):
            row_mm, col_mm = r.spacing if r.spacing else (1.0, 1.0)  # as preprocess.margin_box reads it
            d = shifts[j, i]
            x0, y0, x1, y1 = r.box.as_tuple()
            nx0, ny0 = x0 - d[0] / col_mm, y0 - d[1] / row_mm  # outward: the left and top sides move down
            nx1, ny1 = x1 + d[2] / col_mm, y1 + d[3] / row_mm
            if nx1 - nx0 < 1 or ny1 - ny0 < 1:  # a box shrunk below a pixel keeps its side
                nx0, nx1 = (x0, x1) if nx1 - nx0 < 1 else (nx0, nx1)
                ny0, ny1 = (y0, y1) if ny1 - ny0 < 1 else (ny0, ny1)
            copies.append(dataclasses.replace(r, box=Box.from_corners(nx0, ny0, nx1, ny1)))
        out.append(copies)
    return out


BUDGET_S = 2.0  # seconds the robustness may add to grading one patient
MIN_PER_SLICE = 4  # perturbed boxes graded per slice at the least, whatever the budget


def box_robustness(
    predictor: object,
    rois: list[Roi],
    prob: float,
    threshold: float,
    k: int = BOX_K,
    seed: int = 0,
    observed_shifts_mm: np.ndarray | None = None,
    crops_per_s: float | None = None,
    budget_s: float = BUDGET_S,
) -> dict:
    """P(high) of one patient over ``k`` plausible box sets: {"k", "p_min", "p_max", "sd",
    "flip_rate", "method", "per_slice_boxes", "seconds"}; ``prob`` and ``threshold`` are the
    patient's probability and decision threshold with the boxes as drawn (a flip is a set on the
    other side of it).

    All crops go through the network in one batch. k x slices evaluations may not fit the time
    budget (``budget_s`` at ``crops_per_s``, the rate the caller measured for the patient's own
    crops): each slice is then graded at m < k perturbed boxes (at least ``MIN_PER_SLICE``) and
    each of the k sets takes one of its slice's m at random - the sides move independently across
    slices anyway, so the sets are draws from the same per-slice distributions, estimated from m
    points each; ``per_slice_boxes`` says m."""
    t0 = time.perf_counter()
    m = k
    if crops_per_s and k * len(rois) > budget_s * crops_per_s:
        m = max(MIN_PER_SLICE, min(k, int(budget_s * crops_per_s) // len(rois)))
    sets = perturbed_boxes(rois, m, seed, observed_shifts_mm)
    flat = [r for s in sets for r in s]
    crops = crop_rois(flat, predictor.preprocess, [], show_progress=False)
    probs = np.asarray(predictor(crops), dtype=float).reshape(m, len(rois))
    if m < k:  # set j takes perturbation pick[j, s] of slice s
        pick = np.random.default_rng([seed, 1]).integers(0, m, (k, len(rois)))
        probs = probs[pick, np.arange(len(rois))]
    agg = (predictor.meta.get("config") or {}).get("patient_aggregate", "mean")
    p = np.array([aggregate_patients(["p"] * len(rois), row, np.zeros(len(rois), int), agg)[2][0] for row in probs])
    flips = (p >= threshold) != (prob >= threshold)
    return {
        "k": int(k),
        "p_min": float(p.min()),
        "p_max": float(p.max()),
        "sd": float(p.std(ddof=1)) if k > 1 else 0.0,
        "flip_rate": float(flips.mean()),
        "method": (
            "box sides resampled from the readers' observed differences"
            if observed_shifts_mm is not None
            else "each box side moved independently within the study's 1-2 mm rule (triangular, +-1 mm)"
        ),
        "per_slice_boxes": int(m),
        "threshold": float(threshold),
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def robustness_text(prob: float, r: dict) -> str:
    """'P(high) 0.71, 0.64-0.78 over 20 plausible boxes (decision flips in 5%)', with as many
    decimals as it takes for the probability to show its side of the threshold (0.5049 against
    0.50 reads 0.505, never 0.50 beside a HIGH)."""
    digits = decision_digits(prob, r["threshold"])  # as threshold.decide prints the grade's line
    return (
        f"P(high) {prob:.{digits}f}, {r['p_min']:.{digits}f}-{r['p_max']:.{digits}f} over {r['k']} plausible "
        f"boxes (decision flips in {100 * r['flip_rate']:.0f}%)"
    )
