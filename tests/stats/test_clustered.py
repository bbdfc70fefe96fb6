"""ccrcc_grade.stats.clustered: image-level tests that keep a patient's slices together.

The size test re-runs the audit's simulation: two models of equal true AUC, 40 patients with
3-10 slices each, slice scores correlated within a patient (a patient effect shared by both
models plus a model-specific patient effect). The naive image-level tests (DeLong and McNemar
on slices as if independent) reject far above 5% - which is what makes this a test that can
fail - while every test the report prints stays at <= 0.08."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from ccrcc_grade.stats.clustered import cluster_bootstrap_auc_diff, clustered_auc_test, clustered_mcnemar
from ccrcc_grade.stats.compare import compare_level
from ccrcc_grade.stats.metrics import aggregate_patients, delong, delong_paired_test, mcnemar, obuchowski


def _null_data(rng: np.random.Generator, n_patients: int = 40) -> tuple:
    while True:
        grade = (rng.random(n_patients) < 0.4).astype(int)
        if 5 <= grade.sum() <= n_patients - 5:
            break
    sizes = rng.integers(3, 11, n_patients)
    pid = np.repeat([f"P{i:02d}" for i in range(n_patients)], sizes)
    y = np.repeat(grade, sizes)
    shared = np.repeat(rng.normal(1.0 * grade, 1.0), sizes)  # what both models see of the patient
    scores = []
    for _ in range(2):  # the same distribution for both models: equal true AUC
        own = np.repeat(rng.normal(0.0, 1.0, n_patients), sizes)  # the model's view of this patient
        scores.append(1 / (1 + np.exp(-(shared + own + rng.normal(0, 0.5, len(y)) - 0.5))))
    return y, scores[0], scores[1], pid


def test_obuchowski_equals_delong_with_one_slice_per_patient():
    rng = np.random.default_rng(3)
    y = (rng.random(60) < 0.4).astype(int)
    s = np.vstack([rng.normal(y, 1.0), rng.normal(y * 0.5, 1.0)])
    a1, c1 = delong(y, s)
    a2, c2 = obuchowski(y, s, [f"P{i}" for i in range(len(y))])
    assert a2 == pytest.approx(a1, abs=1e-12)
    assert c2 == pytest.approx(c1, abs=1e-12)


def test_obuchowski_variance_exceeds_naive_for_correlated_slices():
    y, pa, _, pid = _null_data(np.random.default_rng(1))
    _, naive = delong(y, pa)
    _, clustered = obuchowski(y, pa, pid)
    assert clustered[0, 0] > 2 * naive[0, 0]  # ~6 correlated slices carry far less than 6 patients


def test_obuchowski_matches_the_cluster_bootstrap_variance():
    """An independent check of the variance formula: the patient bootstrap's variance of the AUC
    (stratified by grade) agrees with Obuchowski's within Monte-Carlo and small-sample error."""
    y, pa, _, pid = _null_data(np.random.default_rng(2), n_patients=80)
    _, cov = obuchowski(y, pa, pid)
    boot = cluster_bootstrap_auc_diff(y, pa, np.zeros_like(pa), pid, n_boot=3000, seed=1)
    # the difference to a constant score is the AUC minus 0.5: its CI width gives the SD
    width = boot["ci95"][1] - boot["ci95"][0]
    sd_boot = width / (2 * stats.norm.ppf(0.975))
    assert sd_boot == pytest.approx(np.sqrt(cov[0, 0]), rel=0.15)
    assert boot["resamples_used"] == boot["resamples"] == 3000


@pytest.mark.parametrize(
    ("y", "clusters", "why"),
    [
        ([1, 1, 0, 0, 0, 0], ["A", "A", "B", "B", "C", "C"], "1 high- and 2 low-grade patients"),
        ([1, 1, 1, 1, 0, 0], ["A", "A", "B", "B", "C", "C"], "2 high- and 1 low-grade patients"),
    ],
)
def test_clustered_test_not_estimable_with_few_patients(y, clusters, why):
    p = np.linspace(0.1, 0.9, len(y))
    r = clustered_auc_test(np.array(y), p, p[::-1], clusters)
    assert not r["estimable"] and np.isnan(r["p"]) and why in r["reason"]


def test_durkalski_reduces_to_mcnemar_chi_square_with_one_slice_per_patient():
    rng = np.random.default_rng(4)
    a, b = rng.random(50) < 0.7, rng.random(50) < 0.6
    r = clustered_mcnemar(a, b, [f"P{i}" for i in range(50)])
    n01, n10 = int(np.sum(a & ~b)), int(np.sum(~a & b))
    assert r["statistic"] == pytest.approx((n01 - n10) ** 2 / (n01 + n10))
    assert (r["a_only_correct"], r["b_only_correct"]) == (n01, n10)
    assert clustered_mcnemar(a, a, [f"P{i}" for i in range(50)])["p"] == 1.0  # no discordance


def test_clustered_tests_keep_their_size_under_the_null():
    """200 seeded replications of the audit's simulation at alpha 0.05."""
    rng = np.random.default_rng(2025)
    reps = 200
    rejects = {
        k: 0 for k in ("naive_delong", "naive_mcnemar", "obuchowski", "bootstrap", "durkalski", "patient_delong")
    }
    rejects["patient_mcnemar"] = 0
    for r in range(reps):
        y, pa, pb, pid = _null_data(rng)
        rejects["naive_delong"] += delong_paired_test(y, pa, pb)["p"] < 0.05
        rejects["naive_mcnemar"] += mcnemar((pa >= 0.5) == y, (pb >= 0.5) == y)["p"] < 0.05
        rejects["obuchowski"] += clustered_auc_test(y, pa, pb, pid)["p"] < 0.05
        lo, hi = cluster_bootstrap_auc_diff(y, pa, pb, pid, n_boot=300, seed=r)["ci95"]
        rejects["bootstrap"] += not lo <= 0 <= hi
        rejects["durkalski"] += clustered_mcnemar((pa >= 0.5) == y, (pb >= 0.5) == y, pid)["p"] < 0.05
        ids, yp, qa = aggregate_patients(list(pid), pa, y)
        _, _, qb = aggregate_patients(list(pid), pb, y)
        rejects["patient_delong"] += delong_paired_test(yp, qa, qb)["p"] < 0.05
        rejects["patient_mcnemar"] += mcnemar((qa >= 0.5) == yp, (qb >= 0.5) == yp)["p"] < 0.05
    rate = {k: v / reps for k, v in rejects.items()}
    print(rate)
    assert rate["naive_delong"] > 0.2 and rate["naive_mcnemar"] > 0.15, rate  # the defect, reproduced
    for k in ("obuchowski", "bootstrap", "durkalski", "patient_delong", "patient_mcnemar"):
        assert rate[k] <= 0.08, (k, rate)


def test_compare_image_level_says_its_unit_and_methods():
    y, pa, pb, pid = _null_data(np.random.default_rng(7))
    rows = lambda p: [  # noqa: E731
        {"patient_id": q, "label": int(t), "prob_high": float(v), "source": f"s{i}"}
        for i, (q, t, v) in enumerate(zip(pid, y, p))
    ]
    c = compare_level(rows(pa), rows(pb), lambda r: (r["patient_id"], r["source"]), clustered=True)
    assert c["unit"].startswith("image") and c["n_patients"] == 40 and c["n"] == len(y)
    assert c["auc_test"].startswith("Obuchowski") and c["accuracy_test"].startswith("Durkalski")
    assert c["auc_diff_ci_method"] == "Obuchowski"  # the interval of the test's own variance ...
    lo, hi = c["auc_diff_ci95"]
    assert (lo > 0 or hi < 0) == (c["auc_p"] < 0.05)  # ... so CI and P never disagree
    assert c["bootstrap"]["method"].startswith("patient-cluster bootstrap")
    assert c["bootstrap"]["resamples_used"] == c["bootstrap"]["resamples"]
    assert c["auc_diff_bootstrap_ci95"][0] < c["auc_diff"] < c["auc_diff_bootstrap_ci95"][1]


def test_image_level_auc_interval_is_clustered_and_covers_at_the_nominal_rate():
    """Table 3's image-level AUC CI (Obuchowski) covers the true AUC of the simulation's score
    close to 95% of the time (a Wald interval on 40 patients: ~0.9); the naive DeLong interval on
    slices ~0.55."""
    from ccrcc_grade.stats.metrics import bootstrap_metrics, delong_ci

    rng = np.random.default_rng(11)
    big = _null_data(rng, n_patients=4000)  # the population AUC of model A's slices
    true_auc = delong(big[0], big[1])[0][0]
    hit, hit_naive, reps = 0, 0, 200
    for _ in range(reps):
        y, pa, _, pid = _null_data(rng)
        m = bootstrap_metrics(y, pa, list(pid), n_boot=20)["high"]["auc"]
        assert m["ci_method"] == "Obuchowski (patients as clusters)"
        hit += m["ci95"][0] <= true_auc <= m["ci95"][1]
        lo, hi = delong_ci(y, pa)
        hit_naive += lo <= true_auc <= hi
    assert hit / reps >= 0.87 and hit_naive / reps < hit / reps - 0.1, (hit / reps, hit_naive / reps)
