"""ccrcc_grade.model.predict: grading a new patient."""

from __future__ import annotations

import csv
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


def _junk_checkpoint(run, cohort, pid, tmp):
    torch.save({"weights": torch.zeros(2)}, tmp / "junk.pt")
    return tmp / "junk.pt", cohort / pid


def _future_checkpoint(run, cohort, pid, tmp):
    ck = torch.load(run / "best.pt", weights_only=True)
    ck["format_version"] = 99
    torch.save(ck, tmp / "future.pt")
    return tmp / "future.pt", cohort / pid


def _broken_onnx(run, cohort, pid, tmp):
    (tmp / "x.onnx").write_bytes(b"nope")
    return tmp / "x.onnx", cohort / pid


def _other_phase(run, cohort, pid, tmp):
    return run / "best.pt", cohort / pid / "plain"


def _no_boxes(run, cohort, pid, tmp):
    shutil.copytree(cohort / pid, tmp / pid)
    for j in (tmp / pid / "parenchymal").glob("*.json"):
        j.unlink()
    return run / "best.pt", tmp / pid / "parenchymal"


def _no_phase_folder(run, cohort, pid, tmp):
    shutil.copytree(cohort / pid, tmp / pid)
    shutil.rmtree(tmp / pid / "parenchymal")
    return run / "best.pt", tmp / pid


def _broken_images(run, cohort, pid, tmp):
    q = tmp / "q"
    shutil.copytree(cohort / pid / "parenchymal", q)
    for f in sorted(q.glob("*.png")) or sorted(q.glob("*.bmp")):
        f.write_bytes(b"\x89PNG broken")
    return run / "best.pt", q


def _missing_input(run, cohort, pid, tmp):
    return run / "best.pt", tmp / "missing"


def _folder_without_model(run, cohort, pid, tmp):
    return tmp, cohort / pid


@pytest.mark.parametrize(
    "make, needle",
    [
        (_junk_checkpoint, "not a ccrcc-grade model file"),
        (_future_checkpoint, "incompatible ccrcc-grade version"),
        (_broken_onnx, "not a readable ONNX model"),
        (_other_phase, "trained on the parenchymal phase"),
        (_no_boxes, "no tumour boxes"),
        (_no_phase_folder, "no parenchymal folder"),
        (_broken_images, "unreadable or truncated image"),
        (_missing_input, "input not found"),
        (_folder_without_model, "a folder without best.pt"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
def test_prediction_errors(run_cli, trained_run, slices_cohort, tmp_path, capsys, make, needle):
    """Every bad model or input of `predict`: exit 2 with one line naming the problem."""
    pid = torch.load(trained_run / "best.pt", weights_only=True)["splits"]["test"][0]
    model, inp = make(trained_run, slices_cohort, pid, tmp_path)
    assert run_cli("predict", model, inp) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


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
    c = tmp_path / "c"  # the CSVs beside the cohort, whose paths they name
    shutil.copytree(dicom_cohort, c)
    rows = read_rows(c / "boxes.csv")
    write_rows(c / "mixed.csv", [r for r in rows if r["patient_id"] in (pid, other)])
    r = predict_patient(trained_run, c / pid / "parenchymal", boxes=c / "mixed.csv")
    own = [x for x in rows if x["patient_id"] == pid and x["phase"] == "parenchymal"]
    assert len(r["slices"]) == len(own)  # not the other patient's boxes matched by file name
    write_rows(c / "other.csv", [x for x in rows if x["patient_id"] == other])
    refused(
        capsys,
        ["predict", trained_run, c / pid / "parenchymal", "--boxes", c / "other.csv"],
        "other.csv",
        f"no parenchymal boxes for patient '{pid}'",
    )
