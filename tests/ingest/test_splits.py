"""ccrcc_grade.ingest.splits: patient-level splits and bad splits files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.ingest.splits import check_disjoint, fold_split, kfold_patients, split_patients


def _labels(n_low, n_high):
    return {**{f"L{i:03d}": 0 for i in range(n_low)}, **{f"H{i:03d}": 1 for i in range(n_high)}}


@pytest.mark.parametrize(
    "splits, needle",
    [
        ({"train": ["SYN001"], "val": ["SYN002"], "test": ["NOBODY"]}, "names 1 patient(s) not in the ingested cohort"),
        (["SYN001", "SYN002"], "must be a JSON object with train, val and test lists, got a list"),
        ({"train": ["SYN001", "SYN001"], "val": ["SYN002"], "test": []}, "the train list names a patient twice"),
        ({"train": "SYN001", "val": [], "test": []}, "missing the 'train' list"),
    ],
)
def test_bad_splits_files(snapshot, refused, work, tmp_path, capsys, splits, needle):
    w = tmp_path / "w"
    shutil.copytree(work, w)
    (w / "splits.json").write_text(json.dumps(splits))
    before = snapshot(w)
    refused(capsys, ["train", w, "--weights", "none", "--epochs", "1"], "splits.json", needle)
    assert snapshot(w) == before


def test_split_is_patient_level_stratified_and_deterministic():
    labels = _labels(119, 39)  # the study's 158 patients
    s = split_patients(labels, (0.8, 0.1, 0.1), seed=0)
    assert s == split_patients(labels, (0.8, 0.1, 0.1), seed=0)
    assert s != split_patients(labels, (0.8, 0.1, 0.1), seed=1)
    allp = s["train"] + s["val"] + s["test"]
    assert sorted(allp) == sorted(labels) and len(set(allp)) == len(allp)
    for part in ("val", "test"):
        assert len(s[part]) in (15, 16, 17)
        frac = np.mean([labels[p] for p in s[part]])
        assert abs(frac - 39 / 158) < 0.08
    check_disjoint(s)


def test_overlap_is_detected():
    with pytest.raises(CcrccError, match="'A' is in both train and test"):
        check_disjoint({"train": ["A", "B"], "val": [], "test": ["A"]})


def test_too_few_patients_of_a_class():
    with pytest.raises(CcrccError, match="too few high-grade patients"):
        split_patients(_labels(20, 2), (0.8, 0.1, 0.1))
    with pytest.raises(CcrccError, match="5-fold"):
        kfold_patients(_labels(20, 4), 5)


def test_kfold_groups_and_fold_parts():
    labels = _labels(30, 12)
    assign = kfold_patients(labels, 4, seed=0)
    assert sorted(set(assign.values())) == [0, 1, 2, 3]
    tests = []
    for f in range(4):
        parts = fold_split(assign, f, labels)
        check_disjoint(parts)
        assert sum(labels[p] for p in parts["test"]) == 3 and sum(labels[p] for p in parts["val"]) >= 1
        tests += parts["test"]
    assert sorted(tests) == sorted(labels)
