"""Calibration and clinical usefulness of patient-level probabilities.

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
from scipy.special import expit

DCA_THRESHOLDS = np.round(np.arange(0.05, 0.6001, 0.01), 2)  # the 0.05-0.60


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _newton(x: np.ndarray, y: np.ndarray, offset: np.ndarray, iters: int = 100) -> np.ndarray | None:
    """Logistic maximum likelihood of y on columns x with an offset (Newton-Raphson with step
    halving); None when the information matrix is singular or it does not converge. Separation is
    detected before calling it (``separation``), so no cap on the coefficients is needed: a slope
    of 56 with SE 8 is an estimate, not a failure."""
    beta = np.zeros(x.shape[1])

    def loglik(b: np.ndarray) -> float:
        eta = offset + x @ b
        return float(np.sum(y * eta - np.logaddexp(0.0, eta)))

    ll = loglik(beta)
    for _ in range(iters):
        mu = expit(offset + x @ beta)
        w = mu * (1 - mu)
        hess = x.T @ (x * w[:, None])
        grad = x.T @ (y - mu)
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            return None
        for _ in range(30):  # halve the step until the likelihood does not fall
            new = beta + step
            new_ll = loglik(new)
            if new_ll >= ll - 1e-12:
                break
            step = step / 2
        beta, ll = new, new_ll
        if not np.all(np.isfinite(beta)):
            return None
        if np.max(np.abs(step)) < 1e-10:
            return beta
    return None


def separation(y: np.ndarray, p: np.ndarray) -> str | None:
    """Why the calibration slope has no maximum-likelihood estimate, or None when it has one.

    With one predictor (the logit of p) the slope diverges exactly when the two grades are
    (quasi-)completely separated by p - every high-grade probability >= every low-grade one, or
    the reverse - or when p is constant."""
    y = np.asarray(y).astype(int)
    lp = logit(p)
    if np.ptp(lp) == 0:
        return "the probabilities are all equal"
    hi, lo = lp[y == 1], lp[y == 0]
    if hi.min() >= lo.max():
        return "the probabilities separate the grades completely (every high-grade patient above every low-grade one)"
    if lo.min() >= hi.max():
        return "the probabilities separate the grades completely, in the wrong direction"
    return None


def calibration_intercept_slope(y: np.ndarray, p: np.ndarray) -> tuple[float | None, float | None]:
    """(intercept with the slope fixed at 1, slope); None where not estimable (one grade only;
    for the slope also separation, see ``separation``)."""
    y = np.asarray(y, dtype=float)
    if len(np.unique(y)) < 2:
        return None, None
    lp = logit(p)
    a = _newton(np.ones((len(y), 1)), y, lp)
    ab = None if separation(y, p) else _newton(np.column_stack([np.ones(len(y)), lp]), y, np.zeros(len(y)))
    return (None if a is None else float(a[0])), (None if ab is None else float(ab[1]))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    which = np.minimum((p * bins).astype(int), bins - 1)
    return float(
        sum(
            np.sum(which == b) / len(p) * abs(p[which == b].mean() - y[which == b].mean())
            for b in range(bins)
            if np.any(which == b)
        )
    )


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
