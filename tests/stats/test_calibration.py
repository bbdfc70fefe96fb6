"""ccrcc_grade.stats.calibration: intercept, slope and O/E with CIs, against statsmodels' GLM."""

from __future__ import annotations

import numpy as np
import pytest

from ccrcc_grade.stats.calibration import calibration_with_ci, logit


def _cohort(seed, n=300, a=-0.7, b=0.6):
    rng = np.random.default_rng(seed)
    p = 1 / (1 + np.exp(-rng.normal(0, 1.5, n)))
    truth = 1 / (1 + np.exp(-(a + b * logit(p))))
    return (rng.random(n) < truth).astype(int), p


def test_intercept_and_slope_cis_match_statsmodels():
    import statsmodels.api as sm

    y, p = _cohort(0)
    c = calibration_with_ci(y, p)
    lp = logit(p)
    slope = sm.GLM(y, sm.add_constant(lp), family=sm.families.Binomial()).fit()
    inter = sm.GLM(y, np.ones((len(y), 1)), family=sm.families.Binomial(), offset=lp).fit()
    assert c["calibration_slope"]["value"] == pytest.approx(slope.params[1], rel=1e-6)
    assert c["calibration_slope"]["ci95"] == pytest.approx(list(slope.conf_int()[1]), rel=1e-5)
    assert c["calibration_intercept"]["value"] == pytest.approx(inter.params[0], rel=1e-6)
    assert c["calibration_intercept"]["ci95"] == pytest.approx(list(inter.conf_int()[0]), rel=1e-5)
    # the miscalibration built in is found: slope CI below 1, intercept CI below 0
    assert c["calibration_slope"]["ci95"][1] < 1 and c["calibration_intercept"]["ci95"][1] < 0
    assert c["o_e"]["value"] == pytest.approx(y.sum() / p.sum())
    lo, hi = c["o_e"]["ci95"]
    assert lo < c["o_e"]["value"] < hi


def test_the_intervals_cover_a_calibrated_model_95_percent_of_the_time():
    hits = {"calibration_intercept": 0, "calibration_slope": 0, "o_e": 0}
    truth = {"calibration_intercept": 0.0, "calibration_slope": 1.0, "o_e": 1.0}
    reps = 300
    for seed in range(reps):
        c = calibration_with_ci(*_cohort(seed, n=200, a=0.0, b=1.0))
        for k in hits:
            lo, hi = c[k]["ci95"]
            hits[k] += lo < truth[k] < hi
    for k, h in hits.items():
        assert 0.91 <= h / reps <= 0.99, (k, h / reps)


@pytest.mark.parametrize(
    "y, p, key, why",
    [
        ([1, 1, 1], [0.2, 0.5, 0.9], "calibration_slope", "one grade only"),
        ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], "calibration_slope", "separate the grades"),
        ([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], "calibration_slope", "all equal"),
    ],
)
def test_not_estimable_says_why(y, p, key, why):
    c = calibration_with_ci(np.array(y), np.array(p))
    assert c[key]["value"] is None and why in c[key]["reason"]
