"""ccrcc_grade.serve.pacs: a real Orthanc PACS over DICOMweb."""

from __future__ import annotations

import pydicom
import pytest
import torch
from dicomweb_client.api import DICOMwebClient
from fastapi.testclient import TestClient

from ccrcc_grade.serve import create_app


@pytest.fixture(scope="module")
def pacs_patient(orthanc, dicom_cohort, trained_run):
    """A test patient's four series stored into Orthanc (STOW-RS)."""
    pid = torch.load(trained_run / "best.pt", weights_only=True)["splits"]["test"][0]
    datasets = [pydicom.dcmread(f) for f in sorted((dicom_cohort / pid).rglob("*.dcm"))]
    DICOMwebClient(url=orthanc).store_instances(datasets)
    return pid, str(datasets[0].StudyInstanceUID)


def test_search_load_grade_and_store_the_sr(
    check_sr, cohort_boxes, orthanc, pacs_patient, dicom_cohort, trained_run, tmp_path
):
    pid, study_uid = pacs_patient
    with TestClient(create_app([trained_run], tmp_path / "d", pacs_url=orthanc), base_url="http://127.0.0.1") as c:
        assert c.get("/api/config").json()["pacs"] is True
        found = c.post("/api/pacs/search", json={"patient_id": pid}).json()
        assert [s["study_uid"] for s in found] == [study_uid] and found[0]["patient_id"] == pid
        assert c.post("/api/pacs/search", json={"patient_id": "NOBODY"}).json() == []
        name = pydicom.dcmread(next((dicom_cohort / pid).rglob("*.dcm")), stop_before_pixels=True).PatientName
        for pattern in (f"{str(name)[:5]}*", f"{str(name)[:3]}?{str(name)[4:6]}*"):  # wildcards reach Orthanc as such
            by_name = c.post("/api/pacs/search", json={"name": pattern}).json()
            assert study_uid in [s["study_uid"] for s in by_name], pattern
        assert c.post("/api/pacs/search", json={"name": "NOBODY*"}).json() == []
        r = c.post("/api/studies/pacs", json={"study_uid": study_uid})
        assert r.status_code == 200, r.text
        sid = r.json()["study_id"]
        assert sorted(x["phase"] for x in r.json()["series"]) == [
            "corticomedullary",
            "excretory",
            "parenchymal",
            "plain",
        ]
        boxes = cohort_boxes(dicom_cohort, pid)
        assert c.put(f"/api/studies/{sid}/boxes", json=boxes).status_code == 200
        res = c.post(f"/api/studies/{sid}/predict", json={}).json()
        stored = c.post(f"/api/studies/{sid}/sr/store", json={})
        assert stored.status_code == 200, stored.text
        sop = stored.json()["sop_instance_uid"]
        # without --send, the results go back by STOW-RS: the same SR (no duplicate) and the key image
        sent = c.post(f"/api/studies/{sid}/send", json={}).json()
        assert sent["status"] == "sent" and sent["destination"] == f"STOW-RS {orthanc}" and sop in sent["sent"]
        (entry,) = c.get("/api/studies").json()
        assert entry["status"] == "sent" and entry["source"] == "pacs"
    back = DICOMwebClient(url=orthanc).search_for_instances(study_uid, search_filters={"Modality": "SR"})
    assert [i["00080018"]["Value"][0] for i in back] == [sop]
    (key,) = DICOMwebClient(url=orthanc).search_for_instances(study_uid, search_filters={"Modality": "OT"})
    assert key["00080018"]["Value"][0] in sent["sent"]
    series_uid = back[0]["0020000E"]["Value"][0]
    sr = DICOMwebClient(url=orthanc).retrieve_instance(study_uid, series_uid, sop)
    check_sr(sr, res, boxes)
    assert sr.StudyInstanceUID == study_uid and sr.PatientID == pid


def test_a_pacs_that_is_down(cohort_boxes, patient_files, free_port, trained_run, dicom_cohort, tmp_path):
    """A clear 502, and the workstation keeps working on uploaded studies."""

    down = f"http://127.0.0.1:{free_port()}/dicom-web"
    pid = torch.load(trained_run / "best.pt", weights_only=True)["splits"]["test"][0]
    with TestClient(create_app([trained_run], tmp_path / "d", pacs_url=down), base_url="http://127.0.0.1") as c:
        r = c.post("/api/pacs/search", json={"patient_id": "X"})
        assert r.status_code == 502 and r.json()["detail"] == f"the PACS at {down} is not reachable (study search)"
        r = c.post("/api/studies/pacs", json={"study_uid": "1.2.3"})
        assert r.status_code == 502 and "not reachable" in r.json()["detail"]
        sid = c.post("/api/studies", files=patient_files(dicom_cohort, pid)).json()["study_id"]
        assert c.put(f"/api/studies/{sid}/boxes", json=cohort_boxes(dicom_cohort, pid)).status_code == 200
        assert c.post(f"/api/studies/{sid}/predict", json={}).status_code == 200
        r = c.post(f"/api/studies/{sid}/sr/store", json={})
        assert r.status_code == 502 and "storing the SR" in r.json()["detail"]
        assert c.get(f"/api/studies/{sid}/sr").status_code == 200  # the SR can still be downloaded
