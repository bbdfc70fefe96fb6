"""evaluate, compare, clinical table, and the study command end to end."""

from __future__ import annotations

import csv
import json
import os
import math

import numpy as np
import pytest
from scipy import stats

from ccrcc_grade.stats.clinical import clinical_table
from ccrcc_grade.core.errors import CcrccError

from conftest import run_cli


def _rows(p):
    return list(csv.DictReader(open(p)))


def test_evaluate_run_writes_everything(trained_run, copy_tree, capsys):
    trained_run = copy_tree(trained_run, "run")   # a fresh run folder: the default output folder is free
    assert run_cli("evaluate", trained_run, "--bootstrap", "200") == 0
    out = trained_run / "eval-test"
    for f in ("predictions.csv", "predictions_patient.csv", "metrics.json", "roc.png", "confusion.png", "calibration.png"):
        assert (out / f).is_file(), f
    m = json.loads((out / "metrics.json").read_text())
    ckpt_test = set(json.loads((trained_run / "config.json").read_text()) and
                    __import__("torch").load(trained_run / "best.pt", weights_only=True)["splits"]["test"])
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


def test_evaluate_predictions_file_and_its_errors(tmp_path, capsys):
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


def test_compare_two_runs(trained_run, work, tmp_path):
    from ccrcc_grade.core.config import TrainConfig
    from ccrcc_grade.model.train import fit

    other = tmp_path / "se"
    fit(TrainConfig(work=str(work), phase="parenchymal", model="se_resnet34", out=str(other), weights="none",
                    epochs=2, image_size=48, batch_size=16, progress=False))
    assert run_cli("compare", trained_run, other, "--json", tmp_path / "c.json") == 0
    c = json.loads((tmp_path / "c.json").read_text())
    for lv in ("patient", "image"):
        assert set(c[lv]) >= {"n", "auc_a", "auc_b", "auc_diff_ci95", "delong_z", "delong_p", "mcnemar_p"}
        assert 0 <= c[lv]["mcnemar_p"] <= 1
        if c[lv]["delong_estimable"]:
            assert 0 <= c[lv]["delong_p"] <= 1
        else:   # e.g. 4 test patients, 2 of a grade: DeLong's variance is not estimable, never P = 0
            assert math.isnan(c[lv]["delong_p"]) and c[lv]["delong_note"].startswith("not estimable")
    assert c["image"]["delong_estimable"]
    assert c["image"]["n"] > c["patient"]["n"]


def test_external_validation_on_a_raw_cohort(trained_run, dicom_cohort, tmp_path):
    """A model trained on the exported-slice cohort, validated on the DICOM version of another
    centre's data ingested on the fly with the model's own preprocessing."""
    assert run_cli("evaluate", trained_run, "--cohort", dicom_cohort, "--out", tmp_path / "ext", "--bootstrap", "100") == 0
    m = json.loads((tmp_path / "ext" / "metrics.json").read_text())
    assert m["patient"]["n"] == 16 and m["split"].startswith("external:")
    assert (tmp_path / "ext" / "external_work" / "manifest.csv").is_file()


def test_clinical_table_tests_match_scipy(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    grade = rng.integers(1, 5, n)
    age = rng.normal(58, 9, n).round(1)
    size = rng.lognormal(0.5, 1.4, n).round(2)       # strongly skewed -> Mann-Whitney
    sex = rng.choice(["M", "F"], n)
    rare = np.where(np.arange(n) < 3, "yes", "no")    # small expected counts -> Fisher
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


@pytest.fixture(scope="module")
def study_out(slices_cohort, tmp_path_factory):
    """A quick study of the phantom (1 epoch, 32 px) and what it printed."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("study") / "study"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert run_cli("study", slices_cohort, "--out", out, "--preset", "quick", "--epochs", "1",
                       "--image-size", "32", "--size", "32") == 0
    return out, buf.getvalue()


def test_study_quick_end_to_end_and_resumable(study_out, slices_cohort, capsys):
    out = study_out[0]
    res = json.loads((out / "results.json").read_text())
    names = set(res["runs"])
    assert {f"resnet34-{p}" for p in ("plain", "corticomedullary", "parenchymal", "excretory", "combined")} <= names
    best = res["best_phase"]
    assert f"se_resnet34-{best}" in names and len(names) == 6
    assert res["val_auc_resnet34"][best] == max(res["val_auc_resnet34"].values())
    assert set(res["comparison"]) >= {"patient", "image"}
    html = (out / "report.html").read_text()
    for needed in ("Table 2", "Table 3", "Table 4", "Figure 2", "Figure 3", "Figure 4", "Limitations",
                   "data:image/png;base64", "Synthetic cohort"):
        assert needed in html
    assert "test set holds" in res["limitations"]
    # issue 13's contract: every model (the six networks included) in one list, same test patients
    models = {m["name"]: m for m in res["models"]}
    assert set(res["runs"]) <= set(models) and {"fusion-mean", "multiphase-resnet34", "clinical"} <= set(models)
    kinds = {m["kind"] for m in res["models"]}
    assert kinds <= {"phase", "fusion", "radiomics", "clinical", "combined"} and {"phase", "fusion"} <= kinds
    for m in res["models"]:
        pt = m["patient"]
        assert {"auc", "brier", "ece", "calibration_slope", "calibration_intercept"} <= set(pt)
        assert {"value", "ci95"} <= set(pt["auc"]) and {"value", "ci95"} <= set(pt["brier"])
        assert "delong_p_vs_best_phase" in m and "delong_p_holm" in m and m["n"] == models[f"resnet34-{best}"]["n"]
    assert models[f"resnet34-{best}"]["delong_p_vs_best_phase"] is None
    for name, why in res["evidence"]["skipped"].items():          # too few validation patients: said why
        assert name not in models and why
    for needed in ("Model comparison", "TRIPOD+AI summary", "Decision curves", "Reliability diagrams"):
        assert needed in html
    for r in res["runs"].values():
        assert math.isfinite(r["test"]["patient"]["accuracy"]["value"])
    mtime = (out / "runs" / f"resnet34-{best}" / "best.pt").stat().st_mtime
    assert run_cli("study", slices_cohort, "--out", out, "--preset", "quick", "--epochs", "1", "--image-size", "32",
                   "--size", "32") == 0
    assert (out / "runs" / f"resnet34-{best}" / "best.pt").stat().st_mtime == mtime
    second = capsys.readouterr().out
    assert "[study] model 6 of 6: se_resnet34-" in second and "finished earlier, reused" in second


def test_study_report_reads_correctly(study_out):
    """Issue #16: summary and contents first, the tie said, one sign convention, n beside intervals,
    files readable by others."""
    out, first_output = study_out
    res = json.loads((out / "results.json").read_text())
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    assert html.index("Summary") < html.index("Dataset") and "<a href='#table-3'>" in html
    assert "[study] model 1 of 6: resnet34-plain" in first_output and "min left)" in first_output
    assert res["comparison"]["a"].startswith("se_resnet34-") and res["comparison"]["b"].startswith("resnet34-")
    d = res["comparison"]["patient"]["auc_diff"]
    assert f"patient AUC difference {d + 0.0:+.3f}" in res["limitations"] and "-0.000" not in md
    assert f"| {d + 0.0:+.3f} (" in md                              # Table 4 prints the same number
    tie = res["best_phase_tie"]
    if len(tie["tied"]) > 1:
        assert f"{len(tie['tied'])} phases tie at validation patient AUC" in md and tie["text"] in md
    assert "Decision thresholds" in md and "study default" in md
    table3 = md.split("## Table 3")[1].split("## Decision")[0]
    rows = [ln for ln in table3.splitlines() if ln.startswith("| resnet34 |") or ln.startswith("| se_resnet34 |")]
    assert len(rows) == 12                                          # 6 models x (patient, image): once each
    assert all("n=" in cell for ln in rows for cell in ln.strip("|").split("|")[2:] if cell.strip() != "n/a")
    umask = os.umask(0o022)
    os.umask(umask)
    for f in (out / "report.html", out / "results.json", out / "work" / "manifest.csv",
              out / "runs" / "resnet34-plain" / "best.pt"):
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f
    assert (out / "work").stat().st_mode & 0o777 == 0o777 & ~umask
    assert not list((out / "runs").glob("*/last.pt"))              # finished runs keep best.pt only


def test_study_jobs_give_the_same_numbers_as_sequential(study_out, slices_cohort, tmp_path, capsys):
    """Issue 12: trainings run concurrently (2 processes on this CPU) give the results of the
    sequential study: same config, seed and data order per run."""
    seq = json.loads((study_out[0] / "results.json").read_text())
    out = tmp_path / "parallel"
    assert run_cli("study", slices_cohort, "--out", out, "--preset", "quick", "--epochs", "1", "--image-size", "32",
                   "--size", "32", "--jobs", "2", "--no-evidence") == 0
    printed = capsys.readouterr().out
    assert "5 trainings, 2 at a time" in printed and "5 of 5 trainings done" in printed
    par = json.loads((out / "results.json").read_text())
    assert par["best_phase"] == seq["best_phase"] and set(par["runs"]) == set(seq["runs"])
    for name, r in seq["runs"].items():
        assert par["runs"][name]["val_auc"] == pytest.approx(r["val_auc"], abs=1e-6), name
        for lv in ("image", "patient"):
            a, b = par["runs"][name]["test"][lv], r["test"][lv]
            assert a["high"]["auc"]["value"] == pytest.approx(b["high"]["auc"]["value"], abs=1e-6), name
            assert a["accuracy"]["value"] == b["accuracy"]["value"], name
    assert (out / "runs" / "resnet34-plain" / "train.log").read_text().count("epoch 1/1") == 1
    assert "models" not in par                                     # --no-evidence


@pytest.mark.parametrize("jobs, message", [("0", "--jobs must be auto or a whole number >= 1"),
                                           ("many", "--jobs must be auto or a whole number >= 1")])
def test_study_refuses_bad_jobs(jobs, message, slices_cohort, tmp_path, capsys):
    from ccrcc_grade.study.run import resolve_jobs

    with pytest.raises(CcrccError, match=message):
        resolve_jobs(jobs, "cpu")
    assert run_cli("study", slices_cohort, "--out", tmp_path / "s", "--preset", "quick", "--jobs", jobs) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "s").exists()


def test_study_jobs_auto_is_one_on_a_cpu():
    from ccrcc_grade.study.run import resolve_jobs

    assert resolve_jobs("auto", "cpu") == 1 and resolve_jobs("3", "cpu") == 3


@pytest.mark.parametrize("keys, best, tied, text", [
    ({"plain": (0.8, 0.7), "parenchymal": (0.9, 0.6)}, "parenchymal", ["parenchymal"], ""),
    ({"plain": (1.0, 0.7), "corticomedullary": (1.0, 0.9), "parenchymal": (0.9, 1.0)}, "corticomedullary",
     ["plain", "corticomedullary"], "2 phases tie at validation patient AUC 1.000 (plain, corticomedullary); the tie "
     "was broken by validation image AUC (plain 0.700, corticomedullary 0.900): corticomedullary."),
    ({"plain": (1.0, 0.9), "excretory": (1.0, 0.9)}, "plain", ["plain", "excretory"],
     "by the phase order (first listed): plain."),
])
def test_best_phase_ties_are_said(keys, best, tied, text):
    from ccrcc_grade.study.run import choose_best_phase

    got, record = choose_best_phase(keys)
    assert got == best and record["tied"] == tied
    assert (text in record["text"]) if text else record["text"] == ""


def test_study_cross_validation(slices_cohort, tmp_path):
    out = tmp_path / "cv"
    assert run_cli("study", slices_cohort, "--out", out, "--preset", "quick", "--folds", "2", "--epochs", "1",
                   "--image-size", "32", "--size", "32") == 0
    res = json.loads((out / "results.json").read_text())
    cv = res["cross_validation"]
    assert f"se_resnet34-{res['best_phase']}" in cv and len(cv) == 6
    for name, r in cv.items():
        assert len(r["runs"]) == 2
        s = r["cv"]["patient"]["auc"]
        assert len(s["folds"]) == 2 and s["mean"] == pytest.approx(np.nanmean(s["folds"]))
    tests = [set(__import__("torch").load(f"{r}/best.pt", weights_only=True)["splits"]["test"])
             for r in cv["resnet34-plain"]["runs"]]
    assert not (tests[0] & tests[1]) and len(tests[0] | tests[1]) == 16
    assert "Cross-validation" in (out / "report.html").read_text()


def test_evaluate_never_replaces_an_earlier_evaluation(trained_run, copy_tree, capsys):
    """Issue #16: `evaluate RUN` silently overwrote the study's eval-test/metrics.json."""
    run = copy_tree(trained_run, "run")
    assert run_cli("evaluate", run, "--bootstrap", "100") == 0
    first = (run / "eval-test" / "metrics.json").read_bytes()
    capsys.readouterr()
    assert run_cli("evaluate", run, "--bootstrap", "50") == 0
    out = capsys.readouterr().out
    assert (run / "eval-test" / "metrics.json").read_bytes() == first
    assert f"{run / 'eval-test'} holds an earlier evaluation (kept as it is); this one goes to {run / 'eval-test-2'}" in out
    assert json.loads((run / "eval-test-2" / "metrics.json").read_text())["patient"]["bootstrap"]["resamples"] == 50
    assert run_cli("evaluate", run, "--bootstrap", "50", "--out", run / "eval-test") == 0   # named: replaced, said
    assert "replaced the earlier evaluation in" in capsys.readouterr().out
