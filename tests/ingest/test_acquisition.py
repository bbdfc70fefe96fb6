"""ccrcc_grade.ingest.acquisition: centre, scanner and acquisition per patient and phase."""

from __future__ import annotations

import pydicom
import pytest

from ccrcc_grade.ingest.acquisition import clean_text, patient_attributes
from ccrcc_grade.ingest.pipeline import ingest


def test_dicom_cohort_records_centre_and_scanner(multicentre_cohort, tmp_path, read_rows):
    rep = ingest(multicentre_cohort, tmp_path / "w", show_progress=False)
    rows = read_rows(tmp_path / "w" / "acquisition.csv")
    clinical = {r["patient_id"]: r for r in read_rows(multicentre_cohort / "clinical.csv")}
    assert {(r["patient_id"], r["phase"]) for r in rows} == {
        (p, ph) for p in clinical for ph in ("plain", "corticomedullary", "parenchymal", "excretory")
    }
    for r in rows:  # what the DICOM header of the patient's series says, and the clinical centre
        assert r["center"] == clinical[r["patient_id"]]["center"]
        f = next((multicentre_cohort / r["patient_id"] / r["phase"]).glob("*.dcm"))
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert (r["manufacturer"], r["model_name"], r["kernel"]) == (
            ds.Manufacturer,
            ds.ManufacturerModelName,
            ds.ConvolutionKernel,
        )
        assert float(r["kvp"]) == float(ds.KVP) and float(r["slice_thickness_mm"]) == float(ds.SliceThickness)
        assert float(r["pixel_spacing_mm"]) == pytest.approx(float(ds.PixelSpacing[1]), abs=1e-4)
        assert 5 < float(r["tumor_size_mm"]) < 150
    assert rep["centers"] == sorted({r["center"] for r in clinical.values()}) and len(rep["manufacturers"]) == 3
    attrs = patient_attributes(tmp_path / "w", "parenchymal")
    pid = next(iter(clinical))
    # clinical.csv's tumour size wins over the boxes' longest side
    assert attrs[pid]["tumor_size_cm"] == float(clinical[pid]["tumor_size_cm"])
    assert attrs[pid]["manufacturer"].startswith("Phantom Vendor")


def test_without_a_centre_column_the_institution_names_the_centre(
    multicentre_cohort, copy_tree, tmp_path, read_rows, write_rows
):
    coh = copy_tree(multicentre_cohort, "coh")
    rows = read_rows(coh / "clinical.csv")
    write_rows(
        coh / "clinical.csv", [{k: v for k, v in r.items() if k not in ("center", "tumor_size_cm")} for r in rows]
    )
    ingest(coh, tmp_path / "w", show_progress=False)
    attrs = patient_attributes(tmp_path / "w")
    assert {a["center"] for a in attrs.values()} <= {"SYNTH-1", "SYNTH-2", "SYNTH-3"}
    assert all(a["tumor_size_cm"] and 0.5 < a["tumor_size_cm"] < 15 for a in attrs.values())  # from the boxes


@pytest.mark.parametrize(
    "element, value, field, expect",
    [
        ("Manufacturer", "<script>alert(1)</script>\x1b[31m", "manufacturer", "<script>alert(1)</script>[31m"),
        ("Manufacturer", "X" * 300, "manufacturer", "X" * 64),
        ("SliceThickness", "-5", "slice_thickness_mm", ""),
        ("SliceThickness", "1e9", "slice_thickness_mm", ""),
        ("KVP", "NaN", "kvp", ""),
        ("ConvolutionKernel", ["B30f", "[3]"], "kernel", "B30f/[3]"),
    ],
)
def test_hostile_or_impossible_header_values(
    dicom_cohort, copy_tree, tmp_path, read_rows, element, value, field, expect
):
    """Header text is kept as plain text (no control characters, bounded length; the report
    escapes it); numbers outside physical ranges are not believed."""
    coh = copy_tree(dicom_cohort, "coh")
    pid = sorted(p.name for p in coh.iterdir() if p.is_dir())[0]
    for f in (coh / pid / "parenchymal").glob("*.dcm"):
        ds = pydicom.dcmread(f)
        setattr(ds, element, value)
        ds.save_as(f)
    ingest(coh, tmp_path / "w", show_progress=False)
    row = next(
        r
        for r in read_rows(tmp_path / "w" / "acquisition.csv")
        if r["patient_id"] == pid and r["phase"] == "parenchymal"
    )
    assert row[field] == expect


def test_clean_text_of_multivalues_and_none():
    assert clean_text(None) == "" and clean_text(["A", "B"]) == "A/B" and clean_text(" a\nb ") == "ab"


def test_a_work_folder_without_acquisition_gives_clinical_columns(work, copy_tree):
    w = copy_tree(work, "w")
    (w / "acquisition.csv").unlink(missing_ok=True)
    attrs = patient_attributes(w)
    assert attrs and all(a["center"] == "SYNTH" and a["manufacturer"] == "" for a in attrs.values())
