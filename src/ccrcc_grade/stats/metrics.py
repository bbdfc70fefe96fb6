"""Metrics and statistics for binary grade prediction (label 1 = high grade).

scikit-learn computes AUC, ROC, confusion matrices and the per-class scores; scipy gives the
distributions. DeLong's variance and the paired DeLong test are written here because neither
library implements them (the fast placement-value form of Sun & Xu 2014, validated against pROC
in the tests).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
from scipy import stats
from sklearn.metrics import brier_score_loss, confusion_matrix, roc_auc_score

from ccrcc_grade.core.config import N_BOOT
from ccrcc_grade.core.threshold import DEFAULT_THRESHOLD
from ccrcc_grade.stats.resample import cluster_index, patients_per_grade, strata_members, stratified_cluster_resample


def safe_auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """ROC AUC, or None when only one class is present (AUC undefined)."""
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return None
    return float(roc_auc_score(y, p))


def aggregate_patients(
    patient_ids: list[str], probs: np.ndarray, labels: np.ndarray, how: str = "mean"
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Slice probabilities -> one probability per patient (mean by default; median or max)."""
    fn = {"mean": np.mean, "median": np.median, "max": np.max}.get(how)
    if fn is None:
        raise ValueError(f"unknown aggregation {how!r}")
    groups: OrderedDict[str, list[int]] = OrderedDict()
    for i, pid in enumerate(patient_ids):
        groups.setdefault(pid, []).append(i)
    ids = list(groups)
    probs, labels = np.asarray(probs), np.asarray(labels)
    p = np.array([fn(probs[g]) for g in groups.values()], dtype=float)
    y = np.array([labels[g[0]] for g in groups.values()], dtype=int)
    return ids, y, p


# --- DeLong ---------------------------------------------------------------------------------


def placement_values(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and DeLong's placement values of one or more score vectors on the same cases.

    ``scores`` has shape (n,) or (k, n); returns (aucs (k,), v10 (k, m), v01 (k, n_controls)):
    v10 places each case (label 1) among the controls, v01 each control among the cases (ties
    count 1/2). Cases are expected to score higher - pROC's direction '<'."""
    y = np.asarray(y).astype(int)
    s = np.atleast_2d(np.asarray(scores, dtype=float))
    pos, neg = s[:, y == 1], s[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    if m < 1 or n < 1:
        raise ValueError("DeLong needs both classes")
    tx = stats.rankdata(pos, axis=1)
    ty = stats.rankdata(neg, axis=1)
    tz = stats.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:, :m] - tx) / n  # placement of each case among the controls
    v01 = 1.0 - (tz[:, m:] - ty) / m  # placement of each control among the cases
    return aucs, v10, v01


def delong(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance matrix for one or more score vectors on the same cases.

    ``scores`` has shape (n,) or (k, n); returns (aucs (k,), cov (k, k)). Cases are label 1
    (higher scores expected), controls label 0 - pROC's direction '<'."""
    aucs, v10, v01 = placement_values(y, scores)
    m, n, k = v10.shape[1], v01.shape[1], len(aucs)
    sx = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((k, k))
    sy = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((k, k))
    return aucs, sx / m + sy / n


def obuchowski(y: np.ndarray, scores: np.ndarray, clusters: list[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their clustered covariance matrix for one or more score vectors on the same units.

    ``scores`` has shape (n,) or (k, n); ``clusters`` names each unit's patient. A patient may hold
    units of both classes (Obuchowski's general case); in this project every slice of a patient
    carries the patient's grade. Raises ValueError with fewer than two clusters of a class."""
    y = np.asarray(y).astype(int)
    s = np.atleast_2d(np.asarray(scores, dtype=float))
    aucs, v10, v01 = placement_values(y, s)
    inv, n_clusters = cluster_index(clusters)
    pos, neg = inv[y == 1], inv[y == 0]
    m_i = np.bincount(pos, minlength=n_clusters).astype(float)
    n_i = np.bincount(neg, minlength=n_clusters).astype(float)
    i10, i01 = int(np.sum(m_i > 0)), int(np.sum(n_i > 0))
    if i10 < 2 or i01 < 2:
        raise ValueError(f"clustered AUC variance needs >= 2 patients of each class ({i10} and {i01})")
    big_m, big_n = float(m_i.sum()), float(n_i.sum())
    k = len(s)
    d10 = np.zeros((k, n_clusters))
    d01 = np.zeros((k, n_clusters))
    for j in range(k):
        d10[j] = np.bincount(pos, weights=v10[j], minlength=n_clusters) - m_i * aucs[j]
        d01[j] = np.bincount(neg, weights=v01[j], minlength=n_clusters) - n_i * aucs[j]
    s10 = i10 / ((i10 - 1) * big_m) * (d10 @ d10.T)
    s01 = i01 / ((i01 - 1) * big_n) * (d01 @ d01.T)
    s11 = n_clusters / (n_clusters - 1) * (d10 @ d01.T)
    cov = s10 / big_m + s01 / big_n + (s11 + s11.T) / (big_m * big_n)
    return aucs, cov


def wald_auc_ci(auc: float, var: float, level: float = 0.95) -> tuple[float, float]:
    """AUC +- z x SE (normal approximation), clipped to [0, 1]: DeLong's and Obuchowski's intervals."""
    z = stats.norm.ppf(0.5 + level / 2)
    se = math.sqrt(max(var, 0.0))
    return max(0.0, auc - z * se), min(1.0, auc + z * se)


def obuchowski_ci(
    y: np.ndarray, p: np.ndarray, clusters: list[str] | np.ndarray, level: float = 0.95
) -> tuple[float, float]:
    """Confidence interval of an image-level AUC with Obuchowski's clustered variance (normal
    approximation, clipped to [0, 1]); needs >= 2 patients of each class."""
    auc, cov = obuchowski(y, p, clusters)
    return wald_auc_ci(float(auc[0]), float(cov[0, 0]), level)


MIN_CI_PER_CLASS = 2  # DeLong's variance needs two cases of each class (pROC gives no interval below)


def delong_ci(y: np.ndarray, p: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """DeLong confidence interval of one AUC (normal approximation, clipped to [0, 1]); None with
    fewer than ``MIN_CI_PER_CLASS`` cases of a class, where half of the variance is not estimable."""
    y = np.asarray(y).astype(int)
    if min(int(np.sum(y == 1)), int(np.sum(y == 0))) < MIN_CI_PER_CLASS:
        return None
    auc, cov = delong(y, p)
    return wald_auc_ci(float(auc[0]), float(cov[0, 0]), level)


def auc_with_ci(y: np.ndarray, p: np.ndarray) -> dict:
    """A patient AUC with its DeLong CI and the numbers it rests on - {"value", "ci95", "ci_method",
    "n", "n_high"} in plain floats (it is stored in checkpoints); value None with one grade, no CI
    with fewer than ``MIN_CI_PER_CLASS`` patients of a grade."""
    y = np.asarray(y).astype(int)
    auc = safe_auc(y, p)
    ci = delong_ci(y, p) if auc is not None else None
    return {
        "value": auc,
        "ci95": [float(v) for v in ci] if ci else None,
        "ci_method": "DeLong" if ci else "none (fewer than 2 patients of a grade)",
        "n": int(len(y)),
        "n_high": int(np.sum(y == 1)),
    }


MIN_DELONG_PER_CLASS = 3  # fewer cases of a grade give no usable variance estimate


def delong_paired_test(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray) -> dict:
    """Paired DeLong test of AUC(a) = AUC(b) on the same cases (two-sided)."""
    aucs, cov = delong(y, np.vstack([p_a, p_b]))
    diff = aucs[0] - aucs[1]
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    n_pos, n_neg = int(np.sum(np.asarray(y) == 1)), int(np.sum(np.asarray(y) == 0))
    if n_pos < MIN_DELONG_PER_CLASS or n_neg < MIN_DELONG_PER_CLASS or var <= 1e-15:
        # zero variance (e.g. both models separate 2-3 patients perfectly) would give Z = inf and
        # P = 0: a test that cannot be computed must not read as a significant difference
        why = (
            f"{n_pos} high- and {n_neg} low-grade cases; DeLong's test needs >= {MIN_DELONG_PER_CLASS} of each"
            if min(n_pos, n_neg) < MIN_DELONG_PER_CLASS
            else "zero variance of the AUC difference (the cases are separated identically by both models)"
        )
        return {
            "auc_a": float(aucs[0]),
            "auc_b": float(aucs[1]),
            "auc_diff": float(diff),
            "auc_diff_ci95": [math.nan, math.nan],
            "z": math.nan,
            "p": math.nan,
            "estimable": False,
            "reason": f"not estimable: {why}",
        }
    else:
        z = diff / math.sqrt(var)
        pval = 2 * stats.norm.sf(abs(z))
        h = stats.norm.ppf(0.975) * math.sqrt(var)
        ci = (diff - h, diff + h)
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "auc_diff": float(diff),
        "auc_diff_ci95": [float(ci[0]), float(ci[1])],
        "z": float(z),
        "p": float(pval),
        "estimable": True,
    }


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Exact (binomial) McNemar test on paired correctness; discordant pairs b (a right, b wrong)
    and c (a wrong, b right)."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    n01 = int(np.sum(a & ~b))
    n10 = int(np.sum(~a & b))
    n = n01 + n10
    p = 1.0 if n == 0 else float(stats.binomtest(n01, n, 0.5).pvalue)
    return {"a_only_correct": n01, "b_only_correct": n10, "p": p}


# --- classification metrics with bootstrap CIs ---------------------------------------------


def point_metrics(y: np.ndarray, p: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """The study's metrics (per class: AUC, precision, sensitivity, specificity, F1; overall
    ACC, balanced accuracy, Brier score, confusion matrix) as plain numbers."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    pred = (p >= threshold).astype(int)
    cm = confusion_matrix(y, pred, labels=[0, 1])
    out: dict = {"accuracy": float(np.mean(pred == y)) if len(y) else float("nan")}
    per = {}
    for k, name in ((0, "low"), (1, "high")):
        tp = cm[k, k]
        fn = cm[k].sum() - tp
        fp = cm[:, k].sum() - tp
        tn = cm.sum() - tp - fn - fp
        prec = tp / (tp + fp) if tp + fp else float("nan")
        sens = tp / (tp + fn) if tp + fn else float("nan")
        spec = tn / (tn + fp) if tn + fp else float("nan")
        f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else float("nan")  # 0 when TP = 0
        auc = safe_auc((y == k).astype(int), p if k == 1 else 1 - p)
        per[name] = {
            "auc": float("nan") if auc is None else auc,
            "precision": float(prec),
            "sensitivity": float(sens),
            "specificity": float(spec),
            "f1": float(f1),
        }
    sens_vals = [per["low"]["sensitivity"], per["high"]["sensitivity"]]
    out["balanced_accuracy"] = float(np.mean(sens_vals))
    out["brier"] = float(brier_score_loss(y, p, pos_label=1)) if len(y) else float("nan")
    out.update(per)
    out["confusion_matrix"] = cm.tolist()
    return out


def _flatten(m: dict) -> dict[str, float]:
    flat = {k: m[k] for k in ("accuracy", "balanced_accuracy", "brier")}
    for c in ("low", "high"):
        for k, v in m[c].items():
            flat[f"{c}.{k}"] = v
    return flat


def _auc_mw(y: np.ndarray, p: np.ndarray) -> float:
    """AUC as the Mann-Whitney statistic (ties count 1/2), NaN with one class."""
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = stats.rankdata(p)
    return float((r[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def fast_flat_metrics(y: np.ndarray, p: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> dict[str, float]:
    """The flattened :func:`point_metrics` in plain numpy. The bootstrap calls this thousands of
    times, where scikit-learn's per-call validation would dominate the run time; a test checks
    it equals the scikit-learn version."""
    pred = p >= threshold
    yb = y.astype(bool)
    tp = float(np.sum(pred & yb))
    tn = float(np.sum(~pred & ~yb))
    fp = float(np.sum(pred & ~yb))
    fn = float(np.sum(~pred & yb))
    nan = float("nan")

    def div(a: float, b: float) -> float:
        return a / b if b else nan

    auc = _auc_mw(y, p)
    out = {"accuracy": div(tp + tn, len(y)), "brier": float(np.mean((p - y) ** 2)) if len(y) else nan}
    # class high: positives = 1; class low: positives = 0 (tn plays tp)
    for c, (a, b, f_p, f_n) in (("low", (tn, tp, fn, fp)), ("high", (tp, tn, fp, fn))):
        prec, sens, spec = div(a, a + f_p), div(a, a + f_n), div(b, b + f_p)
        f1 = div(2 * a, 2 * a + f_p + f_n)  # 0 when TP = 0; undefined only without any case or call
        out.update(
            {f"{c}.auc": auc, f"{c}.precision": prec, f"{c}.sensitivity": sens, f"{c}.specificity": spec, f"{c}.f1": f1}
        )
    out["balanced_accuracy"] = float(np.mean([out["low.sensitivity"], out["high.sensitivity"]]))
    return out


def exact_proportion_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson (exact binomial) interval of k successes in n: never narrower than the
    data allow, so 2/2 reads 0.16-1.00, not 1.00-1.00."""
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def bootstrap_metrics(
    y: np.ndarray,
    p: np.ndarray,
    groups: list[str] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Point metrics with percentile bootstrap CIs, resampling patients (``groups``) with
    replacement within their grade, so slices of one patient move together and every resample
    holds both grades; AUC CIs by DeLong at patient level (one row per patient) and by Obuchowski's
    clustered variance at image level, none with fewer than ``MIN_CI_PER_CLASS`` patients of a grade.

    Returns the metrics.json structure: every number is {"value": v, "ci95": [lo, hi], "n": ...};
    bootstrap intervals also carry "resamples" and "resamples_used" (a resample where a metric is
    undefined, e.g. precision with nobody called high, is counted, never silently dropped)."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    point = point_metrics(y, p, threshold)
    flat = _flatten(point)
    groups = list(groups) if groups is not None else [str(i) for i in range(len(y))]
    strata = strata_members(y, groups)
    n_patients = sum(len(s) for s in strata)
    rng = np.random.default_rng(seed)
    samples: dict[str, np.ndarray] = {k: np.empty(n_boot) for k in flat}
    for b in range(n_boot):
        idx = stratified_cluster_resample(strata, rng)
        for k, v in fast_flat_metrics(y[idx], p[idx], threshold).items():
            samples[k][b] = v
    lo_q, hi_q = (1 - level) / 2 * 100, (1 + level) / 2 * 100

    def ci(vals: np.ndarray) -> tuple[list[float], int]:
        a = vals[np.isfinite(vals)]
        return ([float(np.percentile(a, lo_q)), float(np.percentile(a, hi_q))] if len(a) else [math.nan] * 2), len(a)

    one_per_patient = n_patients == len(y)
    pat_high, pat_low = patients_per_grade(y, groups)
    pred = p >= threshold
    # denominators: every interval is reported with the number of cases it rests on
    counts = {"accuracy": (np.sum(pred == y.astype(bool)), len(y))}
    for c, pos in (("low", y == 0), ("high", y == 1)):
        called = ~pred if c == "low" else pred
        counts[f"{c}.sensitivity"] = (np.sum(called & pos), np.sum(pos))
        counts[f"{c}.specificity"] = (np.sum(~called & ~pos), np.sum(~pos))
        counts[f"{c}.precision"] = (np.sum(called & pos), np.sum(called))
    boot_method = "patient bootstrap, stratified by grade"  # patients resampled, their slices together
    result: dict = {}

    def entry_for(key: str) -> dict:
        interval, used = ci(samples[key])
        e = {
            "value": flat[key],
            "ci95": interval,
            "ci_method": boot_method,
            "resamples": int(n_boot),
            "resamples_used": int(used),
            "n": int(len(y)),
        }
        if key in counts:
            k, n = (int(v) for v in counts[key])
            e["n"] = n
            if one_per_patient and n:  # independent patients: the exact binomial interval, sound at small n
                e["ci95"] = list(exact_proportion_ci(k, n, level))
                e["ci_method"] = "Clopper-Pearson"
                del e["resamples"], e["resamples_used"]
        return e

    for k in ("accuracy", "balanced_accuracy", "brier"):
        result[k] = entry_for(k)
    for c in ("low", "high"):
        result[c] = {}
        for k in point[c]:
            entry = entry_for(f"{c}.{k}")
            if k == "auc":
                entry["n_positive"], entry["n_negative"] = (
                    int(np.sum(y == (c == "high"))),
                    int(np.sum(y != (c == "high"))),
                )
                del entry["resamples"], entry["resamples_used"]  # AUC intervals are not bootstrapped
                if min(pat_high, pat_low) < MIN_CI_PER_CLASS:
                    entry["ci95"] = [math.nan, math.nan]
                    entry["ci_method"] = "none"
                    entry["ci_note"] = (
                        f"no CI: {pat_high} high- and {pat_low} low-grade patients; an AUC interval needs "
                        f">= {MIN_CI_PER_CLASS} of each"
                    )
                else:  # DeLong for independent patients, Obuchowski's clustered variance for slices
                    yc, pc = (y, p) if c == "high" else (1 - y, 1 - p)
                    entry["ci95"] = list(delong_ci(yc, pc, level) if one_per_patient else obuchowski_ci(yc, pc, groups))
                    entry["ci_method"] = "DeLong" if one_per_patient else "Obuchowski (patients as clusters)"
            lo, hi = entry["ci95"]
            if np.isfinite(lo) and np.isfinite(hi) and lo == hi:
                entry["degenerate"] = True  # e.g. AUC 1.0 on a few patients: zero variance, not certainty
            result[c][k] = entry
    result["confusion_matrix"] = point["confusion_matrix"]
    result["n"] = int(len(y))
    result["n_patients"] = n_patients
    result["threshold"] = float(threshold)
    result["bootstrap"] = {"resamples": n_boot, "seed": seed, "unit": "patient", "stratified_by": "grade"}
    return result


def calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict:
    """Reliability curve (sklearn) plus calibration intercept-free slope summary via bins."""
    from sklearn.calibration import calibration_curve

    frac, mean_pred = calibration_curve(y, p, n_bins=bins, strategy="quantile" if len(y) >= 4 * bins else "uniform")
    return {"fraction_positive": frac.tolist(), "mean_predicted": mean_pred.tolist()}


OVERALL_METRICS = ("accuracy", "balanced_accuracy", "brier")  # one entry for both classes


def metric(level: dict, name: str, cls: str = "high") -> dict:
    """The ``{"value", "ci95", ...}`` entry of one metric in one level of a metrics dict (what
    ``bootstrap_metrics`` returns, ``metrics.json["patient"]``): accuracy, balanced accuracy and
    Brier score are overall, the others (auc, sensitivity, specificity, precision, f1) per class."""
    return level[name] if name in OVERALL_METRICS else level[cls][name]


def metric_value(level: dict, name: str, cls: str = "high") -> float:
    """The value of one metric (see :func:`metric`): the one way every module reads a metric."""
    return metric(level, name, cls)["value"]
