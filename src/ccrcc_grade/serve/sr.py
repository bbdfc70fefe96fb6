"""The grade as a DICOM Structured Report (highdicom): a Comprehensive 3D SR holding a TID 1500
measurement report.

- one patient-level entry (TID 1501): the predicted grade as a qualitative evaluation and P(high
  grade) as a measurement, with the decision threshold and its origin in the tracking identifier;
- one planar ROI (TID 1410) per box: the rectangle as a closed POLYLINE on its source image
  (referenced by SOP Instance UID) with that slice's P(high grade);
- the model as the algorithm (name, version, parameters: phase, threshold); the observer is a
  device (ccrcc-grade); VerificationFlag UNVERIFIED: a clinician has to verify it.
Concepts without a standard code use the private scheme ``99CCRCC``.
"""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from ccrcc_grade import __version__

PRIVATE = "99CCRCC"


def _code(value: str, meaning: str):
    import highdicom as hd

    return hd.sr.CodedConcept(value=value, scheme_designator=PRIVATE, meaning=meaning)


TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _with_type2(ds: pydicom.Dataset) -> pydicom.Dataset:
    """A copy of a source header with the Type 2 patient/study attributes the SR copies present
    (empty when the source lacks them, as DICOM allows for Type 2)."""
    ds = ds.copy()
    for kw in TYPE2:
        if kw not in ds:
            setattr(ds, kw, "")
    return ds


def build_sr(result: dict, sources: dict[str, pydicom.Dataset], model_name: str) -> pydicom.Dataset:
    """``result``: a `predict --json` object whose slices carry ``sop_instance_uid``; ``sources``:
    the header of every referenced image by SOP Instance UID (the evidence)."""
    import highdicom as hd

    algo = hd.sr.AlgorithmIdentification(
        name=f"ccrcc-grade {model_name}"[:64],
        version=__version__,
        parameters=[
            f"phase={result['phase']}",
            f"threshold={result['threshold']:.4f}",
            f"architecture={result['model']['architecture']}",
        ],
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(),
            name="ccrcc-grade",
            manufacturer_name="ccrcc-grade (research software)",
            model_name=model_name[:64],
        ),
    )
    context = hd.sr.ObservationContext(observer_device_context=observer)
    prob_name = _code("P-HIGH", "Probability of high WHO/ISUP grade (III-IV)")
    unit = codes.UCUM.NoUnits
    grade_name = _code("ISUP-PRED", "Predicted WHO/ISUP grade group")
    grade_value = {
        "high": _code("HIGH", "High grade (III-IV)"),
        "low": _code("LOW", "Low grade (I-II)"),
        "uncertain": _code("UNCERTAIN", "Uncertain: probability inside the threshold's CI"),
    }[result["grade"]]
    patient_level = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"grade: {result['decision']}"[:64]),
        finding_type=codes.SCT.Neoplasm,
        algorithm_id=algo,
        measurements=[
            hd.sr.Measurement(name=prob_name, value=float(result["prob_high"]), unit=unit, algorithm_id=algo)
        ],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=grade_name, value=grade_value)],
    )
    rois = []
    for i, s in enumerate(result["slices"]):
        x0, y0, x1, y1 = s["box"]
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=float),
            source_image=hd.sr.SourceImageForRegion.from_source_image(sources[s["sop_instance_uid"]]),
        )
        rois.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"tumour box {i + 1}"),
                referenced_region=region,
                finding_type=codes.SCT.Neoplasm,
                algorithm_id=algo,
                measurements=[
                    hd.sr.Measurement(name=prob_name, value=float(s["prob_high"]), unit=unit, algorithm_id=algo)
                ],
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=[patient_level, *rois],
    )
    evidence = [_with_type2(ds) for ds in sources.values()]
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="ccrcc-grade",
        series_description="ccrcc-grade WHO/ISUP grade (research, unverified)",
        is_complete=True,
        is_final=False,
        is_verified=False,
    )
