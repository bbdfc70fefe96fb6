"""ccrcc_grade.stats.agreement: ICC, IoU, slice ranges and the agreement of grades."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from ccrcc_grade.stats.agreement import icc, iou, prediction_agreement, slice_range_agreement

# Shrout & Fleiss (Psychol Bull 1979) Table 2: 6 targets rated by 4 judges. Their published
# values: ICC(2,1) 0.29 (CI 0.019-0.761), ICC(3,1) 0.71. The unrounded numbers below come from
# an independent pingouin 0.7.0 run on the same data (its CIs printed to 2 decimals there, as
# Shrout & Fleiss give them; ours are unrounded).
SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])


def test_icc_reproduces_shrout_and_fleiss():
    r = icc(SHROUT_FLEISS)
    assert r["ICC2"]["value"] == pytest.approx(0.2897637795, abs=1e-9)
    assert r["ICC3"]["value"] == pytest.approx(0.7148407148, abs=1e-9)
    assert r["ICC2"]["ci95"] == pytest.approx([0.019, 0.761], abs=5e-4)  # Shrout & Fleiss: 0.019-0.761
    assert r["ICC3"]["ci95"] == pytest.approx([0.34, 0.95], abs=5e-3)
    assert (r["n"], r["readers"]) == (6, 4)


def test_icc_absolute_agreement_sees_a_systematic_offset_that_consistency_ignores():
    rng = np.random.default_rng(0)
    truth = rng.normal(40, 10, 50)
    r = icc(np.column_stack([truth + rng.normal(0, 1, 50), truth + 8 + rng.normal(0, 1, 50)]))
    assert r["ICC3"]["value"] > 0.95 and r["ICC2"]["value"] < r["ICC3"]["value"] - 0.1


@pytest.mark.parametrize(
    ("ratings", "why"),
    [
        ([[1, 2], [2, 3]], "2 targets; an ICC needs >= 3"),
        ([[5, 5], [5, 5], [5, 5]], "every rating is the same"),
        ([[1], [2], [3]], "one reader"),
    ],
)
def test_icc_not_estimable(ratings, why):
    r = icc(np.array(ratings))
    for t in ("ICC2", "ICC3"):
        assert r[t]["value"] is None and why in r[t]["note"]


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
        ((0, 0, 10, 10), (20, 20, 30, 30), 0.0),
        ((0, 0, 10, 10), (5, 0, 15, 10), 50 / 150),
        ((0, 0, 10, 10), (2, 2, 8, 8), 36 / 100),
        ((0, 0, 10, 10), (10, 0, 20, 10), 0.0),  # touching edges
    ],
)
def test_iou(a, b, expected):
    assert iou(a, b) == pytest.approx(expected) and iou(b, a) == pytest.approx(expected)


def test_slice_ranges():
    r = slice_range_agreement([{"s1", "s2", "s3", "s4"}, {"s2", "s3", "s4"}])
    assert r["jaccard"] == pytest.approx(3 / 4) and r["slices_one_reader_only"] == 1


def test_prediction_agreement_matches_scikit_learn():
    rng = np.random.default_rng(1)
    a = rng.random(30)
    b = np.clip(a + rng.normal(0, 0.15, 30), 0, 1)
    r = prediction_agreement(np.column_stack([a, b]), 0.5)
    assert r["kappa"] == pytest.approx(cohen_kappa_score(a >= 0.5, b >= 0.5))
    assert r["flip_rate"] == pytest.approx(np.mean((a >= 0.5) != (b >= 0.5)))
    assert r["icc_prob_high"]["ICC2"]["value"] > 0.5 and r["n_patients"] == 30
    same = prediction_agreement(np.column_stack([np.full(5, 0.9), np.full(5, 0.8)]), 0.5)
    assert same["kappa"] is None and "every decision is the same grade" in same["kappa_note"]
    assert same["flip_rate"] == 0.0
