"""ccrcc_grade.model.robustness: P(high) over plausible boxes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ccrcc_grade.ingest.cohort import Roi
from ccrcc_grade.io.boxes import Box
from ccrcc_grade.model.robustness import perturbed_boxes, rule_shifts


def _roi(spacing):
    return Roi("P1", "plain", "a.png", Box(100, 100, 140, 130), "image", Path("a.png"), spacing=spacing)


@pytest.mark.parametrize(("spacing", "max_px"), [(None, 1.0), ((0.5, 0.8), (2.0, 1.25))])
def test_sides_move_within_the_studys_rule(spacing, max_px):
    sets = perturbed_boxes([_roi(spacing)] * 3, k=200, seed=1)
    assert len(sets) == 200 and all(len(s) == 3 for s in sets)
    d = np.array([[np.subtract(r.box.as_tuple(), (100, 100, 140, 130)) for r in s] for s in sets]).reshape(-1, 4)
    row_px, col_px = (max_px, max_px) if spacing is None else max_px
    assert np.all(np.abs(d[:, [0, 2]]) <= col_px + 1e-9) and np.all(np.abs(d[:, [1, 3]]) <= row_px + 1e-9)
    assert np.abs(d[:, 0]).max() > 0.8 * col_px  # the whole range is used
    assert len({tuple(r.box.as_tuple()) for s in sets for r in s}) > 500  # sides move independently
    again = perturbed_boxes([_roi(spacing)] * 3, k=200, seed=1)
    assert [r.box for s in again for r in s] == [r.box for s in sets for r in s]


def test_rule_shift_is_the_difference_of_two_compliant_margins():
    s = rule_shifts(np.random.default_rng(0), (100000,))
    assert -1 <= s.min() and s.max() <= 1 and abs(s.mean()) < 0.01
    assert s.std() == pytest.approx(np.sqrt(2 / 12), rel=0.02)  # two U(1, 2) margins


def test_observed_reader_differences_are_resampled():
    sets = perturbed_boxes([_roi(None)], k=50, seed=0, observed_shifts_mm=np.array([3.0, -3.0]))
    d = np.array([np.subtract(s[0].box.as_tuple(), (100, 100, 140, 130)) for s in sets])
    assert set(np.round(np.abs(d).ravel(), 6)) == {3.0}


def test_predict_reports_box_robustness(run_cli, trained_run, slices_cohort, tmp_path, capsys):
    pid = sorted(p.name for p in slices_cohort.iterdir() if p.is_dir())[0]
    out = tmp_path / "r.json"
    assert run_cli("predict", trained_run, slices_cohort / pid, "--json", out) == 0
    r = json.loads(out.read_text())
    b = r["box_robustness"]
    assert set(b) >= {"k", "p_min", "p_max", "sd", "flip_rate"} and b["k"] == 20
    assert 0 <= b["p_min"] <= b["p_max"] <= 1 and b["sd"] >= 0 and 0 <= b["flip_rate"] <= 1
    assert b["p_max"] > b["p_min"]  # the boxes really moved and the model saw it
    assert abs(b["p_min"] - r["prob_high"]) < 0.5 and abs(b["p_max"] - r["prob_high"]) < 0.5
    assert "plausible boxes" in capsys.readouterr().out
    assert run_cli("predict", trained_run, slices_cohort / pid, "--json", out, "--box-k", "0") == 0
    assert "box_robustness" not in json.loads(out.read_text())


@pytest.mark.parametrize("k", ["1", "-3", "5000"])
def test_bad_box_k(refused, capsys, trained_run, slices_cohort, k):
    pid = sorted(p.name for p in slices_cohort.iterdir() if p.is_dir())[0]
    refused(capsys, ["predict", trained_run, slices_cohort / pid, "--box-k", k], "--box-k")


def test_slow_backends_grade_fewer_boxes_per_slice_within_the_budget(trained_run, slices_cohort):
    """Where k x slices crops would not fit the 2 s budget at the measured rate, each slice is
    graded at m < k perturbed boxes (>= 4) and the k sets draw from them."""
    from ccrcc_grade.model.predict import find_rois, load_predictor
    from ccrcc_grade.model.robustness import box_robustness

    predictor = load_predictor(trained_run)
    pid = sorted(p.name for p in slices_cohort.iterdir() if p.is_dir())[0]
    rois, _, _ = find_rois(slices_cohort / pid, "parenchymal", None, None)
    full = box_robustness(predictor, rois, 0.5, 0.5, 20)
    assert full["per_slice_boxes"] == 20
    slow = box_robustness(predictor, rois, 0.5, 0.5, 20, crops_per_s=1.0)  # 1 crop/s: the minimum
    assert slow["per_slice_boxes"] == 4 and slow["k"] == 20
    assert 0 <= slow["p_min"] <= slow["p_max"] <= 1
    mid = box_robustness(predictor, rois, 0.5, 0.5, 20, crops_per_s=5 * len(rois))  # 10 boxes per slice fit
    assert mid["per_slice_boxes"] == 10


@pytest.mark.parametrize(
    ("prob", "lo", "hi", "text"),
    [
        (0.5049, 0.50, 0.51, "P(high) 0.505, 0.500-0.510"),  # 0.50 beside a HIGH would contradict it
        (0.4999, 0.45, 0.52, "P(high) 0.4999, 0.4500-0.5200"),
        (0.71, 0.64, 0.78, "P(high) 0.71, 0.64-0.78"),
    ],
)
def test_robustness_text_agrees_with_the_decision(prob, lo, hi, text):
    from ccrcc_grade.core.threshold import DEFAULT_POLICY, decide
    from ccrcc_grade.model.robustness import robustness_text

    r = {"k": 20, "p_min": lo, "p_max": hi, "flip_rate": 0.05, "threshold": 0.5}
    line = robustness_text(prob, r)
    assert line == f"{text} over 20 plausible boxes (decision flips in 5%)"
    assert decide(prob, DEFAULT_POLICY).text.startswith(f"P(high) = {text.split(',')[0].split()[-1]} ")
