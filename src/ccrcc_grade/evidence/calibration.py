"""Calibration and clinical usefulness of patient-level probabilities (the calibration fits
themselves live in ``stats.calibration``, which `evaluate` uses per subgroup too).

* calibration intercept ("calibration-in-the-large", logit(P) = a + logit(p)) and slope
  (logit(P) = a + b logit(p)) by maximum likelihood (Van Calster et al., J Clin Epidemiol 2016:
  ideal 0 and 1). Written here as a two-parameter Newton-Raphson because the intercept needs an
  offset term that scikit-learn's LogisticRegression has no slot for (the tests check it against
  statsmodels' GLM); separation of the grades by p (common on a few patients), where no maximum
  likelihood estimate exists, is detected explicitly and reported as not estimable, never as a
  huge number;
* expected calibration error over 10 equal-width bins [0, 0.1), [0.1, 0.2), ..., [0.9, 1.0]
  (the last closed), each weighted by its share of patients (Naeini et al., AAAI 2015);
* the Brier score (its patient-bootstrap CI comes with the other metrics from
  ``metrics.bootstrap_metrics``);
* decision-curve net benefit (Vickers & Elkin, Med Decis Making 2006):
  NB(pt) = TP/n - FP/n * pt / (1 - pt), against treat-all and treat-none.
"""

from __future__ import annotations

import numpy as np

from ccrcc_grade.stats.calibration import calibration_intercept_slope, expected_calibration_error, separation

DCA_THRESHOLDS = np.round(np.arange(0.05, 0.6001, 0.01), 2)  # the 0.05-0.60


def net_benefit(y: np.ndarray, p: np.ndarray, thresholds: np.ndarray = DCA_THRESHOLDS) -> np.ndarray:
    """Net benefit of treating patients with p >= pt, for every threshold probability pt."""
    y, p = np.asarray(y).astype(bool), np.asarray(p, dtype=float)
    n = len(y)
    out = []
    for pt in thresholds:
        pos = p >= pt
        out.append(np.sum(pos & y) / n - np.sum(pos & ~y) / n * pt / (1 - pt))
    return np.array(out, dtype=float)


def treat_all(y: np.ndarray, thresholds: np.ndarray = DCA_THRESHOLDS) -> np.ndarray:
    prev = float(np.mean(np.asarray(y, dtype=float)))
    return prev - (1 - prev) * thresholds / (1 - thresholds)


def calibration_summary(y: np.ndarray, p: np.ndarray) -> dict:
    """The calibration numbers of one model's patient-level probabilities beside the Brier score
    (which, with its patient-bootstrap CI, comes from ``metrics.bootstrap_metrics``)."""
    a, b = calibration_intercept_slope(y, p)
    out = {"ece": expected_calibration_error(y, p), "calibration_intercept": a, "calibration_slope": b}
    if b is None and len(np.unique(y)) == 2:
        out["calibration_slope_note"] = f"not estimable: {separation(y, p) or 'the fit did not converge'}"
    return out
