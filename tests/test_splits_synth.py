"""Patient-level splits and the synthetic cohort's physiology."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.ingest.splits import check_disjoint, fold_split, kfold_patients, split_patients


def _labels(n_low, n_high):
    return {**{f"L{i:03d}": 0 for i in range(n_low)}, **{f"H{i:03d}": 1 for i in range(n_high)}}


def test_split_is_patient_level_stratified_and_deterministic():
    labels = _labels(119, 39)          # the study's 158 patients
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


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_synth_is_deterministic_and_marked_synthetic(tmp_path):
    from ccrcc_grade.tools.synth import make_cohort

    a = make_cohort(tmp_path / "a", patients=3, seed=5, matrix=64)
    b = make_cohort(tmp_path / "b", patients=3, seed=5, matrix=64)
    c = make_cohort(tmp_path / "c", patients=3, seed=6, matrix=64)
    assert _digest(a) == _digest(b) != _digest(c)
    assert (a / "README.txt").read_text().startswith("SYNTHETIC")
    with pytest.raises(CcrccError, match="not empty"):
        make_cohort(a, patients=3)


def test_synth_physiology(dicom_cohort):
    """Low-grade tumours enhance more than high-grade ones in contrast phases; in the plain phase
    the difference is small (weak grade signal), and high grade is larger on average."""
    import csv

    from ccrcc_grade.io.boxes import Box
    from ccrcc_grade.io.dicom import read_hu

    grades = {r["patient_id"]: int(r["who_isup_grade"]) for r in csv.DictReader(open(dicom_cohort / "clinical.csv"))}
    mean_hu: dict = {}
    for r in csv.DictReader(open(dicom_cohort / "boxes.csv")):
        hu, _ = read_hu(dicom_cohort / r["file"])
        b = Box(*(float(r[k]) for k in ("x_min", "y_min", "x_max", "y_max")))
        cx, cy = int((b.x_min + b.x_max) / 2), int((b.y_min + b.y_max) / 2)
        if b.width < 8:
            continue
        core = hu[cy - 2: cy + 3, cx - 2: cx + 3]
        mean_hu.setdefault((r["phase"], grades[r["patient_id"]] >= 3), []).append(float(np.median(core)))
    m = {k: np.mean(v) for k, v in mean_hu.items()}
    for phase in ("corticomedullary", "parenchymal"):
        assert m[(phase, False)] - m[(phase, True)] > 25
    assert abs(m[("plain", False)] - m[("plain", True)]) < abs(m[("corticomedullary", False)] - m[("corticomedullary", True)]) / 2
    sizes = {}
    for r in csv.DictReader(open(dicom_cohort / "clinical.csv")):
        sizes.setdefault(int(r["who_isup_grade"]) >= 3, []).append(float(r["tumor_size_cm"]))
    assert np.mean(sizes[True]) > np.mean(sizes[False])
