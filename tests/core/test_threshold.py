"""ccrcc_grade.core.threshold: the decision-threshold policy from training to prediction."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.threshold import (
    DEFAULT_POLICY,
    MIN_PER_CLASS,
    ThresholdPolicy,
    cut_point,
    decide,
    fit_policy,
    parse_spec,
    policy_of,
)
from ccrcc_grade.model.predict import predict_patient


def _validation(n_low: int, n_high: int, seed: int = 0):
    """Patient probabilities of a moderately good model (AUC ~0.85)."""
    rng = np.random.default_rng(seed)
    y = np.array([0] * n_low + [1] * n_high)
    p = 1 / (1 + np.exp(-(rng.normal(0, 1, len(y)) + 1.5 * (2 * y - 1))))
    return y, p


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("default", "default"),
        ("YOUDEN", "youden"),
        ("sens90", "sens90"),
        ("spec85", "spec85"),
        ("0.3", 0.3),
        (0.7, 0.7),
    ],
)
def test_parse_spec(spec, expected):
    assert parse_spec(spec) == expected


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nan", "strictly between 0 and 1"),
        ("inf", "strictly between 0 and 1"),
        ("0", "strictly between 0 and 1"),
        ("1", "strictly between 0 and 1"),
        ("-0.2", "strictly between 0 and 1"),
        (float("nan"), "strictly between"),
        ("sens100", "must be default, youden"),
        ("sens40", "target must be 50-99%"),
        ("best", "must be default, youden"),
        ("", "must be default, youden"),
    ],
)
def test_bad_threshold_specs(spec, message):
    with pytest.raises(CcrccError, match=message):
        parse_spec(spec)


def test_tiny_validation_gets_the_default_and_fitted_points_are_refused():
    y, p = _validation(4, 2)
    assert fit_policy("default", y, p) == DEFAULT_POLICY
    for method in ("youden", "sens90", "spec90"):
        with pytest.raises(CcrccError, match=r"validation holds 4 low- and 2 high-grade patients; .* needs >= 10"):
            fit_policy(method, y, p)
    with pytest.raises(CcrccError, match="needs >= 10"):  # one class short of the minimum is enough to refuse
        fit_policy("youden", *_validation(40, MIN_PER_CLASS - 1))


def test_large_validation_gets_a_youden_threshold_with_a_ci():
    y, p = _validation(30, 20)
    pol = fit_policy("youden", y, p, n_boot=300)
    fpr_tpr = [(np.mean(p[y == 0] >= t), np.mean(p[y == 1] >= t)) for t in np.unique(p)]
    best_j = max(tpr - fpr for fpr, tpr in fpr_tpr)
    got_j = np.mean(p[y == 1] >= pol.threshold) - np.mean(p[y == 0] >= pol.threshold)
    assert got_j == pytest.approx(best_j)  # the cut-point maximises J on validation
    assert pol.method == "youden" and (pol.n_low, pol.n_high) == (30, 20)
    lo, hi = pol.ci95
    assert 0 <= lo <= pol.threshold <= hi <= 1 and hi - lo > 0  # a real interval, not a point
    assert "Youden J on 50 validation patients" == pol.source
    again = fit_policy("youden", y, p, n_boot=300)
    assert again == pol  # seeded bootstrap: reproducible


@pytest.mark.parametrize("method, target", [("sens90", 0.9), ("spec90", 0.9), ("sens80", 0.8), ("spec95", 0.95)])
def test_sensitivity_and_specificity_operating_points(method, target):
    y, p = _validation(25, 25, seed=4)
    t = cut_point(method, y, p)
    sens, spec = np.mean(p[y == 1] >= t), np.mean(p[y == 0] < t)
    if method.startswith("sens"):
        assert sens >= target  # the target is met ...
        assert np.mean(p[y == 1] >= np.min(p[p > t])) < target if np.any(p > t) else True  # ... by the highest cut
    else:
        assert spec >= target
        assert np.mean(p[y == 0] < np.max(p[p < t])) < target if np.any(p < t) else True


def test_policy_round_trip_and_legacy_models():
    pol = fit_policy("spec90", *_validation(12, 15), n_boot=100)
    assert ThresholdPolicy.from_dict(json.loads(json.dumps(pol.to_dict()))) == pol
    assert policy_of({"threshold_policy": pol.to_dict()}) == (pol, None)
    legacy, warning = policy_of({"threshold": 0.974})  # an older checkpoint's Youden on 6 patients
    assert legacy == DEFAULT_POLICY and "0.974" in warning and "study default 0.5 is used" in warning
    assert policy_of({"threshold": 0.5}) == (DEFAULT_POLICY, None)
    for bad in ({"threshold": float("nan")}, {"threshold": 2.0}, {"threshold": 0.5, "ci95": [0.1, float("inf")]}):
        with pytest.raises(CcrccError, match="must be a number in"):
            ThresholdPolicy.from_dict(bad)


@pytest.mark.parametrize("prob", [0.0, 0.1, 0.4999, 0.49999999, 0.5, 0.500001, 0.826, 0.974, 1.0])
@pytest.mark.parametrize(
    "policy",
    [
        DEFAULT_POLICY,
        ThresholdPolicy("fixed", 0.974, "fixed at 0.974 by the user"),
        ThresholdPolicy("youden", 0.6, "Youden J on 40 validation patients", (0.45, 0.7), 20, 20),
    ],
)
def test_the_printed_grade_agrees_with_its_numbers(prob, policy):
    d = decide(prob, policy)
    if policy.ci95 and policy.ci95[0] <= prob <= policy.ci95[1]:
        assert d.grade == "uncertain" and "inside the threshold's 95% CI" in d.text and d.text.endswith("UNCERTAIN")
        return
    assert d.grade == ("high" if prob >= policy.threshold else "low")
    assert d.text.endswith(d.grade.upper()) and policy.label in d.text
    shown_p, rel, shown_t = d.text.split(" (")[0].removeprefix("P(high) = ").split(" ")
    assert rel == (">=" if d.grade == "high" else "<")
    assert (float(shown_p) >= float(shown_t)) == (d.grade == "high")  # the printed numbers say the same


def test_the_reported_reproduction_prints_high():
    """Issue #14: P = 0.826 with a Youden cut of 0.974 from six patients printed LOW."""
    assert decide(0.826, policy_of({"threshold": 0.974})[0]).text == "P(high) = 0.83 >= 0.50 (study default) -> HIGH"


def test_training_refuses_a_fitted_threshold_on_a_small_validation_split(run_cli, work, tmp_path, capsys):
    assert (
        run_cli("train", work, "--weights", "none", "--epochs", "1", "--threshold", "youden", "--out", tmp_path / "r")
        == 2
    )
    err = capsys.readouterr().err
    assert "threshold 'youden' refused: validation holds" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
    assert run_cli("train", work, "--weights", "none", "--epochs", "1", "--threshold", "1.5") == 2
    assert "strictly between 0 and 1" in capsys.readouterr().err


def test_a_fixed_threshold_travels_from_training_to_predict(run_cli, work, slices_cohort, tmp_path, capsys):
    run = tmp_path / "fixed"
    assert (
        run_cli(
            "train",
            work,
            "--weights",
            "none",
            "--epochs",
            "1",
            "--image-size",
            "32",
            "--batch-size",
            "16",
            "--threshold",
            "0.35",
            "--out",
            run,
            "--no-progress",
        )
        == 0
    )
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["threshold"] == 0.35 and ckpt["threshold_policy"]["method"] == "fixed"
    capsys.readouterr()
    for pid in ckpt["splits"]["test"]:
        r = predict_patient(run / "best.pt", slices_cohort / pid)
        assert r["threshold"] == 0.35 and "(fixed at 0.35 by the user)" in r["decision"]
        assert r["grade"] == ("high" if r["prob_high"] >= 0.35 else "low")
    assert run_cli("evaluate", run, "--bootstrap", "50") == 0
    m = json.loads((run / "eval-test" / "metrics.json").read_text())
    assert m["patient"]["threshold"] == 0.5  # the main table: the study default
    model_op = m["operating_points"][0]
    assert model_op["name"] == "model" and model_op["patient"]["threshold"] == 0.35


def test_legacy_checkpoint_threshold_is_not_used(trained_run, slices_cohort, tmp_path):
    ck = torch.load(trained_run / "best.pt", weights_only=True)
    ck.pop("threshold_policy")
    ck["threshold"] = 0.974  # as an older version stored a Youden cut from six patients
    torch.save(ck, tmp_path / "old.pt")
    pid = ck["splits"]["test"][0]
    r = predict_patient(tmp_path / "old.pt", slices_cohort / pid)
    assert r["threshold"] == 0.5 and any("0.974" in w for w in r["warnings"])


def test_spec_target_is_met_with_probabilities_of_exactly_one():
    """The audit's case: validation probabilities rounded to 1.0 (six decimals in a CSV). Two of
    ten low-grade patients at 1.0: no threshold <= 1 reaches 90% specificity - refused, never a
    threshold of 1.0 whose specificity is 0.80. One at 1.0: the target is met exactly."""
    rng = np.random.default_rng(0)
    p_high = np.concatenate([np.ones(4), rng.uniform(0.5, 0.99, 8)])
    for n_at_one, reachable in ((2, False), (1, True)):
        p_low = np.concatenate([np.ones(n_at_one), rng.uniform(0.01, 0.6, 10 - n_at_one)])
        y = np.array([0] * 10 + [1] * 12)
        p = np.concatenate([p_low, p_high])
        t = cut_point("spec90", y, p)
        if reachable:
            assert np.mean(p[y == 0] < t) >= 0.9
        else:
            assert t is None
            with pytest.raises(CcrccError, match="2 low-grade patients have P\\(high\\) = 1.0"):
                fit_policy("spec90", np.tile(y, 1), p, n_boot=50)
    # sens and Youden with ties at 1.0: the achieved values are counted under p >= t
    t = cut_point("sens90", y, p)
    assert np.mean(p[y == 1] >= t) >= 0.9
