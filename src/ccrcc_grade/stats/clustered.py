"""Image-level inference with the patient as the unit of independence.

Slices of one patient share the tumour, the scanner and the reader's box, so their predictions
are strongly correlated; treating them as independent cases (the study's image-level DeLong
and McNemar) rejects a true null hypothesis far more often than the nominal 5% (the test suite
simulates it). What is valid, and what ``compare`` and the report print at image level:

* **Obuchowski's clustered AUC variance** (Obuchowski, Biometrics 1997;53:567-578;
  ``metrics.obuchowski``, which also gives Table 3's image-level AUC CIs): DeLong's placement
  values summed per patient; the covariance of two models' AUCs on the same slices gives a paired
  Z test. With one slice per patient it equals DeLong's variance (tested).
* **a patient-cluster bootstrap** of the AUC difference, stratified by grade (high- and
  low-grade patients resampled separately, each with all its slices), so every resample has
  both grades and none is dropped.
* **Durkalski's clustered McNemar** (Durkalski et al., Stat Med 2003;22:2417-2428):
  X^2 = (sum_k (b_k - c_k))^2 / sum_k (b_k - c_k)^2 over patients k, b_k and c_k the slices only
  model A or only model B classified correctly.

None of the three is in scipy, statsmodels or scikit-learn, so they are written here on top of
``metrics.placement_values`` (which pROC's DeLong values validate).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from ccrcc_grade.core.config import N_BOOT
from ccrcc_grade.stats.metrics import MIN_DELONG_PER_CLASS, obuchowski, placement_values
from ccrcc_grade.stats.resample import (
    cluster_index,
    patients_per_grade,
    strata_members,
    stratified_cluster_resample,
)


def clustered_auc_test(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, clusters: list[str] | np.ndarray) -> dict:
    """Paired test of AUC(a) = AUC(b) on the same slices with Obuchowski's clustered covariance."""
    y = np.asarray(y).astype(int)
    n_high, n_low = patients_per_grade(y, clusters)
    base = {"test": "Obuchowski clustered AUC (patients as clusters)", "n_patients_high": n_high}
    base["n_patients_low"] = n_low
    if min(n_high, n_low) < MIN_DELONG_PER_CLASS:
        aucs = placement_values(y, np.vstack([p_a, p_b]))[0]
        return base | {
            "auc_a": float(aucs[0]),
            "auc_b": float(aucs[1]),
            "auc_diff": float(aucs[0] - aucs[1]),
            "z": math.nan,
            "p": math.nan,
            "estimable": False,
            "reason": f"not estimable: {n_high} high- and {n_low} low-grade patients; the clustered test needs "
            f">= {MIN_DELONG_PER_CLASS} of each",
        }
    aucs, cov = obuchowski(y, np.vstack([p_a, p_b]), clusters)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    out = base | {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "auc_diff": diff}
    if var <= 1e-15:
        return out | {
            "z": math.nan,
            "p": math.nan,
            "estimable": False,
            "reason": "not estimable: zero variance of the AUC difference (both models order the slices alike)",
        }
    z = diff / math.sqrt(var)
    h = stats.norm.ppf(0.975) * math.sqrt(var)
    return out | {
        "z": float(z),
        "p": float(2 * stats.norm.sf(abs(z))),
        "auc_diff_ci95": [diff - h, diff + h],  # the interval of the same variance, so it agrees with P
        "estimable": True,
    }


def _auc_rows(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """AUC (Mann-Whitney, ties 1/2) of each row of ``s`` against labels ``y``."""
    n1 = int(y.sum())
    n0 = len(y) - n1
    r = stats.rankdata(s, axis=1)
    return (r[:, y == 1].sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def cluster_bootstrap_auc_diff(
    y: np.ndarray,
    p_a: np.ndarray,
    p_b: np.ndarray,
    clusters: list[str] | np.ndarray,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Percentile CI of AUC(a) - AUC(b) from a grade-stratified patient-cluster bootstrap."""
    y = np.asarray(y).astype(int)
    s = np.vstack([np.asarray(p_a, dtype=float), np.asarray(p_b, dtype=float)])
    strata = strata_members(y, clusters)
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for b in range(n_boot):
        idx = stratified_cluster_resample(strata, rng)
        yb = y[idx]
        if yb.min() == yb.max():  # only possible with mixed patients alone; counted below
            diffs[b] = np.nan
            continue
        a = _auc_rows(yb, s[:, idx])
        diffs[b] = a[0] - a[1]
    ok = diffs[np.isfinite(diffs)]
    q = ((1 - level) / 2 * 100, (1 + level) / 2 * 100)
    ci = [float(np.percentile(ok, q[0])), float(np.percentile(ok, q[1]))] if len(ok) else [math.nan, math.nan]
    return {
        "ci95": ci,
        "method": "patient-cluster bootstrap, stratified by grade",
        "resamples": int(n_boot),
        "resamples_used": int(len(ok)),
        "seed": seed,
    }


def clustered_mcnemar(correct_a: np.ndarray, correct_b: np.ndarray, clusters: list[str] | np.ndarray) -> dict:
    """Durkalski's McNemar test for clustered matched pairs (slices within patients)."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    inv, n_clusters = cluster_index(clusters)
    bk = np.bincount(inv, weights=(a & ~b).astype(float), minlength=n_clusters)
    ck = np.bincount(inv, weights=(~a & b).astype(float), minlength=n_clusters)
    d = bk - ck
    out = {
        "test": "Durkalski clustered McNemar (patients as clusters)",
        "a_only_correct": int(bk.sum()),
        "b_only_correct": int(ck.sum()),
        "discordant_patients": int(np.sum((bk + ck) > 0)),
    }
    den = float(np.sum(d**2))
    if den == 0:  # no patient with more slices right by one model than by the other
        return out | {"statistic": 0.0, "p": 1.0}
    x2 = float(d.sum() ** 2 / den)
    return out | {"statistic": x2, "p": float(stats.chi2.sf(x2, 1))}
