"""ccrcc_grade.stats.samplesize: Riley et al.'s minimum sample sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.stats.samplesize import anticipated_r2cs, development, validation


def test_development_matches_the_papers_worked_example():
    """pmsampsize's example (Riley et al. BMJ 2020): R2cs 0.288, 24 parameters, prevalence 0.174
    -> criteria 623 (shrinkage), 662 (optimism), 221 (overall risk); 662 patients, EPP 4.8."""
    d = development(0.174, None, 24, r2cs=0.288)
    assert d["criteria"] == {"shrinkage": 623, "optimism": 662, "overall_risk": 221}
    assert d["n"] == 662 and d["events_per_parameter"] == pytest.approx(4.8, abs=0.05)


def test_anticipated_r2_agrees_with_a_simulated_binormal_model():
    import statsmodels.api as sm
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    prev, auc, n = 0.4, 0.8, 200_000
    y = rng.random(n) < prev
    x = rng.normal(size=n) + y * math.sqrt(2) * norm.ppf(auc)
    fit = sm.GLM(y.astype(float), sm.add_constant(x), family=sm.families.Binomial()).fit()
    r2 = 1 - math.exp(2 * (fit.llnull - fit.llf) / n)
    assert anticipated_r2cs(prev, auc) == pytest.approx(r2, rel=0.02)


def test_validation_sizes_give_the_targeted_precision():
    from ccrcc_grade.stats.calibration import calibration_with_ci

    v = validation(0.4, 0.8)
    assert v["n"] == max(v["criteria"].values()) and v["criteria"]["o_e"] == math.ceil(0.6 / (0.4 * 0.051**2))
    # at the O/E criterion's n, a calibrated model's O/E interval is ~0.2 wide
    n = v["criteria"]["o_e"]
    y = np.zeros(n)
    y[: round(0.4 * n)] = 1
    lo, hi = calibration_with_ci(y, np.full(n, y.mean()))["o_e"]["ci95"]
    assert hi - lo == pytest.approx(0.2, abs=0.01)
    assert validation(0.4, 0.9)["criteria"]["auc"] < v["criteria"]["auc"]  # a higher AUC is estimated more precisely


@pytest.mark.parametrize(
    "prev, auc", [(0, 0.8), (1.2, 0.8), (float("nan"), 0.8), (0.3, 0.5), (0.3, 1.0), (0.3, math.inf)]
)
def test_impossible_inputs_are_refused(prev, auc):
    with pytest.raises(CcrccError):
        validation(prev, auc)
