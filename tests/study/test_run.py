"""ccrcc_grade.study.run: the study end to end."""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.stats.format import format_p


def test_study_quick_end_to_end_and_resumable(run_cli, study_out, slices_cohort, copy_tree, capsys):
    out = copy_tree(study_out[0], "study")  # resumed below without --second-reader: not the shared one
    res = json.loads((out / "results.json").read_text())
    names = set(res["runs"])
    assert {f"resnet34-{p}" for p in ("plain", "corticomedullary", "parenchymal", "excretory", "combined")} <= names
    best = res["best_phase"]
    assert f"se_resnet34-{best}" in names and len(names) == 6
    assert res["val_auc_resnet34"][best] == max(res["val_auc_resnet34"].values())
    assert set(res["comparison"]) >= {"patient", "image"}
    html = (out / "report.html").read_text()
    for needed in (
        "Table 2",
        "Table 3",
        "Table 4",
        "Figure 2",
        "Figure 3",
        "Figure 4",
        "Limitations",
        "data:image/png;base64",
        "Synthetic cohort",
    ):
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
    for name, why in res["evidence"]["skipped"].items():  # too few validation patients: said why
        assert name not in models and why
    for needed in ("Model comparison", "TRIPOD+AI summary", "Decision curves", "Reliability diagrams"):
        assert needed in html
    for r in res["runs"].values():
        assert math.isfinite(r["test"]["patient"]["accuracy"]["value"])
    mtime = (out / "runs" / f"resnet34-{best}" / "best.pt").stat().st_mtime
    assert (
        run_cli(
            "study",
            slices_cohort,
            "--out",
            out,
            "--preset",
            "quick",
            "--epochs",
            "1",
            "--image-size",
            "32",
            "--size",
            "32",
        )
        == 0
    )
    assert (out / "runs" / f"resnet34-{best}" / "best.pt").stat().st_mtime == mtime
    second = capsys.readouterr().out
    assert "[study] model 6 of 6: se_resnet34-" in second and "finished earlier, reused" in second


def test_study_jobs_give_the_same_numbers_as_sequential(run_cli, study_out, slices_cohort, tmp_path, capsys):
    """Issue 12: trainings run concurrently (2 processes on this CPU) give the results of the
    sequential study: same config, seed and data order per run."""
    seq = json.loads((study_out[0] / "results.json").read_text())
    out = tmp_path / "parallel"
    assert (
        run_cli(
            "study",
            slices_cohort,
            "--out",
            out,
            "--preset",
            "quick",
            "--epochs",
            "1",
            "--image-size",
            "32",
            "--size",
            "32",
            "--jobs",
            "2",
            "--no-evidence",
        )
        == 0
    )
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
    assert "models" not in par  # --no-evidence


@pytest.mark.parametrize(
    "jobs, message",
    [
        ("0", "jobs (--jobs) must be auto or a whole number >= 1"),
        ("many", "jobs (--jobs) must be auto or a whole number >= 1"),
    ],
)
def test_study_refuses_bad_jobs(run_cli, jobs, message, slices_cohort, tmp_path, capsys):
    from ccrcc_grade.study.run import resolve_jobs

    with pytest.raises(CcrccError, match=re.escape(message)):
        resolve_jobs(jobs, "cpu")
    assert run_cli("study", slices_cohort, "--out", tmp_path / "s", "--preset", "quick", "--jobs", jobs) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "s").exists()


def test_study_jobs_auto_is_one_on_a_cpu():
    from ccrcc_grade.study.run import resolve_jobs

    assert resolve_jobs("auto", "cpu") == 1 and resolve_jobs("3", "cpu") == 3


@pytest.mark.parametrize(
    "keys, best, tied, text",
    [
        ({"plain": (0.8, 0.7), "parenchymal": (0.9, 0.6)}, "parenchymal", ["parenchymal"], ""),
        (
            {"plain": (1.0, 0.7), "corticomedullary": (1.0, 0.9), "parenchymal": (0.9, 1.0)},
            "corticomedullary",
            ["plain", "corticomedullary"],
            "2 phases tie at validation patient AUC 1.000 (plain, corticomedullary); the tie "
            "was broken by validation image AUC (plain 0.700, corticomedullary 0.900): corticomedullary.",
        ),
        (
            {"plain": (1.0, 0.9), "excretory": (1.0, 0.9)},
            "plain",
            ["plain", "excretory"],
            "by the phase order (first listed): plain.",
        ),
    ],
)
def test_best_phase_ties_are_said(keys, best, tied, text):
    from ccrcc_grade.study.run import choose_best_phase

    got, record = choose_best_phase(keys)
    assert got == best and record["tied"] == tied
    assert (text in record["text"]) if text else record["text"] == ""


def test_study_cross_validation(run_cli, slices_cohort, tmp_path):
    out = tmp_path / "cv"
    assert (
        run_cli(
            "study",
            slices_cohort,
            "--out",
            out,
            "--preset",
            "quick",
            "--folds",
            "2",
            "--epochs",
            "1",
            "--image-size",
            "32",
            "--size",
            "32",
        )
        == 0
    )
    res = json.loads((out / "results.json").read_text())
    cv = res["cross_validation"]
    assert f"se_resnet34-{res['best_phase']}" in cv and len(cv) == 6
    for r in cv.values():
        assert len(r["runs"]) == 2
        s = r["cv"]["patient"]["auc"]
        assert len(s["folds"]) == 2 and s["mean"] == pytest.approx(np.nanmean(s["folds"]))
    tests = [
        set(__import__("torch").load(f"{r}/best.pt", weights_only=True)["splits"]["test"])
        for r in cv["resnet34-plain"]["runs"]
    ]
    assert not (tests[0] & tests[1]) and len(tests[0] | tests[1]) == 16
    assert "Cross-validation" in (out / "report.html").read_text()


def test_study_on_a_kits_folder(run_cli, kits_dir, tmp_path):
    """`study --format kits`: one contrast phase, so ResNet34 and SE-ResNet34 on it alone."""
    out = tmp_path / "ks"
    assert (
        run_cli(
            "study",
            kits_dir,
            "--format",
            "kits",
            "--out",
            out,
            "--preset",
            "quick",
            "--epochs",
            "1",
            "--image-size",
            "32",
            "--size",
            "32",
            "--ratios",
            "1:1:1",
        )
        == 0
    )
    res = json.loads((out / "results.json").read_text())
    assert res["best_phase"] == "corticomedullary"
    assert set(res["runs"]) == {"resnet34-corticomedullary", "se_resnet34-corticomedullary"}
    assert res["dataset"]["test"]["corticomedullary"]["high"]["patients"] == 1
    assert (out / "report.html").is_file()


def test_a_study_folder_belongs_to_one_cohort(
    snapshot, read_rows, refused, run_cli, write_rows, slices_cohort, tmp_path, capsys
):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(slices_cohort, a)
    shutil.copytree(slices_cohort, b)
    out = tmp_path / "study"
    (out / "work").mkdir(parents=True)
    assert run_cli("ingest", a, "--out", out / "work", "--size", "32") == 0
    capsys.readouterr()
    before = snapshot(out)
    refused(
        capsys,
        ["study", b, "--out", out, "--preset", "quick"],
        f"holds the study of cohort {a.resolve()}",
        "give another --out",
    )
    rows = read_rows(a / "clinical.csv")
    rows[0]["who_isup_grade"] = "4" if rows[0]["who_isup_grade"] != "4" else "1"
    write_rows(a / "clinical.csv", rows)
    refused(capsys, ["study", a, "--out", out, "--preset", "quick"], "has changed since this study ingested it")
    assert snapshot(out) == before


def test_a_run_of_another_cohort_is_not_reused(refused, run_cli, slices_cohort, tmp_path, capsys):
    out = tmp_path / "study"
    (out / "work").mkdir(parents=True)
    assert run_cli("ingest", slices_cohort, "--out", out / "work", "--size", "32") == 0
    run = out / "runs" / "resnet34-plain"
    run.mkdir(parents=True)
    (run / "best.pt").write_bytes(b"a model of another cohort")
    (run / "train_summary.json").write_text(json.dumps({"cohort": {"path": "/elsewhere", "fingerprint": "0123abcd"}}))
    capsys.readouterr()
    refused(
        capsys,
        ["study", slices_cohort, "--out", out, "--preset", "quick"],
        str(run),
        "was trained on another cohort (/elsewhere)",
    )
    assert (run / "best.pt").read_bytes() == b"a model of another cohort"


def test_study_refuses_a_missing_second_reader_before_anything(refused, capsys, slices_cohort, tmp_path):
    refused(
        capsys,
        ["study", slices_cohort, "--out", tmp_path / "s", "--preset", "quick", "--second-reader", tmp_path / "no.csv"],
        "--second-reader",
        "not found",
    )
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "move, message",
    [
        (("val", 1, "train"), "the val patients have no high-grade patient with a"),
        (("test", 0, "train"), "the test patients have no low-grade patient with a"),
        (("train", 1, "test"), "the train patients have no high-grade patient with a"),
    ],
)
def test_preflight_refuses_a_study_a_model_could_not_learn_or_be_tested_on(work, move, message):
    """Before any training: a part without a grade is named, with its phase."""
    from ccrcc_grade.core.errors import CcrccError
    from ccrcc_grade.ingest.cache import CropCache
    from ccrcc_grade.study.run import preflight

    cache = CropCache.load(work)
    splits = json.loads((work / "splits.json").read_text())
    labels = {r["patient_id"]: int(r["label"]) for r in cache.manifest}
    src, grade, dst = move
    gone = [p for p in splits[src] if labels[p] == grade]
    splits[src] = [p for p in splits[src] if p not in gone]
    splits[dst] = splits[dst] + gone
    preflight(cache, json.loads((work / "splits.json").read_text()), cache.phases(), None)  # as split: fine
    with pytest.raises(CcrccError, match=message):
        preflight(cache, splits, cache.phases(), None)


def test_the_study_says_how_long_it_will_take_before_it_starts(work):
    from ccrcc_grade.core.config import StudyOptions
    from ccrcc_grade.ingest.cache import CropCache
    from ccrcc_grade.study.run import estimate_seconds

    cache = CropCache.load(work)
    splits = json.loads((work / "splits.json").read_text())
    opts = StudyOptions(preset="quick", device="cpu")
    protocol = opts.resolved()
    e = estimate_seconds(cache, splits, ["parenchymal", "plain"], protocol, opts)
    train = set(splits["train"])
    per_model = [len(cache.select(ph, train)) * protocol.repeats * protocol.epochs for ph in ("parenchymal", "plain")]
    assert e["train_images"] == sum(per_model) + max(per_model)  # + the SE-ResNet34 of one phase
    assert 0 < e["images_per_second"] < 1e5 and e["seconds"] == round(e["train_images"] / e["images_per_second"] * 1.25)
    assert e["text"].startswith("estimated training time") and "images/s on cpu" in e["text"]


@pytest.mark.parametrize("n_high, said", [(1, True), (2, True), (3, False)])
def test_limitations_say_when_a_conclusion_rests_on_one_or_two_patients(n_high, said):
    from ccrcc_grade.study.run import limitations

    test = {"combined": {"low": {"patients": 9, "crops": 90}, "high": {"patients": n_high, "crops": 10}}}
    text = limitations({"dataset": {"test": test}, "study": {}})
    assert ("rests on one or two patients" in text) is said
    if said:
        assert f"{n_high} high-grade patient" in text


@pytest.mark.parametrize(
    ("raw", "holm", "differ"),
    [
        (0.040, 0.399, "0 of 2 models differ"),
        (0.001, 0.004, "1 of 2 models differ"),
        (0.2, 0.4, "0 of 2 models differ"),
    ],
)
def test_limitations_judge_significance_on_the_holm_adjusted_p(raw, holm, differ):
    """The review's case: P = 0.040 unadjusted, 0.399 after Holm: not called a difference."""
    from ccrcc_grade.study.run import limitations

    models = [
        {"name": "resnet34-plain", "delong_p_vs_best_phase": raw, "delong_p_holm": holm},
        {"name": "resnet34-excretory", "delong_p_vs_best_phase": 0.5, "delong_p_holm": 0.5},
        {"name": "resnet34-parenchymal", "delong_p_vs_best_phase": None, "delong_p_holm": None},  # the reference
    ]
    text = limitations({"dataset": {}, "study": {}, "models": models})
    assert differ in text and "significance is judged on the adjusted P" in text
    assert f"Holm-adjusted P = {format_p(holm)} for resnet34-plain" in text and "significant" not in text
