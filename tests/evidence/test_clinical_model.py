"""ccrcc_grade.evidence.clinical_model: clinical model and nomogram."""

from __future__ import annotations

import numpy as np
import pytest

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.evidence.comparison import compare_models
from ccrcc_grade.evidence.scores import ModelScores


def test_clinical_and_combined_models_never_fit_on_test_patients(write_rows, tmp_path):
    from ccrcc_grade.evidence.clinical_model import clinical_model, combined_model
    from ccrcc_grade.io.clinical import read_clinical

    rng = np.random.default_rng(2)
    ids = [f"P{i:03d}" for i in range(90)]
    grade = {i: int(rng.choice([1, 2, 3, 4], p=[0.2, 0.45, 0.25, 0.1])) for i in ids}
    rows = [
        {
            "patient_id": i,
            "who_isup_grade": grade[i],
            "tumor_size_cm": round(3 + 2 * (grade[i] >= 3) + rng.normal(0, 1.2), 1),
            "sex": rng.choice(["M", "F"]),
            "bmi": round(rng.normal(24, 3), 1),
        }
        for i in ids
    ]
    rows[5]["tumor_size_cm"] = ""  # a missing value is imputed, not a crash
    splits = {"train": ids[:50], "val": ids[50:70], "test": ids[70:]}
    write_rows(tmp_path / "clinical.csv", rows)
    table = read_clinical(tmp_path / "clinical.csv")
    clin, info = clinical_model(table, splits)
    assert info["predictors"][0] == "tumor_size_cm" and info["fitted_on"] == "training patients"
    # changing the test patients' grades must not change anything the model says about them
    flipped = [
        {**r, "who_isup_grade": 1 if int(r["who_isup_grade"]) >= 3 else 4} if r["patient_id"] in splits["test"] else r
        for r in rows
    ]
    write_rows(tmp_path / "flipped.csv", flipped)
    clin2, _ = clinical_model(read_clinical(tmp_path / "flipped.csv"), splits)
    assert clin2.test == pytest.approx(clin.test)
    labels = table.labels
    dl = ModelScores(
        "resnet34-parenchymal",
        "phase",
        {i: float(np.clip(0.3 + 0.4 * labels[i] + rng.normal(0, 0.15), 0.01, 0.99)) for i in splits["test"]},
        {i: float(np.clip(0.3 + 0.4 * labels[i] + rng.normal(0, 0.15), 0.01, 0.99)) for i in splits["val"]},
    )
    comb, cinfo = combined_model(table, dl, info, splits)
    comb2, _ = combined_model(read_clinical(tmp_path / "flipped.csv"), dl, info, splits)
    assert cinfo["fitted_on"] == "validation patients" and comb2.test == pytest.approx(comb.test)
    assert set(comb.test) == set(splits["test"])
    # and the comparison table: one entry per model, the reference without a test against itself
    entries = compare_models([dl, clin, comb], labels, "resnet34-parenchymal", n_boot=200)
    assert [e["name"] for e in entries] == ["resnet34-parenchymal", "clinical", "nomogram (DL + clinical)"]
    assert entries[0]["delong_p_vs_best_phase"] is None
    for e in entries[1:]:
        assert 0 <= e["delong_p_vs_best_phase"] <= e["delong_p_holm"] <= 1
        assert -1 <= e["auc_diff_vs_best_phase"]["ci95"][0] <= e["auc_diff_vs_best_phase"]["ci95"][1] <= 1
    for e in entries:
        b = e["patient"]["brier"]
        assert b["ci95"][0] <= b["value"] <= b["ci95"][1] and 0 <= e["patient"]["ece"] <= 1


def test_clinical_model_needs_tumour_size(write_rows, tmp_path):
    from ccrcc_grade.evidence.clinical_model import clinical_model
    from ccrcc_grade.io.clinical import read_clinical

    write_rows(
        tmp_path / "clinical.csv",
        [{"patient_id": f"P{i}", "who_isup_grade": 1 + i % 4, "age": 50 + i} for i in range(12)],
    )
    with pytest.raises(CcrccError, match="no tumour size column"):
        clinical_model(read_clinical(tmp_path / "clinical.csv"), {"train": [f"P{i}" for i in range(8)]})
