"""ccrcc_grade.stats.metrics: DeLong, bootstrap CIs, McNemar against references."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import stats

from ccrcc_grade.core.threshold import cut_point
from ccrcc_grade.stats.metrics import bootstrap_metrics, delong, delong_ci, delong_paired_test, mcnemar, point_metrics


@pytest.fixture(scope="module")
def asah(survey):
    rows = list(csv.DictReader(open(survey("proc_aSAH/aSAH.csv"))))
    ref = json.loads(survey("proc_aSAH/pROC_reference_values.json").read_text())
    y = np.array([r["outcome"] == "Poor" for r in rows], dtype=int)
    s = {k: np.array([float(r[k]) for r in rows]) for k in ("wfns", "ndka", "s100b")}
    assert (y.sum(), len(y) - y.sum()) == (ref["n_cases_Poor"], ref["n_controls_Good"])
    return y, s, ref


def _figure2():
    """The study's Figure 2 (ResNet34, parenchymal): 74 low->low, 3 low->high, 7 high->low,
    14 high->high, as image-level predictions."""
    y = np.array([0] * 77 + [1] * 21)
    p = np.array([0.2] * 74 + [0.8] * 3 + [0.3] * 7 + [0.9] * 14)
    return y, p


def test_delong_auc_variance_covariance(asah):
    y, s, ref = asah
    names = ["wfns", "ndka", "s100b"]
    aucs, cov = delong(y, np.vstack([s[n] for n in names]))
    for i, n in enumerate(names):
        assert aucs[i] == pytest.approx(ref["auc"][n], abs=1e-6)
        assert cov[i, i] == pytest.approx(ref["delong_var_auc"][n], abs=1e-6)
    idx = {n: i for i, n in enumerate(names)}
    for pair, v in ref["delong_cov_auc"].items():
        a, b = pair.split(",")
        assert cov[idx[a], idx[b]] == pytest.approx(v, abs=1e-6)
    lo, hi = delong_ci(y, s["ndka"])
    assert (lo, hi) == pytest.approx((ref["ci_auc_delong_95_ndka"][0], ref["ci_auc_delong_95_ndka"][2]), abs=1e-6)


@pytest.mark.parametrize("pair", ["wfns_vs_s100b", "wfns_vs_ndka", "ndka_vs_s100b"])
def test_paired_delong_test(asah, pair):
    y, s, ref = asah
    a, b = pair.split("_vs_")
    r = delong_paired_test(y, s[a], s[b])
    exp = ref["roc_test_delong_paired"][pair]
    assert r["z"] == pytest.approx(exp["Z"], abs=1e-6)
    assert r["p"] == pytest.approx(exp["p"], abs=1e-6)
    assert r["auc_diff_ci95"] == pytest.approx(exp["ci95_of_auc_difference"], abs=1e-6)


def test_study_figure2_reproduces_table4():
    y, p = _figure2()
    m = point_metrics(y, p)
    assert m["confusion_matrix"] == [[74, 3], [7, 14]]
    assert m["accuracy"] == pytest.approx(88 / 98) and round(m["accuracy"], 3) == 0.898
    assert round(m["low"]["precision"], 3) == 0.914 and round(m["high"]["precision"], 3) == 0.824
    assert round(m["low"]["sensitivity"], 3) == 0.961 and round(m["high"]["sensitivity"], 3) == 0.667
    assert round(m["low"]["specificity"], 3) == 0.667 and round(m["high"]["specificity"], 3) == 0.961


def test_bootstrap_ci_structure_and_coverage():
    y, p = _figure2()
    groups = [f"P{i // 6}" for i in range(len(y))]  # ~6 slices per patient
    m = bootstrap_metrics(y, p, groups, n_boot=300, seed=0)
    for k in ("accuracy", "balanced_accuracy", "brier"):
        lo, hi = m[k]["ci95"]
        assert lo <= m[k]["value"] <= hi
    for c in ("low", "high"):
        assert set(m[c]) == {"auc", "precision", "sensitivity", "specificity", "f1"}
        assert m[c]["auc"]["ci_method"] == "Obuchowski (patients as clusters)"
        assert m[c]["f1"]["ci_method"] == "patient bootstrap, stratified by grade"
    assert m["n"] == 98 and m["n_patients"] == 17 and m["threshold"] == 0.5
    again = bootstrap_metrics(y, p, groups, n_boot=300, seed=0)
    assert again["accuracy"]["ci95"] == m["accuracy"]["ci95"]
    one = bootstrap_metrics(y, p + np.linspace(0, 0.01, len(p)), None, n_boot=50)
    assert one["high"]["auc"]["ci_method"] == "DeLong" and one["low"]["auc"]["ci95"] == one["high"]["auc"]["ci95"]


def test_small_n_intervals_are_exact_and_say_their_n():
    """Issue #16: '1.000 (1.000-1.000)' on 6 test patients read as certainty."""
    y = np.array([0, 0, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.8, 0.9])  # perfect separation, 2 high-grade patients
    m = bootstrap_metrics(y, p, None, n_boot=200)
    sens = m["high"]["sensitivity"]
    assert sens["value"] == 1.0 and sens["n"] == 2 and sens["ci_method"] == "Clopper-Pearson"
    assert sens["ci95"] == pytest.approx([0.025**0.5, 1.0])  # exact: 2/2 -> (0.158, 1)
    assert m["high"]["specificity"]["n"] == 4 and m["accuracy"]["n"] == 6
    assert m["high"]["specificity"]["ci95"] == pytest.approx([0.025**0.25, 1.0])
    auc = m["high"]["auc"]
    assert auc["value"] == 1.0 and auc["degenerate"] and (auc["n_positive"], auc["n_negative"]) == (2, 4)
    ref = stats.binomtest(7, 10).proportion_ci(method="exact")  # 7 of 10 patients right
    m2 = bootstrap_metrics(np.array([1] * 10), np.array([0.9] * 7 + [0.1] * 3), None, n_boot=50)
    assert m2["accuracy"]["ci95"] == pytest.approx([ref.low, ref.high]) and m2["accuracy"]["n"] == 10
    clustered = bootstrap_metrics(y, p, ["a", "a", "b", "b", "c", "c"], n_boot=100)
    assert clustered["accuracy"]["ci_method"] == "patient bootstrap, stratified by grade"  # slices are not independent


def test_mcnemar_exact_and_youden():
    a = np.array([1] * 10 + [1] * 7 + [0] * 2 + [0] * 5, bool)
    b = np.array([1] * 10 + [0] * 7 + [1] * 2 + [0] * 5, bool)
    r = mcnemar(a, b)
    assert (r["a_only_correct"], r["b_only_correct"]) == (7, 2)
    assert r["p"] == pytest.approx(stats.binomtest(7, 9, 0.5).pvalue)
    y = np.array([0, 0, 0, 1, 1, 1])
    assert cut_point("youden", y, np.array([0.1, 0.2, 0.35, 0.4, 0.8, 0.9])) == pytest.approx(0.4)


def test_fast_bootstrap_metrics_equal_scikit_learn():
    from ccrcc_grade.stats.metrics import _flatten, fast_flat_metrics

    rng = np.random.default_rng(3)
    cases = [
        (rng.integers(0, 2, 50), rng.random(50).round(1)),  # ties
        (np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])),  # everything predicted low
        (np.array([1, 1, 1]), np.array([0.2, 0.7, 0.9])),
    ]  # one class only
    for y, p in cases:
        a, b = _flatten(point_metrics(y, p)), fast_flat_metrics(y, p)
        assert a.keys() == b.keys()
        for k in a:
            assert (np.isnan(a[k]) and np.isnan(b[k])) or a[k] == pytest.approx(b[k]), k


def test_delong_on_too_few_patients_is_not_estimable():
    from ccrcc_grade.stats.metrics import delong_paired_test

    y = np.array([0, 0, 1])  # 3 patients: both models separate them perfectly
    d = delong_paired_test(y, np.array([0.1, 0.2, 0.9]), np.array([0.3, 0.1, 0.8]))
    assert not d["estimable"] and np.isnan(d["p"]) and "needs >= 3 of each" in d["reason"]
    y = np.array([0, 0, 0, 1, 1, 1])
    d = delong_paired_test(y, np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), np.array([0.2, 0.1, 0.3, 0.9, 0.7, 0.8]))
    assert not d["estimable"] and "zero variance" in d["reason"]


@pytest.mark.parametrize(
    ("y", "p", "f1_high", "f1_low"),
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], 0.0, 2 / 3),  # nobody called high: no TP, F1 is 0, not NaN
        ([0, 0, 1, 1], [0.6, 0.7, 0.3, 0.4], 0.0, 0.0),  # everybody wrong
        ([0, 0, 0], [0.1, 0.2, 0.3], float("nan"), 1.0),  # no case and no call: undefined
    ],
)
def test_f1_is_zero_without_a_true_positive(y, p, f1_high, f1_low):
    m = point_metrics(np.array(y), np.array(p))
    for got, want in ((m["high"]["f1"], f1_high), (m["low"]["f1"], f1_low)):
        assert (np.isnan(got) and np.isnan(want)) or got == pytest.approx(want)


@pytest.mark.parametrize(("n_high", "groups"), [(1, None), (1, "slices"), (0, None)])
def test_no_auc_interval_with_fewer_than_two_patients_of_a_grade(n_high, groups):
    """pROC gives no DeLong interval with one case of a class (half of the variance is zero)."""
    y = np.array([0] * 6 + [1] * n_high)
    p = np.linspace(0.1, 0.9, len(y))
    g = None
    if groups:  # three slices per patient
        y, p = np.repeat(y, 3), np.repeat(p, 3) + np.tile([0, 0.01, 0.02], len(y))
        g = [f"P{i // 3}" for i in range(len(y))]
    auc = bootstrap_metrics(y, p, g, n_boot=100)["high"]["auc"]
    assert all(np.isnan(auc["ci95"])) and auc["ci_method"] == "none"
    assert f"{n_high} high- and 6 low-grade patients" in auc["ci_note"]
    assert delong_ci(np.array([0] * 6 + [1]), np.linspace(0.1, 0.9, 7)) is None


def test_bootstrap_is_stratified_and_counts_unusable_resamples():
    """An image AUC with two high-grade patients: unstratified, ~10% of resamples had no high grade
    and were dropped silently; stratified, every resample has both grades. Precision with few
    calls high still has undefined resamples: they are counted."""
    rng = np.random.default_rng(5)
    sizes = rng.integers(3, 8, 14)
    grade = np.array([1, 1] + [0] * 12)
    y = np.repeat(grade, sizes)
    p = np.clip(np.repeat(0.3 + 0.3 * grade, sizes) + rng.normal(0, 0.15, len(y)), 0, 1)
    p[y == 0] = np.minimum(p[y == 0], 0.45)
    p[np.nonzero(y == 1)[0][:-1]] = 0.4  # one slice of one patient called high
    g = [f"P{i}" for i, s in enumerate(sizes) for _ in range(s)]
    m = bootstrap_metrics(y, p, g, n_boot=400, seed=1)
    bal = m["balanced_accuracy"]  # defined in every resample because every resample has both grades
    assert bal["resamples_used"] == bal["resamples"] == 400
    assert m["high"]["auc"]["ci_method"] == "Obuchowski (patients as clusters)"
    prec = m["high"]["precision"]
    assert 0 < prec["resamples_used"] < prec["resamples"] == 400  # nobody called high in some resamples
    assert m["bootstrap"]["stratified_by"] == "grade"


@pytest.mark.parametrize(
    ("p", "text"),
    [
        (0.0, "<0.001"),
        (1e-300, "<0.001"),
        (0.00099, "<0.001"),
        (0.001, "0.001"),
        (0.0496, "0.0496"),
        (0.04999, "0.04999"),
        (0.05, "0.050"),
        (0.0504, "0.050"),
        (0.399, "0.399"),
        (1.0, "1.000"),
        (float("nan"), "n/a"),
        (None, "n/a"),
    ],
)
def test_format_p_never_prints_zero_nor_crosses_alpha(p, text):
    from ccrcc_grade.stats.format import format_p

    assert format_p(p) == text
