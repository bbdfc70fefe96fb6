"""Calibration of patient-level probabilities: intercept and slope by maximum likelihood with
Wald confidence intervals, observed/expected ratio, expected calibration error.

* calibration intercept ("calibration-in-the-large", logit(P) = a + logit(p)) and slope
  (logit(P) = a + b logit(p)) (Van Calster et al., J Clin Epidemiol 2016: ideal 0 and 1), by a
  two-parameter Newton-Raphson written here because the intercept needs an offset term that
  scikit-learn's LogisticRegression has no slot for (the tests check it against statsmodels'
  GLM, which is too heavy to call per bootstrap resample or subgroup); separation of the grades
  by p, where no maximum likelihood estimate exists, is detected explicitly and reported as not
  estimable, never as a huge number;
* O/E: observed events over the sum of predicted probabilities, with the CI of Riley et al.
  (BMJ 2024, external validation sample size): exp(ln(O/E) +- z sqrt((1 - phi) / (n phi)));
* expected calibration error over 10 equal-width bins, each weighted by its share of patients
  (Naeini et al., AAAI 2015).

Used by ``evaluate`` (per subgroup), ``recalibrate`` and the study's evidence.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import expit
from scipy.stats import norm


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


def logistic_fit(x: np.ndarray, y: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(coefficients, covariance = inverse information, log-likelihood) of a logistic model with
    an offset; None where ``_newton`` finds no estimate."""
    y = np.asarray(y, dtype=float)
    beta = _newton(x, y, offset)
    if beta is None:
        return None
    eta = offset + x @ beta
    mu = expit(eta)
    info = x.T @ (x * (mu * (1 - mu))[:, None])
    try:
        cov = np.linalg.inv(info)
    except np.linalg.LinAlgError:
        return None
    return beta, cov, float(np.sum(y * eta - np.logaddexp(0.0, eta)))


def _wald(est: float, se: float, level: float) -> list[float]:
    z = float(norm.ppf((1 + level) / 2))
    return [est - z * se, est + z * se]


def calibration_with_ci(y: np.ndarray, p: np.ndarray, level: float = 0.95) -> dict:
    """Calibration intercept, slope and O/E each as {"value", "ci95", "ci_method"} (Wald from the
    fit's information; the O/E interval of Riley et al.), the ECE, and "n"; an entry whose
    estimate does not exist is {"value": None, "reason"}."""
    y = np.asarray(y, dtype=float)
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    out: dict = {"n": int(len(y)), "ece": expected_calibration_error(y, p)}
    if len(np.unique(y)) < 2:
        why = {"value": None, "reason": "one grade only"}
        return {**out, "calibration_intercept": why, "calibration_slope": why, "o_e": why}
    lp = logit(p)
    fit_a = logistic_fit(np.ones((len(y), 1)), y, lp)
    out["calibration_intercept"] = (
        {"value": None, "reason": "the fit did not converge"}
        if fit_a is None
        else {
            "value": float(fit_a[0][0]),
            "ci95": _wald(float(fit_a[0][0]), math.sqrt(fit_a[1][0, 0]), level),
            "ci_method": "Wald (slope fixed at 1)",
        }
    )
    why = separation(y, p)
    fit_b = None if why else logistic_fit(np.column_stack([np.ones(len(y)), lp]), y, np.zeros(len(y)))
    out["calibration_slope"] = (
        {"value": None, "reason": f"not estimable: {why or 'the fit did not converge'}"}
        if fit_b is None
        else {
            "value": float(fit_b[0][1]),
            "ci95": _wald(float(fit_b[0][1]), math.sqrt(fit_b[1][1, 1]), level),
            "ci_method": "Wald",
        }
    )
    observed, expected = float(y.sum()), float(p.sum())
    phi = observed / len(y)
    oe = observed / expected
    half = float(norm.ppf((1 + level) / 2)) * math.sqrt((1 - phi) / (len(y) * phi))
    out["o_e"] = {
        "value": oe,
        "ci95": [oe * math.exp(-half), oe * math.exp(half)],
        "ci_method": "Riley et al. 2024 (ln O/E)",
    }
    return out
