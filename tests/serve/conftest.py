"""Fixtures of the workstation tests: a patient's DICOM files as an upload, its boxes as the API
takes them, and the check of a DICOM SR against a grading result (test_app, test_pacs and
test_page all use them)."""

from __future__ import annotations

import csv
from pathlib import Path

import pydicom
import pytest


def _patient_files(cohort: Path, pid: str) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Every DICOM file of a patient (all four phase series) as multipart ``files`` fields."""
    return [("files", (f.name, f.read_bytes(), "application/dicom")) for f in sorted((cohort / pid).rglob("*.dcm"))]


def _cohort_boxes(cohort: Path, pid: str, phase: str = "parenchymal") -> list[dict]:
    """The patient's boxes of boxes.csv, addressed by SOP Instance UID as the API wants them."""
    out = []
    for r in csv.DictReader(open(cohort / "boxes.csv")):
        if r["patient_id"] == pid and r["phase"] == phase:
            sop = str(pydicom.dcmread(cohort / r["file"], stop_before_pixels=True).SOPInstanceUID)
            out.append({"sop_instance_uid": sop, **{k: float(r[k]) for k in ("x_min", "y_min", "x_max", "y_max")}})
    return out


def _check_sr(sr: pydicom.Dataset, res: dict, boxes: list[dict]) -> None:
    """The SR holds the grade, P(high), one planar ROI per box referencing its image, the model
    as the algorithm, and VerificationFlag UNVERIFIED."""
    import highdicom as hd

    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "COMPLETE"
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    groups = report.content.get_planar_roi_measurement_groups()
    assert len(groups) == len(boxes)

    def ref(g):  # the source image of a group's region (SCOORD content item -> its IMAGE child)
        return g.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID

    refs = {ref(g) for g in groups}
    assert refs == {b["sop_instance_uid"] for b in boxes}
    by_sop = {s["sop_instance_uid"]: s["prob_high"] for s in res["slices"]}
    for g in groups:
        (m,) = g.get_measurements()
        assert float(m.value) == pytest.approx(by_sop[ref(g)])
    (patient,) = report.content.get_image_measurement_groups()
    assert float(patient.get_measurements()[0].value) == pytest.approx(res["prob_high"])
    (grade,) = patient.get_qualitative_evaluations()
    assert grade.value.meaning.startswith(
        {"high": "High WHO/ISUP", "low": "Low WHO/ISUP"}.get(res["grade"], "Uncertain")
    )
    assert "ccrcc-grade resnet34-parenchymal" in _text_values(sr)  # the model, as the algorithm
    evidence = {
        i.ReferencedSOPInstanceUID
        for s in sr.CurrentRequestedProcedureEvidenceSequence
        for se in s.ReferencedSeriesSequence
        for i in se.ReferencedSOPSequence
    }
    assert evidence == {b["sop_instance_uid"] for b in boxes}


def _text_values(ds: pydicom.Dataset) -> list[str]:
    out = []
    for e in ds:
        if e.VR == "SQ":
            for item in e.value:
                out += _text_values(item)
        elif e.keyword == "TextValue":
            out.append(str(e.value))
    return out


def _box_iou(a: dict, b: dict) -> float:
    """IoU of two boxes given as API dicts (x_min, y_min, x_max, y_max)."""
    from ccrcc_grade.stats.agreement import iou

    corners = ("x_min", "y_min", "x_max", "y_max")
    return iou(tuple(a[c] for c in corners), tuple(b[c] for c in corners))


@pytest.fixture(scope="session")
def box_iou():
    """``box_iou(a, b)``: IoU of two API boxes (the workstation's assisted-box tests)."""
    return _box_iou


@pytest.fixture(scope="session")
def patient_files():
    """``patient_files(cohort, pid)``: every DICOM file of a patient as multipart ``files``."""
    return _patient_files


@pytest.fixture(scope="session")
def cohort_boxes():
    """``cohort_boxes(cohort, pid, phase)``: the patient's boxes.csv rows by SOP Instance UID."""
    return _cohort_boxes


@pytest.fixture(scope="session")
def check_sr():
    """``check_sr(sr, result, boxes)``: asserts the SR's content against a grading result."""
    return _check_sr
