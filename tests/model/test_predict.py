"""ccrcc_grade.model.predict: grading a new patient."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch

from ccrcc_grade.model.predict import predict_patient


@pytest.fixture(scope="module")
def evaluated(run_cli, trained_run):
    if not (trained_run / "eval-test" / "predictions_patient.csv").is_file():
        assert run_cli("evaluate", trained_run, "--bootstrap", "50") == 0
    rows = list(csv.DictReader(open(trained_run / "eval-test" / "predictions_patient.csv")))
    return {r["patient_id"]: float(r["prob_high"]) for r in rows}


def _err(run_cli, capsys, *args):
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_predict_matches_evaluate_for_unseen_patients(run_cli, trained_run, slices_cohort, evaluated, tmp_path, capsys):
    ckpt = torch.load(trained_run / "best.pt", weights_only=True)
    for pid in ckpt["splits"]["test"]:
        assert pid not in ckpt["splits"]["train"]
        assert run_cli("predict", trained_run / "best.pt", slices_cohort / pid, "--json", tmp_path / f"{pid}.json") == 0
        r = json.loads((tmp_path / f"{pid}.json").read_text())
        assert r["patient_id"] == pid and r["phase"] == "parenchymal"
        assert r["prob_high"] == pytest.approx(evaluated[pid], abs=1e-5)
        assert r["grade"] == ("high" if r["prob_high"] >= r["threshold"] else "low")
        assert r["threshold"] == pytest.approx(ckpt["threshold"]) == 0.5  # tiny validation: the study default
        assert r["threshold_policy"]["method"] == "default" and "(study default)" in r["decision"]
        assert len(r["slices"]) == len(list((slices_cohort / pid / "parenchymal").glob("*.json")))
        assert r["model"]["architecture"] == "resnet34" and r["model"]["val_auc"] is not None
    out = capsys.readouterr().out
    assert "P(high) = " in out and "(study default) -> " in out


def test_predict_dicom_series_with_boxes(trained_run, dicom_cohort, slices_cohort, tmp_path):
    pid = torch.load(trained_run / "best.pt", weights_only=True)["splits"]["test"][0]
    boxes = tmp_path / "boxes.csv"
    rows = [r for r in csv.DictReader(open(dicom_cohort / "boxes.csv")) if r["patient_id"] == pid]
    with open(boxes, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    r = predict_patient(trained_run / "best.pt", dicom_cohort / pid / "parenchymal", boxes=boxes)
    ref = predict_patient(trained_run / "best.pt", slices_cohort / pid / "parenchymal")
    assert len(r["slices"]) == len(ref["slices"])
    assert r["prob_high"] == pytest.approx(ref["prob_high"], abs=0.03)  # DICOM vs exported PNG of the same scan


def test_prediction_errors(run_cli, trained_run, slices_cohort, tmp_path, capsys):
    pid = torch.load(trained_run / "best.pt", weights_only=True)["splits"]["test"][0]
    junk = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(2)}, junk)
    assert "not a ccrcc-grade model file" in _err(run_cli, capsys, "predict", junk, slices_cohort / pid)
    ck = torch.load(trained_run / "best.pt", weights_only=True)
    ck["format_version"] = 99
    torch.save(ck, tmp_path / "future.pt")
    assert "incompatible ccrcc-grade version" in _err(
        run_cli, capsys, "predict", tmp_path / "future.pt", slices_cohort / pid
    )
    (tmp_path / "x.onnx").write_bytes(b"nope")
    assert "not a readable ONNX model" in _err(run_cli, capsys, "predict", tmp_path / "x.onnx", slices_cohort / pid)
    assert "trained on the parenchymal phase" in _err(
        run_cli, capsys, "predict", trained_run / "best.pt", slices_cohort / pid / "plain"
    )
    p = tmp_path / "pat"
    shutil.copytree(slices_cohort / pid, p / pid)
    for j in (p / pid / "parenchymal").glob("*.json"):
        j.unlink()
    assert "no tumour boxes" in _err(run_cli, capsys, "predict", trained_run / "best.pt", p / pid / "parenchymal")
    shutil.rmtree(p / pid / "parenchymal")
    assert "no parenchymal folder" in _err(run_cli, capsys, "predict", trained_run / "best.pt", p / pid)
    q = tmp_path / "q"
    shutil.copytree(slices_cohort / pid / "parenchymal", q)
    img = sorted(q.glob("*.png")) or sorted(q.glob("*.bmp"))
    for f in img:
        f.write_bytes(b"\x89PNG broken")
    assert "unreadable or truncated image" in _err(run_cli, capsys, "predict", trained_run / "best.pt", q)
    assert "input not found" in _err(run_cli, capsys, "predict", trained_run / "best.pt", tmp_path / "missing")
    assert "a folder without best.pt" in _err(run_cli, capsys, "predict", tmp_path, slices_cohort / pid)


def test_predict_accepts_a_run_folder(trained_run, slices_cohort):
    """Issue #16: `predict RUN_FOLDER` said 'model file not found'."""
    pid = torch.load(trained_run / "best.pt", weights_only=True)["splits"]["test"][0]
    a = predict_patient(trained_run, slices_cohort / pid)
    b = predict_patient(trained_run / "best.pt", slices_cohort / pid)
    assert a["prob_high"] == b["prob_high"] and a["decision"] == b["decision"]


def test_predict_uses_only_the_patients_own_boxes(
    read_rows, refused, write_rows, trained_run, dicom_cohort, tmp_path, capsys
):
    import torch

    from ccrcc_grade.model.predict import predict_patient

    pid, other = torch.load(trained_run / "best.pt", weights_only=True)["splits"]["test"][:2]
    rows = read_rows(dicom_cohort / "boxes.csv")
    write_rows(tmp_path / "mixed.csv", [r for r in rows if r["patient_id"] in (pid, other)])
    r = predict_patient(trained_run, dicom_cohort / pid / "parenchymal", boxes=tmp_path / "mixed.csv")
    own = [x for x in rows if x["patient_id"] == pid and x["phase"] == "parenchymal"]
    assert len(r["slices"]) == len(own)  # not the other patient's boxes matched by file name
    write_rows(tmp_path / "other.csv", [x for x in rows if x["patient_id"] == other])
    refused(
        capsys,
        ["predict", trained_run, dicom_cohort / pid / "parenchymal", "--boxes", tmp_path / "other.csv"],
        "other.csv",
        f"no parenchymal boxes for patient '{pid}'",
    )
