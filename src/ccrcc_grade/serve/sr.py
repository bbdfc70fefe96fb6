"""The grade as a DICOM Structured Report (highdicom): a Comprehensive 3D SR holding a TID 1500
measurement report that a PACS shows correctly.

- one patient-level group (TID 1501, tracking identifier "patient-level WHO/ISUP grade"): the
  predicted WHO/ISUP nuclear grade as a coded qualitative evaluation (the decision lives in
  that code, never in the tracking identifier), P(high grade) as a measurement, the finding
  site kidney with its laterality;
- one planar ROI (TID 1410) per box: the rectangle as a closed POLYLINE on its source image
  (referenced by SOP Instance UID), that slice's P(high grade), the finding site, and who drew
  the box (a person, interpolation, the proposal model) as a coded evaluation;
- the model as the algorithm (name, version, parameters: phase, threshold, architecture); the
  observer is the device, plus the radiologist as a person observer once signed off:
  VerificationFlag VERIFIED with the Verifying Observer; UNVERIFIED before;
- versions: every SR of a study and model lives in one series; a changed grade or a sign-off
  makes a new instance that names the previous one in PredecessorDocumentsSequence;
- IHE AI Results provenance (``provenance``): the model as Contributing Equipment with a Device
  UID made from its weights' checksum (also the device observer's UID), research use in the
  SeriesDescription.
Concepts without a standard code use the private scheme ``99CCRCC``, declared in the
Coding Scheme Identification Sequence.
"""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from ccrcc_grade import __version__
from ccrcc_grade.serve.provenance import add_provenance, device_uid

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


def person_name(text: str) -> str:
    """A name as typed ("Jane Roe", "Dr Jane Roe") in DICOM PN form (family^given^^prefix);
    a name already holding ^ is kept."""
    text = " ".join(text.split())
    if "^" in text:
        return text
    words = text.split(" ")
    prefix = (
        words.pop(0) if len(words) > 1 and words[0].rstrip(".").lower() in {"dr", "prof", "mr", "mrs", "ms"} else ""
    )
    family = words.pop() if words else ""
    name = "^".join([family, " ".join(words), "", prefix]).rstrip("^") or text
    return name if "^" in name else name + "^"  # a family name alone, said so


DRAWN_BY = {
    "person": ("PERSON", "Person (workstation user)"),
    "interpolation": ("INTERPOLATED", "Interpolated between boxes drawn by a person"),
    "proposal model": ("PROPOSED", "Proposed by the tumour proposal model"),
    "propagation": ("PROPAGATED", "Propagated from another phase (coordinates and registration)"),
    # a proposal a person moved: the person's box, its origin kept
    "person after interpolation": ("EDIT-INTERP", "Interpolated, then corrected by a person"),
    "person after proposal model": ("EDIT-PROPOSED", "Proposed by the model, then corrected by a person"),
    "person after propagation": ("EDIT-PROPAGATED", "Propagated, then corrected by a person"),
}


def build_sr(
    result: dict,
    sources: dict[str, pydicom.Dataset],
    model_name: str,
    weights_sha256: str,
    signoff: dict | None = None,
    series_uid: str | None = None,
    instance_number: int = 1,
    previous: list[pydicom.Dataset] | None = None,
    ohif: bool = False,
) -> pydicom.Dataset:
    """``result``: a `predict --json` object whose slices carry ``sop_instance_uid`` (and
    ``laterality`` "left"/"right", ``drawn_by``); ``sources``: the header of every referenced
    image by SOP Instance UID (the evidence); ``signoff``: ``{"observer", "organization"}`` of
    the radiologist who verified it; ``series_uid``/``instance_number``/``previous``: the SR
    series of this study and model, this version's number and the versions it replaces;
    ``weights_sha256``: the model's checksum (its Device UID); ``ohif``: the boxes as OHIF's
    editable rectangles (``_ohif_rectangle``)."""
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
            uid=device_uid(weights_sha256),
            name="ccrcc-grade",
            manufacturer_name="ccrcc-grade (research software)",
            model_name=model_name[:64],
        ),
    )
    person = None
    if signoff:
        person = hd.sr.ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                name=person_name(signoff["observer"])
            ),
        )
    context = hd.sr.ObservationContext(observer_person_context=person, observer_device_context=observer)
    prob_name = _code("P-HIGH", "Probability of high WHO/ISUP nuclear grade (III-IV)")
    unit = codes.UCUM.NoUnits
    grade_name = _code("WHO-ISUP", "Predicted WHO/ISUP nuclear grade")
    grade_value = {
        "high": _code("HIGH", "High WHO/ISUP nuclear grade (III-IV)"),
        "low": _code("LOW", "Low WHO/ISUP nuclear grade (I-II)"),
        "uncertain": _code("UNCERTAIN", "Uncertain WHO/ISUP grade: probability near the threshold"),
    }[result["grade"]]
    drawn_name = _code("ROI-SOURCE", "Region of interest drawn by")

    def sites(sides: set) -> list:
        side = {"left": codes.SCT.Left, "right": codes.SCT.Right}
        if len(sides) == 1 and next(iter(sides)) in side:
            return [hd.sr.FindingSite(anatomic_location=codes.SCT.Kidney, laterality=side[next(iter(sides))])]
        return [hd.sr.FindingSite(anatomic_location=codes.SCT.Kidney)]

    # P(high) is inferred from the boxes; the centre of the largest names where (viewers such as OHIF
    # place every measurement on an image and fail on one without coordinates)
    largest = max(result["slices"], key=lambda s: (s["box"][2] - s["box"][0]) * (s["box"][3] - s["box"][1]))
    x0, y0, x1, y1 = largest["box"]
    where = hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues.POINT,
        graphic_data=np.array([[(x0 + x1) / 2, (y0 + y1) / 2]], dtype=float),
        source_image=hd.sr.SourceImageForRegion.from_source_image(sources[largest["sop_instance_uid"]]),
    )
    patient_level = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="patient-level WHO/ISUP grade"),
        finding_type=codes.SCT.Neoplasm,
        algorithm_id=algo,
        finding_sites=sites({s.get("laterality") for s in result["slices"]}),
        measurements=[
            hd.sr.Measurement(
                name=prob_name,
                value=float(result["prob_high"]),
                unit=unit,
                algorithm_id=algo,
                referenced_coordinates=[where],
            )
        ],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=grade_name, value=grade_value)],
        # the images the grade comes from (also what tells validators this group is TID 1501, not 1410)
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in sources.values()],
    )
    rois = []
    for i, s in enumerate(result["slices"]):
        x0, y0, x1, y1 = s["box"]
        source = sources[s["sop_instance_uid"]]
        corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=float)
        prob = hd.sr.Measurement(name=prob_name, value=float(s["prob_high"]), unit=unit, algorithm_id=algo)
        drawn = hd.sr.QualitativeEvaluation(name=drawn_name, value=_code(*DRAWN_BY[s.get("drawn_by", "person")]))
        if ohif:
            rois.append(_ohif_rectangle(s, i, corners, source, prob, drawn, algo, sites({s.get("laterality")})))
            continue
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=corners,
            source_image=hd.sr.SourceImageForRegion.from_source_image(source),
        )
        rois.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"tumour box {i + 1}"),
                referenced_region=region,
                finding_type=codes.SCT.Neoplasm,
                algorithm_id=algo,
                finding_sites=sites({s.get("laterality")}),
                measurements=[prob],
                qualitative_evaluations=[drawn],
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        # the boxes first: a viewer (OHIF) opens an SR on its first measurement, which must have an image
        imaging_measurements=[*rois, patient_level],
    )
    evidence = [_with_type2(ds) for ds in sources.values()]
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=series_uid or hd.UID(),
        series_number=903 if ohif else 900,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer="ccrcc-grade",
        is_complete=True,
        is_final=False,
        is_verified=bool(signoff),
        verifying_observer_name=person_name(signoff["observer"]) if signoff else None,
        verifying_organization=(signoff.get("organization") or "unknown") if signoff else None,
        previous_versions=previous or None,
    )
    add_provenance(sr, model_name, weights_sha256, "OHIF boxes" if ohif else "WHO/ISUP grade")
    scheme = pydicom.Dataset()
    scheme.CodingSchemeDesignator = PRIVATE
    scheme.CodingSchemeName = "ccrcc-grade private concepts"
    scheme.CodingSchemeResponsibleOrganization = "ccrcc-grade project"
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


OHIF_RECTANGLE = "Cornerstone3DTools@^0.1.0:RectangleROI"


def _ohif_rectangle(
    s: dict,
    i: int,
    corners: np.ndarray,
    source: pydicom.Dataset,
    prob: object,
    drawn: object,
    algo: object,
    finding_sites: list,
) -> object:
    """A box as OHIF's Cornerstone3D adapter reads a rectangle it can edit (``serve --sr-style
    ohif``): a TID 1501 group whose tracking identifier names the RectangleROI tool and whose
    first measurement, the area (mm2), is inferred from the rectangle as a closed POLYLINE on its
    image (the adapter takes the SCOORD from the first NUM); P(high) follows."""
    import highdicom as hd

    try:
        rows_mm, cols_mm = (float(v) for v in source.PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        rows_mm = cols_mm = 1.0
    (x0, y0), (x1, y1) = corners[0], corners[2]
    where = hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=corners,
        source_image=hd.sr.SourceImageForRegion.from_source_image(source),
    )
    area = hd.sr.Measurement(
        name=codes.SCT.Area,  # CodeMeaning "Area": what the adapter looks for
        value=float(abs(x1 - x0) * cols_mm * abs(y1 - y0) * rows_mm),
        unit=codes.UCUM.SquareMillimeter,
        algorithm_id=algo,
        referenced_coordinates=[where],
    )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=OHIF_RECTANGLE),
        finding_type=codes.SCT.Neoplasm,
        algorithm_id=algo,
        finding_sites=finding_sites,
        measurements=[area, prob],
        qualitative_evaluations=[drawn],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
