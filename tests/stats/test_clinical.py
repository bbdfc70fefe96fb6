"""ccrcc_grade.stats.clinical: the clinical characteristics table."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from ccrcc_grade.stats.clinical import clinical_table, table_markdown


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


def _exact_ffh(ct: np.ndarray) -> float:
    """The exact Fisher-Freeman-Halton P of an r x 2 table by enumerating every table with its
    margins (multivariate hypergeometric probabilities): an independent reference."""
    from itertools import product
    from math import comb

    rows, n_high = ct.sum(axis=1), ct[:, 1].sum()
    total = comb(int(rows.sum()), int(n_high))

    def prob(h: tuple) -> float:
        return float(np.prod([comb(int(r), int(k)) for r, k in zip(rows, h)])) / total

    obs = prob(tuple(ct[:, 1]))
    return sum(
        prob(h) for h in product(*(range(int(r) + 1) for r in rows)) if sum(h) == n_high and prob(h) <= obs * (1 + 1e-7)
    )


@pytest.mark.parametrize(
    "ct",
    [
        [[5, 0], [2, 3], [1, 1], [0, 2]],
        [[8, 1], [1, 4], [3, 0]],
        [[4, 4], [4, 4], [0, 1]],
    ],
)
def test_fisher_freeman_halton_matches_exact_enumeration(ct):
    from ccrcc_grade.stats.clinical import fisher_freeman_halton

    ct = np.array(ct)
    assert fisher_freeman_halton(ct) == pytest.approx(_exact_ffh(ct), abs=0.01)


def test_sparse_tables_get_an_exact_test_and_missing_values_are_counted(tmp_path):
    """Table 2's n ignored missing values (percentages did not sum to 100); an r x c table with
    expected counts < 1 used chi-square."""
    rows = ["patient_id,who_isup_grade,stage,smoker"]
    stage = ["T1"] * 8 + ["T2"] * 3 + ["T3"] * 1 + ["T1"] * 2 + ["T2"] * 2 + ["T3"] * 3 + ["T4"]
    grade = [1] * 12 + [4] * 8
    smoker = ["yes", "no", ""] * 6 + ["yes", "no"]  # 6 or 7 missing
    for i, (g, st, sm) in enumerate(zip(grade, stage, smoker)):
        rows.append(f"P{i},{g},{st},{sm}")
    (tmp_path / "clinical.csv").write_text("\n".join(rows) + "\n")
    t = clinical_table(tmp_path / "clinical.csv")
    r = {x["variable"]: x for x in t["rows"]}
    assert r["stage"]["test"].startswith("Fisher-Freeman-Halton")
    ct = np.array([[stage[:12].count(s), stage[12:].count(s)] for s in ("T1", "T2", "T3", "T4")])
    assert r["stage"]["p"] == pytest.approx(_exact_ffh(ct), abs=0.01)
    sm = r["smoker"]
    assert (sm["n_low"], sm["missing_low"]) == (8, 4) and (sm["n_high"], sm["missing_high"]) == (6, 2)
    for side in ("low", "high"):  # percentages of the patients with a value: they sum to 100
        assert sum(float(lv[side].split("(")[1].rstrip("%)")) for lv in sm["levels"]) == pytest.approx(100, abs=0.2)
    md = table_markdown(t)
    assert "8 / 6 (4 / 2 missing)" in md and "Fisher-Freeman-Halton by Monte Carlo" in md


@pytest.mark.parametrize(
    "age_cell, reported",
    [("unknown", False), ("NA", False), ("", False), ("65 y", True), ("sixty", True), ("inf", True)],
)
def test_a_cell_that_is_not_a_number_is_missing_not_a_new_type(tmp_path, age_cell, reported):
    rng = np.random.default_rng(1)
    n = 40
    grade = rng.integers(1, 5, n)
    age = rng.normal(60, 8, n).round(1)
    sex = rng.choice(["Male", "male ", "MALE", "Female", "female"], n)
    with open(tmp_path / "clinical.csv", "w") as fh:
        fh.write("patient_id,who_isup_grade,age,sex\n")
        for i in range(n):
            fh.write(f"P{i},{grade[i]},{age_cell if i == 4 else age[i]},{sex[i]}\n")
    t = clinical_table(tmp_path / "clinical.csv")
    rows = {r["variable"]: r for r in t["rows"]}
    hi = grade >= 3
    keep = np.arange(n) != 4
    assert rows["age"]["type"] == "continuous"
    assert rows["age"]["missing_low"] + rows["age"]["missing_high"] == 1
    ref = (stats.ttest_ind if rows["age"]["test"] == "t-test" else stats.mannwhitneyu)(age[keep & ~hi], age[keep & hi])
    assert rows["age"]["p"] == pytest.approx(ref.pvalue)
    levels = rows["sex"]["levels"]  # five spellings, two levels, each in its most frequent spelling
    assert sorted(lv["level"].casefold() for lv in levels) == ["female", "male"]
    for lv in levels:
        spellings = [v for v in sex if v.strip().casefold() == lv["level"].casefold()]
        assert lv["level"] == max(set(spellings), key=spellings.count).strip()
    if reported:
        assert t["cell_problems"] == [f"clinical.csv:6: age {age_cell!r} is not a number; counted as missing"]
        assert t["cell_problems"][0] in table_markdown(t)
    else:
        assert t["cell_problems"] == []
