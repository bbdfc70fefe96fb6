"""Is the cohort large enough? Riley et al.'s minimum sample sizes, for developing a model and for
validating one, from the cohort's prevalence and the model's AUC.

Own implementation of the published formulas (the maintained packages, pmsampsize and
pmvalsampsize, are GPL):

* development (Riley et al., BMJ 2020;368:m441), binary outcome, P candidate parameters:
  (i) expected uniform shrinkage >= S = 0.9: n = P / ((S - 1) ln(1 - R2cs / S));
  (ii) optimism in Nagelkerke's R2 <= 0.05: the same with S = R2cs / (R2cs + 0.05 max R2cs);
  (iii) the overall risk within +-0.05: n = (1.96 / 0.05)^2 phi (1 - phi);
  R2cs is anticipated from the AUC as Riley et al. (Diagn Progn Res 2022;6:16) do: the linear
  predictor normal with equal variance in both grades, mean difference sqrt(2) Phi^-1(AUC); the
  expected log-likelihood of that model is integrated numerically here (they simulate).
* validation (Riley et al., Stat Med 2021;40:4230), targets as the paper's: O/E with a 95% CI of
  width 0.2 (SE of ln O/E 0.051), calibration slope with CI width 0.2 (SE 0.051, the information
  matrix of the same binormal linear predictor), AUC with CI width 0.1 (SE 0.0255, Newcombe's
  variance).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm

DEV_SHRINKAGE = 0.9
DEV_OPTIMISM = 0.05
DEV_RISK_MARGIN = 0.05
VAL_SE_LN_OE = 0.051  # 95% CI of O/E about 0.9-1.1
VAL_SE_SLOPE = 0.051  # 95% CI width 0.2
VAL_SE_AUC = 0.0255  # 95% CI width 0.1


def _binormal(prevalence: float, auc: float, points: int = 4001) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid x, its density (mixture of the grades) and the true P(high | x) of the equal-variance
    binormal model with this prevalence and AUC."""
    mu = math.sqrt(2) * norm.ppf(auc)
    x = np.linspace(-8, 8 + mu, points)
    f0, f1 = norm.pdf(x), norm.pdf(x, mu)
    dens = (1 - prevalence) * f0 + prevalence * f1
    p = prevalence * f1 / dens
    return x, dens * (x[1] - x[0]), p


def anticipated_r2cs(prevalence: float, auc: float) -> float:
    """Cox-Snell R2 of a model with this AUC at this prevalence (per patient, expected)."""
    _, w, p = _binormal(prevalence, auc)
    p = np.clip(p, 1e-12, 1 - 1e-12)
    ll_model = float(np.sum(w * (p * np.log(p) + (1 - p) * np.log(1 - p))))
    ll_null = prevalence * math.log(prevalence) + (1 - prevalence) * math.log(1 - prevalence)
    return 1 - math.exp(-2 * (ll_model - ll_null))


def max_r2cs(prevalence: float) -> float:
    ll_null = prevalence * math.log(prevalence) + (1 - prevalence) * math.log(1 - prevalence)
    return 1 - math.exp(2 * ll_null)


def _shrinkage_n(parameters: int, r2: float, s: float) -> float:
    return parameters / ((s - 1) * math.log(1 - r2 / s))


def development(prevalence: float, auc: float | None, parameters: int, r2cs: float | None = None) -> dict:
    """Riley's three development criteria and their maximum (patients, events, events per
    parameter); the anticipated Cox-Snell R2 from the AUC unless ``r2cs`` is given."""
    _check(prevalence, auc if r2cs is None else 0.75)
    r2 = anticipated_r2cs(prevalence, auc) if r2cs is None else r2cs
    s2 = r2 / (r2 + DEV_OPTIMISM * max_r2cs(prevalence))
    crit = {
        "shrinkage": math.ceil(_shrinkage_n(parameters, r2, DEV_SHRINKAGE)),
        "optimism": math.ceil(_shrinkage_n(parameters, r2, s2)),
        "overall_risk": math.ceil((1.96 / DEV_RISK_MARGIN) ** 2 * prevalence * (1 - prevalence)),
    }
    n = max(crit.values())
    return {
        "criteria": crit,
        "n": n,
        "events": math.ceil(n * prevalence),
        "events_per_parameter": round(n * prevalence / parameters, 1),
        "r2cs": r2,
        "parameters": parameters,
    }


def _auc_se(auc: float, n: float, prevalence: float) -> float:
    """Newcombe's (2006) standard error of the AUC for n patients at this prevalence."""
    m = n / 2 - 1
    v = (
        auc
        * (1 - auc)
        * (1 + m * (1 - auc) / (2 - auc) + m * auc / (1 + auc))
        / (n * n * prevalence * (1 - prevalence))
    )
    return math.sqrt(v)


def validation(prevalence: float, auc: float) -> dict:
    """Riley's validation criteria (O/E, calibration slope, AUC) and their maximum."""
    _check(prevalence, auc)
    x, w, p = _binormal(prevalence, auc)
    lp = np.log(np.clip(p, 1e-12, 1 - 1e-12) / np.clip(1 - p, 1e-12, 1))
    v = p * (1 - p)
    i_a, i_ab, i_b = float(np.sum(w * v)), float(np.sum(w * v * lp)), float(np.sum(w * v * lp * lp))
    crit = {
        "o_e": math.ceil((1 - prevalence) / (prevalence * VAL_SE_LN_OE**2)),
        "calibration_slope": math.ceil(i_a / (VAL_SE_SLOPE**2 * (i_a * i_b - i_ab**2))),
        "auc": math.ceil(brentq(lambda n: _auc_se(auc, n, prevalence) - VAL_SE_AUC, 10, 1e7)),
    }
    n = max(crit.values())
    return {"criteria": crit, "n": n, "events": math.ceil(n * prevalence)}


def _check(prevalence: float, auc: float) -> None:
    from ccrcc_grade.core.errors import CcrccError

    if not (0 < prevalence < 1) or not math.isfinite(prevalence):
        raise CcrccError(f"sample size: prevalence must be between 0 and 1, got {prevalence}")
    if not (0.5 < auc < 1) or not math.isfinite(auc):
        raise CcrccError(f"sample size: the AUC must be between 0.5 and 1 (exclusive), got {auc}")
