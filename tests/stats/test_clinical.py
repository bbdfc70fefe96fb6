"""ccrcc_grade.stats.clinical: the clinical characteristics table."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from ccrcc_grade.stats.clinical import clinical_table


def test_clinical_table_tests_match_scipy(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    grade = rng.integers(1, 5, n)
    age = rng.normal(58, 9, n).round(1)
    size = rng.lognormal(0.5, 1.4, n).round(2)  # strongly skewed -> Mann-Whitney
    sex = rng.choice(["M", "F"], n)
    rare = np.where(np.arange(n) < 3, "yes", "no")  # small expected counts -> Fisher
    with open(tmp_path / "clinical.csv", "w") as fh:
        fh.write("patient_id,who_isup_grade,age,tumor_size_cm,sex,rare\n")
        for i in range(n):
            fh.write(f"P{i},{grade[i]},{age[i]},{size[i]},{sex[i]},{rare[i]}\n")
    t = clinical_table(tmp_path / "clinical.csv")
    hi = grade >= 3
    rows = {r["variable"]: r for r in t["rows"]}
    assert rows["age"]["test"] == "t-test"
    assert rows["age"]["p"] == pytest.approx(stats.ttest_ind(age[~hi], age[hi]).pvalue)
    assert rows["tumor_size_cm"]["test"] == "Mann-Whitney U"
    assert rows["tumor_size_cm"]["p"] == pytest.approx(stats.mannwhitneyu(size[~hi], size[hi]).pvalue)
    ct = np.array([[np.sum((sex == s) & ~hi), np.sum((sex == s) & hi)] for s in ("F", "M")])
    assert rows["sex"]["test"] == "chi-square" and rows["sex"]["p"] == pytest.approx(stats.chi2_contingency(ct).pvalue)
    assert rows["rare"]["test"] == "Fisher's exact"
    assert t["n_low"] + t["n_high"] == n
