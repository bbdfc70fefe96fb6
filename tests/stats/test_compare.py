"""ccrcc_grade.stats.compare: paired comparisons."""

from __future__ import annotations

import json


def test_compare_two_runs(run_cli, trained_run, work, tmp_path, capsys):
    from ccrcc_grade.core.config import TrainConfig
    from ccrcc_grade.model.train import fit

    other = tmp_path / "se"
    fit(
        TrainConfig(
            work=str(work),
            phase="parenchymal",
            model="se_resnet34",
            out=str(other),
            weights="none",
            epochs=2,
            image_size=48,
            batch_size=16,
            progress=False,
        )
    )
    assert run_cli("compare", trained_run, other, "--json", tmp_path / "c.json") == 0
    c = json.loads((tmp_path / "c.json").read_text())
    for lv in ("patient", "image"):
        assert set(c[lv]) >= {"unit", "n", "auc_a", "auc_b", "auc_diff_ci95", "auc_test", "auc_p", "accuracy_p"}
        assert 0 <= c[lv]["accuracy_p"] <= 1
        if c[lv]["auc_estimable"]:
            assert 0 <= c[lv]["auc_p"] <= 1
        else:  # e.g. 4 test patients, 2 of a grade: the variance is not estimable, never P = 0
            assert c[lv]["auc_p"] is None and c[lv]["auc_note"].startswith("not estimable")  # strict JSON
            assert c["null_reasons"][f"{lv}.auc_p"].startswith("NaN")
            assert c[lv]["auc_diff_ci_method"] == "none"
    assert c["patient"]["auc_test"] == "DeLong paired" and c["patient"]["unit"].startswith("patient")
    assert c["image"]["auc_test"].startswith("Obuchowski") and c["image"]["accuracy_test"].startswith("Durkalski")
    assert c["image"]["n"] > c["patient"]["n"] and c["image"]["n_patients"] == c["patient"]["n"]
    printed = capsys.readouterr().out
    assert "P 0.000" not in printed and "p 0.0000" not in printed
    assert "slices of" in printed and "Obuchowski" in printed


def test_compare_partial_overlap(refused, run_cli, tmp_path, capsys):
    a = "patient_id,label,prob_high\n" + "".join(f"P{i},{i % 2},{0.2 + 0.6 * (i % 2) + 0.01 * i}\n" for i in range(10))
    b_some = "patient_id,label,prob_high\n" + "".join(f"P{i},{i % 2},{0.5 + 0.01 * i}\n" for i in range(2, 10))
    b_few = (
        "patient_id,label,prob_high\n"
        + "".join(f"P{i},{i % 2},0.5\n" for i in range(8, 10))
        + "".join(f"Q{i},{i % 2},0.5\n" for i in range(10))
    )
    for name, text in (("a.csv", a), ("some.csv", b_some), ("few.csv", b_few)):
        (tmp_path / name).write_text(text)
    assert run_cli("compare", tmp_path / "a.csv", tmp_path / "some.csv") == 0
    assert "only the 8 shared cases are compared (2 only in A, 0 only in B)" in capsys.readouterr().out
    refused(capsys, ["compare", tmp_path / "a.csv", tmp_path / "few.csv"], "share only 2 of 20 cases")
