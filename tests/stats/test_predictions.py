"""ccrcc_grade.stats.predictions: prediction files and what is refused."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "content, needle",
    [
        ("patient_id,label,prob_high\nA,1,nan\nB,0,0.2\n", "bad.csv:2: prob_high must be a finite number"),
        ("patient_id,label,prob_high\nA,1.7,0.5\nB,0,0.2\n", "bad.csv:2: label (0 low, 1 high) must be a whole number"),
        ("patient_id,label,prob_high\nA,2,0.5\nB,0,0.2\n", "bad.csv:2: label (0 low, 1 high) must lie in [0, 1]"),
        ("patient_id,label,prob_high\nA,1,0.9\nA,0,0.2\n", "patient 'A' has rows with label 0 and label 1"),
        ("patient_id,label,prob_high\nA,1,0.9\nA,1,0.9\nB,0,0.1\n", "patient 'A' is listed twice"),
        (
            "patient_id,phase,source,label,prob_high,x_min,y_min,x_max,y_max\nA,np,s1,1,0.9,1,1,5,5\n"
            "A,np,s1,1,0.9,1,1,5,5\n",
            "the row of 'A' s1 is listed twice",
        ),
    ],
)
def test_bad_prediction_files(refused, tmp_path, capsys, content, needle):
    (tmp_path / "bad.csv").write_text(content)
    refused(capsys, ["evaluate", "--predictions", tmp_path / "bad.csv", "--out", tmp_path / "ev"], needle)
    assert not (tmp_path / "ev").exists()
