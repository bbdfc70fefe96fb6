"""One patient, one study, one series, original axial images only: ingest (dicom and
--detect-phases layouts) and predict refuse, naming the file, what would mix patients, series or
images, or grade an image the model was not made for; --allow-derived overrides the latter and
says so."""

from __future__ import annotations

import json
import shutil

import pydicom
import pytest


def _edit(files, **tags):
    for f in files:
        ds = pydicom.dcmread(f)
        for k, v in tags.items():
            setattr(ds, k, v)
        ds.save_as(f)


def _series(c, pid, phase):
    return sorted((c / pid / phase).glob("*.dcm"))


def _mix(c, case, read_rows, write_rows):
    """Break the copied cohort ``c`` as ``case`` says; returns the file the refusal must name."""
    pid = sorted(p.name for p in c.iterdir() if p.is_dir())[0]
    other = sorted(p.name for p in c.iterdir() if p.is_dir())[1]
    par, cort = _series(c, pid, "parenchymal"), _series(c, pid, "corticomedullary")
    if case == "two PatientIDs in one patient folder":
        _edit(cort, PatientID="SOMEONE-ELSE")
        return "SOMEONE-ELSE"
    if case == "two names, blank IDs":
        _edit(par, PatientID="", PatientName="Some^Patient")
        _edit(cort, PatientID="", PatientName="Other^Patient")
        return "patient name and birth date"
    if case == "two series share a SeriesInstanceUID":
        uid = pydicom.dcmread(par[0]).SeriesInstanceUID
        _edit(cort, SeriesInstanceUID=uid)
        return "two series share one UID"
    if case == "an image twice in the study":
        ds = pydicom.dcmread(par[0])
        ds.SeriesInstanceUID = pydicom.dcmread(cort[0]).SeriesInstanceUID
        ds.ImagePositionPatient = [0, 0, -999]  # a position the cortical series does not have
        ds.save_as(c / pid / "corticomedullary" / "copy.dcm")
        return "the same image twice"
    if case == "two series interleaved in one folder":
        ds = pydicom.dcmread(par[1])
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(c / pid / "parenchymal" / "interleaved.dcm")
        return "at the same position"
    if case == "a box row naming another patient's image":
        rows = read_rows(c / "boxes.csv")
        mine = next(r for r in rows if r["patient_id"] == pid and r["phase"] == "parenchymal")
        theirs = next(r for r in rows if r["patient_id"] == other and r["phase"] == "parenchymal")
        mine["file"] = theirs["file"]
        write_rows(c / "boxes.csv", rows)
        return theirs["file"]
    raise AssertionError(case)


MIXES = [
    "two PatientIDs in one patient folder",
    "two names, blank IDs",
    "two series share a SeriesInstanceUID",
    "an image twice in the study",
    "two series interleaved in one folder",
    "a box row naming another patient's image",
]


@pytest.mark.parametrize("layout", ["dicom", "detect"])
@pytest.mark.parametrize("case", MIXES)
def test_ingest_refuses_mixed_patients_series_and_images(
    read_rows, write_rows, refused, dicom_cohort, tmp_path, capsys, case, layout
):
    c = tmp_path / "c"
    shutil.copytree(dicom_cohort, c)
    needle = _mix(c, case, read_rows, write_rows)
    args = ["ingest", c, "--out", tmp_path / "w"] + (["--detect-phases"] if layout == "detect" else [])
    refused(capsys, args, needle)
    assert not (tmp_path / "w").exists()


DERIVED = {
    "ImageType DERIVED/SECONDARY/MPR": ({"ImageType": ["DERIVED", "SECONDARY", "MPR"]}, "a derived image"),
    "ImageType ORIGINAL/PRIMARY/LOCALIZER": ({"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}, "a localizer"),
    "ImageType MIP": ({"ImageType": ["DERIVED", "PRIMARY", "MIP"]}, "a derived image"),
    "coronal orientation": ({"ImageOrientationPatient": [1, 0, 0, 0, 0, -1]}, "is not axial"),
    "multi-frame object": ({"NumberOfFrames": 3}, "multi-frame object (3 frames)"),
}


@pytest.mark.parametrize("case", list(DERIVED))
def test_derived_images_are_not_graded_without_the_override(refused, run_cli, dicom_cohort, tmp_path, capsys, case):
    tags, needle = DERIVED[case]
    c = tmp_path / "c"
    shutil.copytree(dicom_cohort, c)
    pid = sorted(p.name for p in c.iterdir() if p.is_dir())[0]
    _edit(_series(c, pid, "parenchymal"), **tags)
    refused(capsys, ["ingest", c, "--out", tmp_path / "w"], needle, "--allow-derived")
    assert not (tmp_path / "w").exists()
    if case in ("multi-frame object", "coronal orientation"):
        return  # one frame of pixel data; axial positions along a coronal normal: unreadable either way
    assert run_cli("ingest", c, "--out", tmp_path / "w", "--allow-derived") == 0
    report = json.loads((tmp_path / "w" / "ingest_report.json").read_text())
    assert any("--allow-derived" in w for w in report["warnings"])


def test_detect_phases_leaves_a_derived_series_unassigned(run_cli, dicom_cohort, tmp_path, capsys):
    c = tmp_path / "c"
    shutil.copytree(dicom_cohort, c)
    pid = sorted(p.name for p in c.iterdir() if p.is_dir())[0]
    _edit(_series(c, pid, "excretory"), ImageType=["DERIVED", "SECONDARY", "MPR"])
    assert run_cli("ingest", c, "--out", tmp_path / "w", "--detect-phases") == 0
    report = json.loads((tmp_path / "w" / "ingest_report.json").read_text())
    rows = [r for r in report["phase_assignment"] if r["patient_id"] == pid]
    derived = [r for r in rows if "derived image" in r["rule"]]
    assert len(derived) == 1 and derived[0]["phase"] is None
    assert any(pid in w and "derived image" in w for w in report["warnings"])


@pytest.mark.parametrize(
    "case",
    ["row names another patient's image", "row names another folder holding the same file names", "derived series"],
)
def test_predict_grades_only_the_folder_it_is_given(
    read_rows, write_rows, refused, run_cli, dicom_cohort, trained_run, tmp_path, capsys, case
):
    c = tmp_path / "c"
    shutil.copytree(dicom_cohort, c)
    pids = sorted(p.name for p in c.iterdir() if p.is_dir())
    rows = read_rows(c / "boxes.csv")
    mine = [r for r in rows if r["patient_id"] == pids[0] and r["phase"] == "parenchymal"]
    theirs = [r for r in rows if r["patient_id"] == pids[1] and r["phase"] == "parenchymal"]
    if case == "row names another patient's image":  # the cohort's CSV, one row pointing at P2's slice
        mine[0]["file"] = theirs[0]["file"]
        write_rows(c / "boxes.csv", rows)
        refused(
            capsys,
            ["predict", trained_run, c / pids[0] / "parenchymal", "--boxes", c / "boxes.csv"],
            theirs[0]["file"],
            "another series than the one graded",
        )
        return
    if case == "row names another folder holding the same file names":
        # P1's rows point at P2's folder, where files carry P1's file names: by name alone they matched
        src = c / theirs[0]["file"]
        for r in mine:
            name = r["file"].split("/")[-1]
            shutil.copy(src, c / pids[1] / "parenchymal" / name)
            r["file"] = f"{pids[1]}/parenchymal/{name}"
        write_rows(c / "boxes.csv", rows)
        refused(
            capsys,
            ["predict", trained_run, c / pids[0] / "parenchymal", "--boxes", c / "boxes.csv"],
            "another series than the one graded",
        )
        return
    _edit(_series(c, pids[0], "parenchymal"), ImageType=["DERIVED", "SECONDARY", "MPR"])
    args = ["predict", trained_run, c / pids[0] / "parenchymal", "--boxes", c / "boxes.csv", "--box-k", "0"]
    refused(capsys, args, "a derived image", "--allow-derived")
    out = tmp_path / "r.json"
    assert run_cli(*args, "--allow-derived", "--json", out) == 0
    assert any("--allow-derived" in w for w in json.loads(out.read_text())["warnings"])
