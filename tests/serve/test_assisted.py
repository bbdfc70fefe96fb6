"""The workstation's assisted boxes (API): proposals from key boxes (interpolation) or from one box
(the proposal model), propagated to the other phases, unconfirmed until the clinician confirms
them, graded only on request, never replacing a confirmed box."""

from __future__ import annotations

import io
import zipfile

import pytest
from fastapi.testclient import TestClient

from ccrcc_grade.serve import create_app

BASE = "http://127.0.0.1"


@pytest.fixture(scope="module")
def clients(trained_run, roi_run, tmp_path_factory):
    d = tmp_path_factory.mktemp("assisted")
    with (
        TestClient(create_app([trained_run], d / "a", roi_model=roi_run), base_url=BASE) as with_model,
        TestClient(create_app([trained_run], d / "b"), base_url=BASE) as without,
    ):
        yield with_model, without


def _upload(c, patient_files, cohort, pid):
    r = c.post("/api/studies", files=patient_files(cohort, pid))
    assert r.status_code == 200, r.text
    sid = r.json()["study_id"]
    return sid, c.get(f"/api/studies/{sid}").json()


def _ordered_truth(study, boxes, phase="parenchymal"):
    s = next(x for x in study["series"] if x["phase"] == phase)
    return s, sorted(boxes, key=lambda b: s["sop_instance_uids"].index(b["sop_instance_uid"]))


def test_key_boxes_interpolated_then_confirmed_then_graded(
    clients, patient_files, cohort_boxes, dicom_cohort, validate_dicom, box_iou, tmp_path
):
    _, c = clients  # no proposal model: interpolation
    sid, study = _upload(c, patient_files, dicom_cohort, "SYN003")
    s, truth = _ordered_truth(study, cohort_boxes(dicom_cohort, "SYN003"))
    keys = [truth[0], truth[-1]]
    assert c.put(f"/api/studies/{sid}/boxes", json=keys).status_code == 200
    r = c.post(f"/api/studies/{sid}/propose", json={"phase": "parenchymal"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (
        body["proposed"] == {"interpolation": len(truth) - 2}
        and body["info"]["phases"]["parenchymal"]["method"] == "interpolation"
    )
    boxes = body["boxes"]
    by_sop = {b["sop_instance_uid"]: b for b in boxes}
    assert all(by_sop[k["sop_instance_uid"]]["confirmed"] for k in keys)
    proposals = [b for b in boxes if not b["confirmed"]]
    assert {b["source"] for b in proposals} == {"interpolation"}
    # the phantom's tumour is round: its boxes between the ends are bigger than the interpolation,
    # but they overlap - the clinician corrects the middle, not every slice
    assert min(box_iou(by_sop[t["sop_instance_uid"]], t) for t in truth) > 0.2
    # only confirmed boxes are graded unless asked
    g = c.post(f"/api/studies/{sid}/predict", json={"box_k": 0}).json()
    assert g["boxes"]["text"] == "boxes: 2 drawn" and len(g["slices"]) == 2
    assert any("not confirmed and not graded" in w for w in g["warnings"])
    g = c.post(f"/api/studies/{sid}/predict", json={"box_k": 0, "include_proposed": True}).json()
    assert g["boxes"]["text"] == f"boxes: 2 drawn, {len(truth) - 2} interpolated (unconfirmed)"
    assert g["boxes"]["include_proposed"] and len(g["slices"]) == len(truth)
    # the export holds the clinician's (confirmed) boxes only
    z = zipfile.ZipFile(io.BytesIO(c.get(f"/api/studies/{sid}/export").content))
    rows = z.read("boxes.csv").decode().strip().splitlines()
    assert len(rows) == 3 and rows[0].endswith(",source") and all(r.endswith(",drawn") for r in rows[1:])
    # confirm all (the page PUTs them confirmed): graded as what they are
    confirmed = [{**b, "confirmed": True} for b in boxes]
    assert c.put(f"/api/studies/{sid}/boxes", json=confirmed).status_code == 200
    g = c.post(f"/api/studies/{sid}/predict", json={"box_k": 0}).json()
    assert g["boxes"]["text"] == f"boxes: 2 drawn, {len(truth) - 2} interpolated"
    # a proposal moved by the clinician is theirs, with its history; proposing again leaves it alone
    i = next(n for n, b in enumerate(boxes) if not b["confirmed"])  # a proposal
    moved = dict(confirmed[i], x_min=confirmed[i]["x_min"] - 1, source="person", history=["interpolation"])
    key_sops = {k["sop_instance_uid"] for k in keys}
    put = [moved if b is confirmed[i] else {**b, "confirmed": b["sop_instance_uid"] in key_sops} for b in confirmed]
    assert c.put(f"/api/studies/{sid}/boxes", json=put).status_code == 200
    again = c.post(f"/api/studies/{sid}/propose", json={"phase": "parenchymal"}).json()["boxes"]
    kept = next(b for b in again if b["sop_instance_uid"] == moved["sop_instance_uid"])
    assert kept["confirmed"] and kept["source"] == "person" and kept["history"] == ["interpolation"]
    assert kept["x_min"] == pytest.approx(moved["x_min"], abs=0.01)
    g = c.post(f"/api/studies/{sid}/predict", json={"box_k": 0}).json()
    assert g["boxes"]["text"] == "boxes: 2 drawn, 1 edited"
    # the SR keeps the box's history: drawn by a person after interpolation; valid DICOM
    sr = c.get(f"/api/studies/{sid}/sr")
    assert sr.status_code == 200, sr.text
    (tmp_path / "sr.dcm").write_bytes(sr.content)
    meanings = [s["drawn_by"] for s in g["slices"]]
    assert sorted(meanings) == ["person", "person", "person after interpolation"]
    assert b"Interpolated, then corrected by a person" in sr.content
    assert validate_dicom(tmp_path / "sr.dcm", sr=True) == []


def test_one_box_and_the_model_on_every_phase(clients, patient_files, cohort_boxes, dicom_cohort, box_iou):
    c, _ = clients
    sid, study = _upload(c, patient_files, dicom_cohort, "SYN004")
    s, truth = _ordered_truth(study, cohort_boxes(dicom_cohort, "SYN004"))
    seed = max(truth, key=lambda b: (b["x_max"] - b["x_min"]) * (b["y_max"] - b["y_min"]))
    assert c.put(f"/api/studies/{sid}/boxes", json=[seed]).status_code == 200
    r = c.post(f"/api/studies/{sid}/propose", json={"phase": "parenchymal", "propagate": True})
    assert r.status_code == 200, r.text
    body = r.json()
    phases = body["info"]["phases"]
    assert set(phases) == {"plain", "corticomedullary", "parenchymal", "excretory"}
    assert phases["parenchymal"]["method"] == "proposal model"
    for ph in ("plain", "corticomedullary", "excretory"):  # registered, or placed by coordinates with the reason
        assert (
            phases[ph]["method"] == "patient coordinates + rigid registration"
            or "did not converge" in phases[ph]["note"]
        )
        assert phases[ph]["moved_mm"] is None or len(phases[ph]["moved_mm"]) == 4
    assert sum(p.get("moved_mm") is not None for p in phases.values()) >= 2
    sop_phase = {sop: x["phase"] for x in study["series"] for sop in x["sop_instance_uids"]}
    per_phase = {}
    for b in body["boxes"]:
        per_phase.setdefault(sop_phase[b["sop_instance_uid"]], []).append(b)
    assert all(len(per_phase.get(p, [])) >= 2 for p in phases)
    # the model's boxes on the parenchymal phase match the phantom's true boxes
    by_sop = {b["sop_instance_uid"]: b for b in per_phase["parenchymal"]}
    ious = [box_iou(by_sop[t["sop_instance_uid"]], t) for t in truth if t["sop_instance_uid"] in by_sop]
    assert len(ious) >= len(truth) - 2 and sorted(ious)[len(ious) // 2] > 0.5  # the test-sized model


@pytest.mark.parametrize(
    "which, boxes, body, status, needle",
    [
        ("without", "one", {"method": "interpolate"}, 422, "one box and no proposal model"),
        ("without", "one", {"method": "model"}, 422, "no proposal model on this server"),
        ("with", "none", {}, 422, "no confirmed box"),
        ("with", "one", {"phase": "arterial"}, 422, "no series of this study is assigned to the arterial phase"),
        ("with", "air", {}, 422, "outside the body"),
        ("with", "one", {"method": "guess"}, 422, "method"),
    ],
)
def test_failed_proposals_change_nothing(
    clients, patient_files, cohort_boxes, dicom_cohort, which, boxes, body, status, needle
):
    c = clients[0] if which == "with" else clients[1]
    sid, study = _upload(c, patient_files, dicom_cohort, "SYN005")
    s, truth = _ordered_truth(study, cohort_boxes(dicom_cohort, "SYN005"))
    put = {"one": [truth[len(truth) // 2]], "none": [], "air": [dict(truth[0], x_min=1, y_min=1, x_max=9, y_max=9)]}[
        boxes
    ]
    before = c.put(f"/api/studies/{sid}/boxes", json=put).json()
    r = c.post(f"/api/studies/{sid}/propose", json=body)
    assert r.status_code == status and needle in r.text, r.text
    assert c.get(f"/api/studies/{sid}/boxes").json() == before


def test_box_history_is_checked(clients, patient_files, cohort_boxes, dicom_cohort):
    c, _ = clients
    sid, study = _upload(c, patient_files, dicom_cohort, "SYN006")
    b = cohort_boxes(dicom_cohort, "SYN006")[0]
    assert c.put(f"/api/studies/{sid}/boxes", json=[dict(b, history=["<script>"])]).status_code == 422
    assert c.put(f"/api/studies/{sid}/boxes", json=[dict(b, source="robot")]).status_code == 422
    ok = c.put(f"/api/studies/{sid}/boxes", json=[dict(b, history=["proposal model", "propagation"])]).json()
    assert ok[0]["history"] == ["proposal model", "propagation"] and ok[0]["confirmed"] is True


def test_the_proposal_models_masks_as_a_dicom_seg(
    clients, patient_files, cohort_boxes, dicom_cohort, validate_dicom, tmp_path
):
    """With a proposal model the results hold a SEG of its tumour masks on the graded series:
    one frame per slice (the empty ones kept), the tumour on each boxed slice inside its box,
    nothing elsewhere; dciodvfy finds no error; the provenance names the proposal model."""
    import highdicom as hd
    import numpy as np

    from ccrcc_grade.serve.provenance import device_uid

    c, _ = clients
    sid, study = _upload(c, patient_files, dicom_cohort, "SYN004")
    s, truth = _ordered_truth(study, cohort_boxes(dicom_cohort, "SYN004"))
    assert c.put(f"/api/studies/{sid}/boxes", json=truth).status_code == 200
    assert c.post(f"/api/studies/{sid}/predict", json={"box_k": 0}).status_code == 200
    made = {x["kind"]: x for x in c.get(f"/api/studies/{sid}/results").json()}
    assert set(made) == {"sr", "key_image", "seg"} and made["seg"]["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.66.4"
    path = tmp_path / "seg.dcm"
    path.write_bytes(c.get(made["seg"]["url"]).content)
    assert validate_dicom(path) == []
    seg = hd.seg.segread(path)
    assert seg.NumberOfFrames == s["slices"]  # empty frames kept: the SEG covers the series slice for slice
    assert "tumour proposal" in seg.ContributingEquipmentSequence[0].ManufacturerModelName
    assert seg.ContributingEquipmentSequence[0].DeviceUID != device_uid("0" * 64)
    frames = {
        str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID): i
        for i, f in enumerate(seg.PerFrameFunctionalGroupsSequence)
    }
    pixels = seg.pixel_array.astype(bool)
    boxed = {b["sop_instance_uid"]: b for b in truth}
    found = 0
    for sop in s["sop_instance_uids"]:
        m = pixels[frames[sop]]
        if sop not in boxed:
            assert not m.any()
            continue
        b = boxed[sop]
        rows, cols = np.nonzero(m)
        if rows.size:
            found += 1
            assert cols.min() >= b["x_min"] - 1 and cols.max() <= b["x_max"] + 1
            assert rows.min() >= b["y_min"] - 1 and rows.max() <= b["y_max"] + 1
    assert found >= 0.8 * len(truth)  # the model finds the tumour on (almost) every boxed slice
