"""ccrcc_grade.stats.subgroups: metrics per centre/scanner/size band and their heterogeneity."""

from __future__ import annotations

import numpy as np
import pytest

from ccrcc_grade.stats.subgroups import (
    heterogeneity,
    patient_groups,
    slice_thickness_band,
    subgroup_metrics,
    tumor_size_band,
)


def _rows(rng, n, auc_shift, prefix):
    y = np.array([1] * (n // 2) + [0] * (n - n // 2))
    score = rng.normal(size=n) + auc_shift * y
    p = 1 / (1 + np.exp(-score))
    return [{"patient_id": f"{prefix}{i}", "label": int(y[i]), "prob_high": float(p[i])} for i in range(n)]


@pytest.mark.parametrize(
    "cm, band", [(None, "unknown"), (2.0, "<=4 cm"), (4.0, "<=4 cm"), (4.01, "4-7 cm"), (7.0, "4-7 cm"), (7.1, ">7 cm")]
)
def test_tumor_size_bands_follow_t1a_t1b_t2(cm, band):
    assert tumor_size_band(cm) == band


@pytest.mark.parametrize("mm, band", [(None, "unknown"), (0.625, "<=1.5 mm"), (2.5, "1.5-3 mm"), (5.0, ">3 mm")])
def test_slice_thickness_bands(mm, band):
    assert slice_thickness_band(mm) == band


def test_every_group_has_the_usual_block_or_says_why_not():
    rng = np.random.default_rng(0)
    rows = _rows(rng, 30, 1.5, "A") + _rows(rng, 20, 0.5, "B") + _rows(rng, 3, 1.0, "C")
    attrs = {
        r["patient_id"]: {"center": r["patient_id"][0], "manufacturer": "GE" if r["patient_id"][0] == "A" else ""}
        for r in rows
    }
    attrs["A0"]["tumor_size_cm"] = 3.0
    sub = subgroup_metrics(rows, attrs, n_boot=100)
    assert set(sub) == {"center", "manufacturer", "slice_thickness", "tumor_size"}
    assert set(sub["center"]) == {"A", "B", "C"}
    a = sub["center"]["A"]
    assert a["estimable"] and a["n_patients"] == 30 and a["high"]["auc"]["ci_method"] == "DeLong"
    ya = np.array([r["label"] for r in rows[:30]])
    pa = np.array([r["prob_high"] for r in rows[:30]])
    from sklearn.metrics import roc_auc_score

    assert a["high"]["auc"]["value"] == pytest.approx(roc_auc_score(ya, pa))
    assert set(a["calibration"]) >= {"calibration_intercept", "calibration_slope", "o_e", "ece"}
    c = sub["center"]["C"]  # 1 high, 2 low: too small
    assert c == {"estimable": False, "reason": c["reason"], "n_patients": 3, "n_high": 1}
    assert "needs >= 2 of each" in c["reason"]
    # missing attributes form their own named group, nobody is dropped
    assert sub["manufacturer"]["unknown"]["n_patients"] == 23 and sub["manufacturer"]["GE"]["n_patients"] == 30
    assert sum(g["n_patients"] for g in sub["tumor_size"].values()) == len(rows)
    assert sub["tumor_size"]["<=4 cm"]["n_patients"] == 1


def test_heterogeneity_matches_statsmodels_meta_analysis():
    from statsmodels.stats.meta_analysis import combine_effects

    from ccrcc_grade.stats.metrics import delong

    rng = np.random.default_rng(4)
    parts = {"A": _rows(rng, 40, 2.5, "A"), "B": _rows(rng, 40, 0.2, "B"), "C": _rows(rng, 30, 1.0, "C")}
    rows = [r for rs in parts.values() for r in rs]
    groups = {r["patient_id"]: r["patient_id"][0] for r in rows}
    h = heterogeneity(rows, groups)
    effects, variances = [], []
    for rs in parts.values():
        auc, cov = delong(np.array([r["label"] for r in rs]), np.array([r["prob_high"] for r in rs]))
        effects.append(auc[0])
        variances.append(cov[0, 0])
    ref = combine_effects(np.array(effects), np.array(variances), method_re="chi2")
    assert h["estimable"] and h["groups_used"] == ["A", "B", "C"] and h["df"] == 2
    assert h["q"] == pytest.approx(ref.q) and h["i2"] == pytest.approx(ref.i2)
    assert h["pooled_auc"] == pytest.approx(ref.mean_effect_fe)
    assert h["p"] < 0.05  # AUCs ~0.95 vs ~0.55 differ


@pytest.mark.parametrize(
    "make, why",
    [
        (lambda rng: _rows(rng, 4, 1.0, "A") + _rows(rng, 30, 1.0, "B"), "needs >= 2"),  # A: 2 + 2 patients
        (lambda rng: _rows(rng, 30, 1.0, "A"), "needs >= 2"),  # one centre
    ],
)
def test_heterogeneity_not_estimable_says_why(make, why):
    rows = make(np.random.default_rng(1))
    h = heterogeneity(rows, {r["patient_id"]: r["patient_id"][0] for r in rows})
    assert h["estimable"] is False and why in h["reason"]


def test_separated_group_is_left_out_by_name():
    rng = np.random.default_rng(2)
    sep = [{"patient_id": f"S{i}", "label": int(i < 4), "prob_high": 0.9 if i < 4 else 0.1} for i in range(8)]
    rows = sep + _rows(rng, 30, 1.0, "A") + _rows(rng, 30, 0.5, "B")
    h = heterogeneity(rows, {r["patient_id"]: r["patient_id"][0] for r in rows})
    assert h["groups_used"] == ["A", "B"] and "zero variance" in h["groups_left_out"]["S"]


def test_patient_groups_mark_unknown():
    g = patient_groups({"p1": {"center": "X", "slice_thickness_mm": 1.0}}, ["p1", "p2"])
    assert g["center"] == {"p1": "X", "p2": "unknown"} and g["slice_thickness"]["p1"] == "<=1.5 mm"
