"""ccrcc_grade.serve.sr and .provenance: the SR's structure for viewers, in both styles, and the
IHE AI Results provenance. Each SR passes dciodvfy and pixelmed's DicomSRValidator with 0 errors.
(Through the API and into a real PACS and OHIF: test_app, test_pacs_push.)"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from ccrcc_grade.serve.provenance import device_uid
from ccrcc_grade.serve.sr import OHIF_RECTANGLE, build_sr

WEIGHTS = "ab" * 32


@pytest.fixture(scope="module")
def graded(dicom_cohort):
    """A grading result on two boxed parenchymal slices of a phantom patient, with their headers."""
    files = sorted((dicom_cohort / "SYN001" / "parenchymal").glob("*.dcm"))[3:5]
    sources = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(f, stop_before_pixels=True) for f in files)}
    boxes = [(40.0, 50.0, 70.0, 76.0), (38.0, 48.0, 74.0, 80.0)]
    slices = [
        {"sop_instance_uid": sop, "box": list(b), "prob_high": p, "laterality": "right", "drawn_by": d}
        for sop, b, p, d in zip(sources, boxes, (0.31, 0.62), ("person", "person after proposal model"))
    ]
    result = {
        "phase": "parenchymal",
        "threshold": 0.5,
        "model": {"architecture": "resnet34"},
        "grade": "high",
        "prob_high": 0.57,
        "slices": slices,
    }
    return result, sources


def _groups(sr: pydicom.Dataset) -> list:
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    return list(report.content.get_image_measurement_groups()), list(report.content.get_planar_roi_measurement_groups())


@pytest.mark.parametrize("style", ["standard", "ohif"])
def test_both_styles_validate_and_carry_the_provenance(graded, style, validate_dicom, tmp_path):
    result, sources = graded
    sr = build_sr(result, sources, "resnet34-parenchymal", WEIGHTS, ohif=style == "ohif")
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert validate_dicom(path, sr=True) == []
    (equipment,) = sr.ContributingEquipmentSequence
    assert (
        equipment.DeviceUID == device_uid(WEIGHTS) and equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    )
    assert "research use only" in sr.SeriesDescription and sr.VerificationFlag == "UNVERIFIED"
    observer = next(
        i for i in sr.ContentSequence if i.ValueType == "UIDREF" and i.ConceptNameCodeSequence[0].CodeValue == "121012"
    )
    assert observer.UID == device_uid(WEIGHTS)  # the device observer is the model version
    image_groups, planar = _groups(sr)
    # every group has a tracking identifier and a tracking UID; the boxes come first, the grade last
    items = [i for i in sr.ContentSequence if i.ValueType == "CONTAINER"][0].ContentSequence
    ids = [
        next(x.TextValue for x in g.ContentSequence if x.ConceptNameCodeSequence[0].CodeValue == "112039")
        for g in items
    ]
    assert all(any(x.ConceptNameCodeSequence[0].CodeValue == "112040" for x in g.ContentSequence) for g in items)
    assert ids[-1] == "patient-level WHO/ISUP grade"
    if style == "standard":
        assert len(planar) == 2 and len(image_groups) == 1 and ids[:2] == ["tumour box 1", "tumour box 2"]
    else:  # OHIF's adapter: the tool in the identifier, the outline inferred for the first NUM (the area)
        assert planar == [] and len(image_groups) == 3 and ids[:2] == [OHIF_RECTANGLE] * 2
        for g, s in zip(items[:2], result["slices"]):
            num = next(x for x in g.ContentSequence if x.ValueType == "NUM")
            assert num.ConceptNameCodeSequence[0].CodeMeaning == "Area"
            scoord = next(x for x in num.ContentSequence if x.ValueType == "SCOORD")
            assert scoord.GraphicType == "POLYLINE" and len(scoord.GraphicData) == 10
            assert scoord.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == s["sop_instance_uid"]
            x0, y0, x1, y1 = s["box"]
            spacing = [float(v) for v in sources[s["sop_instance_uid"]].PixelSpacing]
            area = float(num.MeasuredValueSequence[0].NumericValue)
            assert area == pytest.approx((x1 - x0) * spacing[1] * (y1 - y0) * spacing[0], rel=1e-4)
    # the patient-level P(high) points at the centre of the largest box (OHIF needs image coordinates)
    num = next(x for x in items[-1].ContentSequence if x.ValueType == "NUM")
    point = next(x for x in num.ContentSequence if x.ValueType == "SCOORD")
    largest = result["slices"][1]
    x0, y0, x1, y1 = largest["box"]
    assert point.GraphicType == "POINT" and list(point.GraphicData) == [(x0 + x1) / 2, (y0 + y1) / 2]


def test_a_retrained_model_gets_a_new_device_uid():
    assert device_uid(WEIGHTS) == device_uid(WEIGHTS) != device_uid("cd" * 32)
    assert device_uid(WEIGHTS).startswith("2.25.") and len(device_uid(WEIGHTS)) <= 64
    with pytest.raises(ValueError):
        device_uid("")


def test_the_key_image(graded, dicom_cohort, validate_dicom, tmp_path):
    """The key image: the source's patient and study, the boxes burned in, provenance, valid."""
    import numpy as np

    from ccrcc_grade.io.dicom import read_hu
    from ccrcc_grade.serve.keyimage import build_key_image

    result, sources = graded
    sop = result["slices"][1]["sop_instance_uid"]
    f = next(
        f
        for f in (dicom_cohort / "SYN001" / "parenchymal").glob("*.dcm")
        if str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) == sop
    )
    src = pydicom.dcmread(f)
    boxes = [(*result["slices"][1]["box"], "person")]
    ki = build_key_image(result, src, read_hu(f)[0], boxes, None, "resnet34-parenchymal", WEIGHTS, hd.UID())
    path = tmp_path / "key.dcm"
    ki.save_as(path, enforce_file_format=True)
    assert validate_dicom(path) == []
    assert ki.StudyInstanceUID == src.StudyInstanceUID and ki.PatientID == src.PatientID
    assert ki.BurnedInAnnotation == "YES" and ki.Laterality == "R"
    assert ki.ContributingEquipmentSequence[0].DeviceUID == device_uid(WEIGHTS)
    scale = ki.Rows // src.Rows
    assert scale >= 1 and float(ki.PixelSpacing[0]) == pytest.approx(float(src.PixelSpacing[0]) / scale)
    rgb = ki.pixel_array
    green = (rgb[..., 1] > 200) & (rgb[..., 0] < 60) & (rgb[..., 2] < 60)  # the box outline, drawn by a person
    assert green.sum() > 4 * (boxes[0][2] - boxes[0][0]) * scale
    yellow = (rgb[..., 0] > 200) & (rgb[..., 1] > 200) & (rgb[..., 2] < 60)  # the burned-in text
    assert yellow[: rgb.shape[0] // 6].sum() > 100 and np.asarray(Path(path).stat().st_size) > 0
