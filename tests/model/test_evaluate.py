"""ccrcc_grade.model.evaluate: evaluation of runs, prediction files and external cohorts."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest


def _rows(p):
    return list(csv.DictReader(open(p)))


def test_evaluate_run_writes_everything(run_cli, trained_run, copy_tree, capsys):
    trained_run = copy_tree(trained_run, "run")  # a fresh run folder: the default output folder is free
    assert run_cli("evaluate", trained_run, "--bootstrap", "200") == 0
    out = trained_run / "eval-test"
    for f in (
        "predictions.csv",
        "predictions_patient.csv",
        "metrics.json",
        "roc.png",
        "confusion.png",
        "calibration.png",
    ):
        assert (out / f).is_file(), f
    m = json.loads((out / "metrics.json").read_text())
    ckpt_test = set(
        json.loads((trained_run / "config.json").read_text())
        and __import__("torch").load(trained_run / "best.pt", weights_only=True)["splits"]["test"]
    )
    assert {r["patient_id"] for r in _rows(out / "predictions_patient.csv")} == ckpt_test
    for lv in ("image", "patient"):
        M = m[lv]
        for k in ("accuracy", "balanced_accuracy", "brier"):
            assert set(M[k]) >= {"value", "ci95"} and len(M[k]["ci95"]) == 2
        for c in ("low", "high"):
            for k in ("auc", "precision", "sensitivity", "specificity", "f1"):
                assert "value" in M[c][k] and "ci95" in M[c][k]
        assert np.array(M["confusion_matrix"]).sum() == M["n"] and M["threshold"] == 0.5
    assert m["patient"]["n"] == len(ckpt_test) and m["image"]["n"] == len(_rows(out / "predictions.csv"))
    # 4 validation patients: no cut-point may be fitted; each operating point says why not
    assert m["threshold_policy"]["method"] == "default" and m["threshold_policy"]["threshold"] == 0.5
    assert [op["name"] for op in m["operating_points"]] == ["youden", "sens90", "spec90"]
    assert all(not op["estimable"] and "needs >= 10 of each" in op["reason"] for op in m["operating_points"])
    pp = {r["patient_id"]: float(r["prob_high"]) for r in _rows(out / "predictions_patient.csv")}
    img = _rows(out / "predictions.csv")
    for pid, prob in pp.items():
        assert prob == pytest.approx(np.mean([float(r["prob_high"]) for r in img if r["patient_id"] == pid]), abs=1e-5)
    assert "AUC" in capsys.readouterr().out
    # one centre, one tumour-size source: every subgroup table accounts for every test patient
    for name in ("center", "manufacturer", "slice_thickness", "tumor_size"):
        assert sum(g["n_patients"] for g in m["subgroups"][name].values()) == len(ckpt_test), name
    assert list(m["subgroups"]["center"]) == ["SYNTH"]
    ss = m["sample_size"]  # 4 test patients: far below Riley's validation minimum, and said so
    assert ss["n_patients"] == len(ckpt_test)
    assert (not ss.get("estimable", True) and ss["reason"]) or (
        ss["large_enough"] is False and ss["riley_validation"]["n"] > 100
    )


def test_external_cohort_of_three_centres_gets_per_centre_results(
    run_cli, trained_run, multicentre_cohort, tmp_path, read_rows
):
    """A hidden cohort with a center column and DICOM manufacturers: patient-level metrics per
    centre, manufacturer, slice thickness and size band, each with its n, and the heterogeneity test."""
    out = tmp_path / "ext"
    assert run_cli("evaluate", trained_run, "--cohort", multicentre_cohort, "--out", out, "--bootstrap", "100") == 0
    m = json.loads((out / "metrics.json").read_text())
    clinical = read_rows(multicentre_cohort / "clinical.csv")
    centres = {c: [r for r in clinical if r["center"] == c] for c in {r["center"] for r in clinical}}
    sub = m["subgroups"]
    assert set(sub["center"]) == set(centres)
    for c, rows in centres.items():
        g = sub["center"][c]
        assert g["n_patients"] == len(rows)
        n_high = sum(int(r["who_isup_grade"]) >= 3 for r in rows)
        if min(n_high, len(rows) - n_high) >= 2:
            assert g["estimable"] and g["high"]["auc"]["n_positive"] == n_high and "calibration" in g
        else:
            assert not g["estimable"] and "needs >= 2 of each" in g["reason"]
    assert {k for k in sub["manufacturer"]} <= {"Phantom Vendor A", "Phantom Vendor B", "Phantom Vendor C"}
    assert list(sub["slice_thickness"]) == [">3 mm"]  # the phantom's 5 mm slices
    sizes = {"<=4 cm": 0, "4-7 cm": 0, ">7 cm": 0}
    for r in clinical:
        cm = float(r["tumor_size_cm"])
        sizes["<=4 cm" if cm <= 4 else "4-7 cm" if cm <= 7 else ">7 cm"] += 1
    assert {k: g["n_patients"] for k, g in sub["tumor_size"].items()} == {k: v for k, v in sizes.items() if v}
    het = m["subgroup_heterogeneity"]["center"]
    assert het["test"].startswith("Cochran's Q") and (het["estimable"] or het["reason"])


def test_evaluate_predictions_file_and_its_errors(run_cli, tmp_path, capsys):
    p = tmp_path / "fig2.csv"
    rows = [("low", 0, 0.2)] * 74 + [("low", 0, 0.8)] * 3 + [("high", 1, 0.3)] * 7 + [("high", 1, 0.9)] * 14
    with open(p, "w") as fh:
        fh.write("patient_id,phase,source,label,prob_high\n")
        for i, (_, y, pr) in enumerate(rows):
            fh.write(f"P{i // 4 if y == 0 else 100 + i // 3},parenchymal,s{i}.png,{y},{pr}\n")
    assert run_cli("evaluate", "--predictions", p, "--out", tmp_path / "ev", "--bootstrap", "100") == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["image"]["confusion_matrix"] == [[74, 3], [7, 14]]
    assert round(m["image"]["accuracy"]["value"], 3) == 0.898
    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,label,prob_high\nA,0,1.7\n")
    assert run_cli("evaluate", "--predictions", bad) == 2
    assert "bad.csv:2: prob_high must lie in [0, 1]" in capsys.readouterr().err
    bad.write_text("patient_id,prob\nA,0.3\n")
    assert run_cli("evaluate", "--predictions", bad) == 2
    assert "missing column(s) label, prob_high" in capsys.readouterr().err
    assert run_cli("evaluate", tmp_path / "nothing-here") == 2
    assert "not a training run folder" in capsys.readouterr().err


def test_external_validation_on_a_raw_cohort(run_cli, trained_run, dicom_cohort, tmp_path):
    """A model trained on the exported-slice cohort, validated on the DICOM version of another
    centre's data ingested on the fly with the model's own preprocessing."""
    assert (
        run_cli("evaluate", trained_run, "--cohort", dicom_cohort, "--out", tmp_path / "ext", "--bootstrap", "100") == 0
    )
    m = json.loads((tmp_path / "ext" / "metrics.json").read_text())
    assert m["patient"]["n"] == 16 and m["split"].startswith("external:")
    assert (tmp_path / "ext" / "external_work" / "manifest.csv").is_file()


def test_evaluate_never_replaces_an_earlier_evaluation(run_cli, trained_run, copy_tree, capsys):
    """Issue #16: `evaluate RUN` silently overwrote the study's eval-test/metrics.json."""
    run = copy_tree(trained_run, "run")
    assert run_cli("evaluate", run, "--bootstrap", "100") == 0
    first = (run / "eval-test" / "metrics.json").read_bytes()
    capsys.readouterr()
    assert run_cli("evaluate", run, "--bootstrap", "50") == 0
    out = capsys.readouterr().out
    assert (run / "eval-test" / "metrics.json").read_bytes() == first
    assert (
        f"{run / 'eval-test'} holds an earlier evaluation (kept as it is); this one goes to {run / 'eval-test-2'}"
        in out
    )
    assert json.loads((run / "eval-test-2" / "metrics.json").read_text())["patient"]["bootstrap"]["resamples"] == 50
    assert run_cli("evaluate", run, "--bootstrap", "50", "--out", run / "eval-test") == 0  # named: replaced, said
    assert "replaced the earlier evaluation in" in capsys.readouterr().out


def test_kits_as_external_validation(kits_cases, run_cli, kits_dir, work, tmp_path):
    """A model trained on another cohort (the phantom, corticomedullary) validated on a raw
    KiTS folder, ingested on the fly with the model's preprocessing."""
    from ccrcc_grade.core.config import TrainConfig
    from ccrcc_grade.model.train import fit

    run = tmp_path / "cm"
    fit(
        TrainConfig(
            work=str(work),
            phase="corticomedullary",
            out=str(run),
            weights="none",
            epochs=1,
            image_size=48,
            batch_size=16,
            progress=False,
        )
    )
    assert run_cli("evaluate", run, "--cohort", kits_dir, "--out", tmp_path / "ext", "--bootstrap", "50") == 0
    m = json.loads((tmp_path / "ext" / "metrics.json").read_text())
    assert (
        m["patient"]["n"] == len(kits_cases)
        and m["patient"]["confusion_matrix"][0][0] + m["patient"]["confusion_matrix"][0][1] == 3
    )
