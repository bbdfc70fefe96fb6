"""ccrcc_grade.model.plausibility: boxes the model cannot grade are refused or warned, with the
reason, on the real CT of ../shared and on the phantom."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from ccrcc_grade.core.config import PreprocessConfig
from ccrcc_grade.ingest.pipeline import ingest
from ccrcc_grade.io.boxes import Box
from ccrcc_grade.io.dicom import read_hu
from ccrcc_grade.model.plausibility import assess


@pytest.fixture(scope="module")
def reference(dicom_cohort, tmp_path_factory):
    """The parenchymal training reference of the phantom cohort, as ingest records it."""
    work = tmp_path_factory.mktemp("plaus") / "w"
    ingest(dicom_cohort, work, PreprocessConfig(size=32), show_progress=False)
    return json.loads((work / "ingest_report.json").read_text())["reference"]


def _label_box(labels, label):
    rows, cols = np.nonzero(labels == label)
    return Box(float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))


REAL_CT = "the series' slice thickness 3 mm lies outside the training series'"


@pytest.mark.parametrize(
    ("case", "assessable", "reason"),
    [
        ("spleen", True, REAL_CT),  # soft tissue inside the paravertebral range: warned for the scan
        ("air", False, "100% of the box is air"),
        ("three pixels", False, "far smaller than a renal tumour"),
        ("vertebra", True, "lie outside the kidney region of the training boxes"),  # 143 HU on average
        ("fat", False, "is fat, not the soft tissue"),
        ("dense bone", False, "bone, calcification or metal"),
    ],
)
def test_boxes_on_the_real_ct(real_ct_slice, reference, case, assessable, reason):
    """The TotalSegmentator series (upper abdomen, no kidney on these slices): a box on the
    spleen, in the air before the body, of three pixels, on a vertebra and in fat."""
    hu, spacing, labels = real_ct_slice()
    boxes = {
        "spleen": _label_box(labels, 1),  # TotalSegmentator label 1: spleen
        "air": Box(5, 5, 60, 60),
        "three pixels": Box(300, 300, 303, 303),
        "vertebra": _label_box(labels, int(np.bincount(labels[(labels >= 26) & (labels <= 50)]).argmax())),
    }
    if case == "fat":  # subcutaneous fat: 15 x 15 pixels of the body between -150 and -60 HU
        from scipy import ndimage as ndi

        fat = ndi.binary_erosion((hu > -150) & (hu < -60), iterations=7)
        r, c = np.argwhere(fat)[0]
        boxes["fat"] = Box(c - 7, r - 7, c + 8, r + 8)
    if case == "dense bone":  # the 7 x 7 pixels of highest mean HU (a rib or the spine's cortex)
        from scipy import ndimage as ndi

        r, c = np.unravel_index(np.argmax(ndi.uniform_filter(hu, 7)), hu.shape)
        boxes["dense bone"] = Box(c - 3, r - 3, c + 4, r + 4)
    geometry = {"pixel_spacing_mm": spacing[1], "slice_thickness_mm": 3.0}
    out = assess([(f"box on {case}", hu, boxes[case], spacing)], "parenchymal", reference["parenchymal"], geometry)
    assert out["assessable"] is assessable
    said = out["problems"] if not assessable else out["warnings"]
    assert any(reason in w for w in said), said
    assert all(w.startswith("box on") for w in out["problems"])


def test_a_tumour_box_on_the_phantom_passes(dicom_cohort, reference):
    """The phantom's own tumour boxes: assessable, inside the kidney region, no contrast doubt."""
    row = next(r for r in csv.DictReader(open(dicom_cohort / "boxes.csv")) if r["phase"] == "parenchymal")
    hu, spacing = read_hu(dicom_cohort / row["file"])
    box = Box(*(float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max")))
    out = assess([("box", hu, box, spacing)], "parenchymal", reference["parenchymal"], {"pixel_spacing_mm": spacing[1]})
    assert out["assessable"] and out["warnings"] == [], out


@pytest.mark.parametrize(
    ("stored", "labelled", "warned"),
    [
        ("plain", "parenchymal", "no contrast: this may not be the parenchymal phase"),
        ("corticomedullary", "plain", "contrast is present, so this may not be the plain phase"),
        ("parenchymal", "parenchymal", None),
    ],
)
def test_a_phase_whose_contrast_does_not_match_its_label(dicom_cohort, reference, stored, labelled, warned):
    rows = [r for r in csv.DictReader(open(dicom_cohort / "boxes.csv")) if r["phase"] == stored]
    hu, spacing = read_hu(dicom_cohort / rows[0]["file"])
    box = Box(*(float(rows[0][k]) for k in ("x_min", "y_min", "x_max", "y_max")))
    out = assess([("box", hu, box, spacing)], labelled, reference.get(labelled))
    contrast = [w for w in out["warnings"] if "aorta measures" in w]
    assert contrast == [] if warned is None else warned in contrast[0], out["warnings"]


def test_a_model_without_a_reference_says_so(dicom_cohort):
    row = next(r for r in csv.DictReader(open(dicom_cohort / "boxes.csv")) if r["phase"] == "parenchymal")
    hu, spacing = read_hu(dicom_cohort / row["file"])
    out = assess(
        [("box", hu, Box(*(float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max"))), spacing)], "parenchymal", None
    )
    assert any("records no training reference" in w for w in out["warnings"])
