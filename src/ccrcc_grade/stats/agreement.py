"""Agreement between readers who boxed the same slices (the study's ICC > 0.9 between two
urologists), and between the grades their boxes lead to.

* ICC(2,1) (two-way random effects, absolute agreement, single rater; McGraw & Wong's ICC(A,1))
  and ICC(3,1) (two-way mixed, consistency, single rater; ICC(C,1)) with 95% CIs, computed by
  pingouin (validated in the tests on Shrout & Fleiss's 1979 example; its CIs unrounded);
* IoU of the two boxes on every slice both readers boxed, and the agreement of the slice ranges
  (which slices each reader boxed);
* for predictions: ICC of P(high) over patients, Cohen's kappa of the decisions (scikit-learn)
  and the flip rate (patients whose decision differs between two readers' boxes).
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np

ICC_TYPES = {"ICC2": ("ICC(A,1)", "ICC2"), "ICC3": ("ICC(C,1)", "ICC3")}  # pingouin >= 0.7 and older names
MIN_ICC_TARGETS = 3


def icc(ratings: np.ndarray) -> dict:
    """{"ICC2": {"value", "ci95"}, "ICC3": {...}, "n"} for ``ratings`` of shape (targets, readers).

    Fewer than ``MIN_ICC_TARGETS`` targets, or no variation at all: values None with the reason."""
    import pandas as pd
    import pingouin as pg

    r = np.asarray(ratings, dtype=float)
    n, k = r.shape
    out: dict = {"n": int(n), "readers": int(k)}
    why = None
    if n < MIN_ICC_TARGETS:
        why = f"{n} targets; an ICC needs >= {MIN_ICC_TARGETS}"
    elif k < 2:
        why = "one reader"
    elif np.ptp(r) == 0:
        why = "every rating is the same"
    if why:
        return out | {name: {"value": None, "ci95": None, "note": f"not estimable: {why}"} for name in ICC_TYPES}
    df = pd.DataFrame({"target": np.repeat(np.arange(n), k), "reader": np.tile(np.arange(k), n), "rating": r.ravel()})
    saved = pg.options.get("round.column.CI95")
    pg.options["round.column.CI95"] = None  # pingouin rounds CIs to 2 decimals by default: keep them exact
    try:  # zero residual variance (identical ratings) divides by zero there: handled below
        with np.errstate(divide="ignore", invalid="ignore"):
            table = pg.intraclass_corr(df, targets="target", raters="reader", ratings="rating")
    finally:
        pg.options["round.column.CI95"] = saved
    for name, spellings in ICC_TYPES.items():
        row = table[table["Type"].isin(spellings)].iloc[0]
        lo, hi = (float(v) for v in row["CI95"])
        out[name] = {"value": float(row["ICC"]), "ci95": [lo, hi]}
        if not (np.isfinite(lo) and np.isfinite(hi)):  # e.g. readers differing by a constant: MSE 0
            out[name]["ci95"] = None
            out[name]["ci_note"] = "no CI: no residual variance (the readers differ by a constant, if at all)"
    return out


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two boxes (x_min, y_min, x_max, y_max)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def summary(values: list[float] | np.ndarray) -> dict:
    """{"mean", "sd", "median", "min", "max", "n"} of finite values."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"n": 0, "mean": None, "sd": None, "median": None, "min": None, "max": None}
    return {
        "n": int(len(v)),
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "median": float(np.median(v)),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def box_measures(box: tuple[float, float, float, float], row_mm: float = 1.0, col_mm: float = 1.0) -> dict:
    """Width, height, area and centre of a box in mm (pixels where the spacing is unknown)."""
    x0, y0, x1, y1 = box
    return {
        "width": (x1 - x0) * col_mm,
        "height": (y1 - y0) * row_mm,
        "area": (x1 - x0) * col_mm * (y1 - y0) * row_mm,
        "center_x": (x0 + x1) / 2 * col_mm,
        "center_y": (y0 + y1) / 2 * row_mm,
    }


def slice_range_agreement(sets: list[set]) -> dict:
    """Which slices each reader boxed, per patient and phase: Jaccard index of every pair of
    readers' slice sets, and the slices boxed by one reader only."""
    jac, only = [], 0
    for a, b in combinations(sets, 2):
        union = len(a | b)
        jac.append(len(a & b) / union if union else 1.0)
        only += len(a ^ b)
    return {"jaccard": float(np.mean(jac)) if jac else math.nan, "slices_one_reader_only": only}


def prediction_agreement(probs: np.ndarray, threshold: float) -> dict:
    """``probs`` (patients, readers): ICC of P(high), Cohen's kappa of the decisions (mean over
    pairs of readers) and the flip rate (share of patient-pairs whose decision differs)."""
    from sklearn.metrics import cohen_kappa_score

    p = np.asarray(probs, dtype=float)
    high = p >= threshold
    kappas, flips = [], []
    for i, j in combinations(range(p.shape[1]), 2):
        flips.append(float(np.mean(high[:, i] != high[:, j])))
        if len(np.unique(np.concatenate([high[:, i], high[:, j]]))) < 2:
            kappas.append(math.nan)  # every decision the same: kappa undefined (agreement is complete)
        else:
            kappas.append(float(cohen_kappa_score(high[:, i], high[:, j])))
    kappa = float(np.nanmean(kappas)) if np.any(np.isfinite(kappas)) else None
    iu = np.triu_indices(p.shape[1], 1)
    out = {
        "n_patients": int(p.shape[0]),
        "threshold": float(threshold),
        "icc_prob_high": icc(p),
        "kappa": kappa,
        "flip_rate": float(np.mean(flips)),
        "abs_diff_prob_high": summary(np.abs(p[:, iu[0]] - p[:, iu[1]]).ravel()),
    }
    if kappa is None:
        out["kappa_note"] = "not estimable: every decision is the same grade"
    return out
