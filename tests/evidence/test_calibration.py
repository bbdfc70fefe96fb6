"""ccrcc_grade.evidence.calibration: net benefit, Brier, ECE, slope and intercept."""

from __future__ import annotations

import numpy as np
import pytest

from ccrcc_grade.evidence.calibration import calibration_summary, net_benefit, treat_all
from ccrcc_grade.stats.calibration import calibration_intercept_slope, expected_calibration_error

Y = np.array([1, 1, 0, 0, 1])


P = np.array([0.9, 0.4, 0.3, 0.6, 0.8])


def test_net_benefit_matches_hand_computation():
    # pt = 0.5: treated = {0.9, 0.6, 0.8}: TP 2, FP 1 of n 5 -> 2/5 - 1/5 * 0.5/0.5 = 0.2
    # pt = 0.25: all 5 treated: TP 3, FP 2 -> 3/5 - 2/5 * (1/3) = 0.4667
    # pt = 0.85: only 0.9 treated: TP 1 -> 1/5 = 0.2
    nb = net_benefit(Y, P, np.array([0.25, 0.5, 0.85]))
    assert nb == pytest.approx([0.6 - 0.4 / 3, 0.2, 0.2])
    # treat all: prevalence 3/5 - 2/5 * pt/(1-pt)
    assert treat_all(Y, np.array([0.25, 0.5])) == pytest.approx([0.6 - 0.4 / 3, 0.2])
    # a perfect model's net benefit is the prevalence at every threshold
    assert net_benefit(Y, Y.astype(float), np.array([0.1, 0.6])) == pytest.approx([0.6, 0.6])


def test_brier_and_ece_match_hand_computation():
    from ccrcc_grade.stats.metrics import point_metrics  # the Brier score every model's table entry reports

    # Brier: ((.1)^2 + (.6)^2 + (.3)^2 + (.6)^2 + (.2)^2) / 5 = (0.01+0.36+0.09+0.36+0.04)/5
    assert point_metrics(Y, P)["brier"] == pytest.approx(0.86 / 5)
    # 10 equal-width bins: 0.3 -> bin 3 (y 0), 0.4 -> 4 (y 1), 0.6 -> 6 (y 0), 0.8 -> 8 (y 1), 0.9 -> 9 (y 1)
    # ECE = (|.3-0| + |.4-1| + |.6-0| + |.8-1| + |.9-1|) / 5
    assert expected_calibration_error(Y, P) == pytest.approx((0.3 + 0.6 + 0.6 + 0.2 + 0.1) / 5)


def test_calibration_slope_and_intercept():
    from scipy.optimize import minimize_scalar
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    lp = rng.normal(0, 1.5, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-lp))).astype(int)
    p_true = 1 / (1 + np.exp(-lp))
    a, b = calibration_intercept_slope(y, p_true)
    assert abs(b - 1) < 0.1 and abs(a) < 0.1  # well calibrated: slope ~1, intercept ~0
    over = 1 / (1 + np.exp(-2 * lp))  # overconfident model: slope ~0.5
    a2, b2 = calibration_intercept_slope(y, over)
    ref = LogisticRegression(C=np.inf).fit(np.log(over / (1 - over))[:, None], y)  # independent fit
    assert b2 == pytest.approx(ref.coef_[0, 0], rel=1e-4) and 0.4 < b2 < 0.6
    # intercept with the slope fixed at 1: maximise the likelihood of a + logit(p) by scipy
    off = np.log(over / (1 - over))
    nll = lambda c: -np.sum(y * (c + off) - np.log1p(np.exp(c + off)))  # noqa: E731
    assert a2 == pytest.approx(minimize_scalar(nll).x, abs=1e-5)
    # perfect separation: not estimable, never a huge number
    assert calibration_intercept_slope(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))[1] is None


def test_a_steep_but_estimable_slope_is_estimated_as_statsmodels_does():
    """The audit's case: a slope of ~56 with SE ~8 is well estimated; the old fit gave up at 50."""
    import statsmodels.api as sm

    rng = np.random.default_rng(1)
    lp = rng.uniform(-0.06, 0.06, 600)  # probabilities within ~0.485-0.515 ...
    y = (rng.random(600) < 1 / (1 + np.exp(-56 * lp))).astype(int)  # ... that are strongly predictive
    p = 1 / (1 + np.exp(-lp))
    x = np.log(p / (1 - p))
    glm = sm.GLM(y, sm.add_constant(x), family=sm.families.Binomial()).fit()
    assert 35 < glm.params[1] < 80 and glm.bse[1] < 15  # a real, estimable slope
    _, b = calibration_intercept_slope(y, p)
    assert b == pytest.approx(glm.params[1], rel=1e-6)
    # and the intercept (slope fixed at 1) equals statsmodels' GLM with the logit as offset
    a, _ = calibration_intercept_slope(y, p)
    off = sm.GLM(y, np.ones((len(y), 1)), family=sm.families.Binomial(), offset=x).fit()
    assert a == pytest.approx(off.params[0], abs=1e-6)


@pytest.mark.parametrize(
    ("y", "p", "why"),
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], "separate the grades completely (every high"),
        ([0, 1, 0, 1], [0.1, 0.5, 0.5, 0.9], "separate the grades completely (every high"),  # quasi-complete
        ([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9], "in the wrong direction"),
        ([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3], "all equal"),
    ],
)
def test_separation_is_detected_and_said(y, p, why):
    s = calibration_summary(np.array(y), np.array(p))
    assert s["calibration_slope"] is None and why in s["calibration_slope_note"]
    assert s["calibration_intercept"] is not None  # the intercept has an estimate with both grades


# 40 patients and the net benefit dcurves 1.1.7 (Python port of Vickers' dca) computed for them in
# an independent run: dca(data, outcome="y", modelnames=["p"], thresholds=[0.05, ..., 0.6]).
DCA_Y = [0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 1, 0, 0, 0, 1, 0, 0, 1]
DCA_Y += [1, 0, 1, 0]
DCA_P = [0.394, 0.354, 0.112, 0.291, 0.568, 0.289, 0.419, 0.29, 0.681, 0.259, 0.303, 0.371, 0.01, 0.181, 0.151]
DCA_P += [0.417, 0.19, 0.844, 0.072, 0.439, 0.01, 0.178, 0.278, 0.362, 0.387, 0.704, 0.175, 0.453, 0.717, 0.207]
DCA_P += [0.01, 0.018, 0.361, 0.344, 0.273, 0.683, 0.46, 0.277, 0.67, 0.183]
DCA_PT = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
DCA_MODEL = [0.242105263158, 0.208333333333, 0.16875, 0.178571428571, 0.216666666667, 0.175, 0.15]
DCA_ALL = [0.236842105263, 0.194444444444, 0.09375, -0.035714285714, -0.208333333333, -0.45, -0.8125]


def test_net_benefit_matches_dcurves():
    y, p, pt = np.array(DCA_Y), np.array(DCA_P), np.array(DCA_PT)
    assert net_benefit(y, p, pt) == pytest.approx(DCA_MODEL, abs=1e-9)
    assert treat_all(y, pt) == pytest.approx(DCA_ALL, abs=1e-9)
