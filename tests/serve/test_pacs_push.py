"""The PACS-native path end to end: a real Orthanc (the hospital PACS) pushes a four-phase phantom
study to the workstation's receiver by C-STORE (its REST ``/modalities/{id}/store``), the study
shows on the worklist as complete with its phases, boxes go through the API, grading runs, and
the SR and key image arrive back in the same study in Orthanc by C-STORE; dciodvfy (and for the
SR pixelmed's DicomSRValidator) report 0 errors on each. A destination that is down leaves the
results queued, the study ``failed`` with the error, and the retry delivers them."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest
import torch
from fastapi.testclient import TestClient

from ccrcc_grade.serve import create_app
from ccrcc_grade.serve.receiver import DicomNode

SC = "1.2.840.10008.5.1.4.1.1.7"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def rest(url: str, body: object | None = None, raw: bytes | None = None) -> object:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=120) as r:
        text = r.read()
    return json.loads(text) if text else None


def wait_status(c: TestClient, want: str, timeout: float = 60, study_id: str | None = None) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        studies = [s for s in c.get("/api/studies").json() if study_id in (None, s["study_id"])]
        if studies and all(s["status"] == want for s in studies):
            return studies[0]
        time.sleep(0.2)
    raise AssertionError(f"no study reached {want!r} in {timeout} s: {c.get('/api/studies').json()}")


@pytest.fixture(scope="module")
def hospital(start_orthanc, tmp_path_factory, free_port):
    """Orthanc as the hospital PACS: its DICOM server on, our receiver as the modality "ccrcc"."""
    ours, theirs = free_port(), free_port()
    extra = {
        "DicomServerEnabled": True,
        "DicomAet": "ORTHANC",
        "DicomPort": theirs,
        "DicomModalities": {"ccrcc": ["CCRCC", "127.0.0.1", ours]},
    }
    with start_orthanc(tmp_path_factory.mktemp("hospital"), extra) as url:
        yield {"url": url, "dicom_port": theirs, "our_port": ours}


def test_orthanc_pushes_we_grade_and_send_back(
    hospital, dicom_cohort, trained_run, cohort_boxes, validate_dicom, tmp_path, caplog, free_port, repo_root
):
    caplog.set_level("INFO")
    pid = torch.load(trained_run / "best.pt", weights_only=True)["splits"]["test"][0]
    files = sorted((dicom_cohort / pid).rglob("*.dcm"))
    for f in files:
        rest(f"{hospital['url']}/instances", raw=f.read_bytes())
    (study,) = rest(f"{hospital['url']}/studies")
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    node = DicomNode(
        "CCRCC",
        hospital["our_port"],
        ["ORTHANC@127.0.0.1"],
        stable_seconds=1,
        host="127.0.0.1",
        send=f"ORTHANC@127.0.0.1:{hospital['dicom_port']}",
    )
    with TestClient(create_app([trained_run], tmp_path / "d", dicom=node), base_url="http://127.0.0.1") as c:
        rest(f"{hospital['url']}/modalities/ccrcc/store", {"Resources": [study], "Synchronous": True})
        s = wait_status(c, "complete")
        sid = s["study_id"]
        assert s["source"] == "dicom" and s["study_uid"] == study_uid
        assert sorted(x["phase"] for x in s["series"]) == ["corticomedullary", "excretory", "parenchymal", "plain"]
        assert sum(x["slices"] for x in s["series"]) == len(files)

        # pushed again: acknowledged, nothing duplicated, the study stays as it was
        rest(f"{hospital['url']}/modalities/ccrcc/store", {"Resources": [study], "Synchronous": True})
        time.sleep(1.5)
        again = c.get("/api/studies").json()
        assert [x["study_id"] for x in again] == [sid] and again[0]["status"] == "complete"
        assert sum(x["slices"] for x in again[0]["series"]) == len(files)

        boxes = cohort_boxes(dicom_cohort, pid)
        r = c.put(f"/api/studies/{sid}/boxes", json=boxes, headers={"If-Match": '"0"'})
        assert r.status_code == 200, r.text
        assert wait_status(c, "boxed", 5)["study_id"] == sid
        res = c.post(f"/api/studies/{sid}/predict", json={"cam": True, "box_k": 0}).json()
        assert res["grade"] in ("high", "low", "uncertain")
        assert c.get("/api/studies").json()[0]["status"] == "graded"

        made = c.get(f"/api/studies/{sid}/results").json()
        assert sorted(x["kind"] for x in made) == ["key_image", "sr"]
        for x in made:
            got = c.get(x["url"])
            assert got.status_code == 200 and got.headers["content-type"] == "application/dicom"
            path = tmp_path / f"{x['kind']}.dcm"
            path.write_bytes(got.content)
            ds = pydicom.dcmread(path)
            assert ds.SOPClassUID == x["sop_class_uid"] and ds.SOPInstanceUID == x["sop_instance_uid"]
            assert ds.StudyInstanceUID == study_uid and ds.PatientID == pid
            assert validate_dicom(path) == []  # (pixelmed's SR validation of both styles: test_sr)
        sent = c.post(f"/api/studies/{sid}/send", json={}).json()
        assert sent["status"] == "sent" and sorted(sent["sent"]) == sorted(x["sop_instance_uid"] for x in made)
        assert sent["destination"] == f"ORTHANC@127.0.0.1:{hospital['dicom_port']}"
        assert c.get("/api/studies").json()[0]["status"] == "sent"
        history = c.get(f"/api/studies/{sid}/history").json()
        assert [e["action"] for e in history["events"]][:2] == ["receiving", "complete"]
        assert {"boxes", "graded", "send", "sent"} <= {e["action"] for e in history["events"]}

    # back in the hospital's PACS, in the same study: the CT, the SR and the key image
    series = rest(f"{hospital['url']}/studies/{study}/series")
    by_modality = {x["MainDicomTags"]["Modality"]: x for x in series}
    assert set(by_modality) == {"CT", "SR", "OT"}
    instances = rest(f"{hospital['url']}/studies/{study}/instances")
    assert len(instances) == len(files) + 2  # nothing duplicated by the second push
    got = {i["MainDicomTags"]["SOPInstanceUID"] for i in instances}
    assert {x["sop_instance_uid"] for x in made} <= got
    log = caplog.text
    assert pid not in log and "PHANTOM" not in log  # no patient id or name in the log, only our study id
    assert sid in log
    # the same results with the boxes as OHIF's editable rectangles (serve --sr-style ohif): a series of its own
    node.port = None
    app = create_app([trained_run], tmp_path / "d", dicom=node, sr_style="ohif")
    with TestClient(app, base_url="http://127.0.0.1") as c:
        made_ohif = {x["kind"]: x for x in c.get(f"/api/studies/{sid}/results").json()}
        assert made_ohif["sr"]["sop_instance_uid"] not in {x["sop_instance_uid"] for x in made}
        assert c.post(f"/api/studies/{sid}/send", json={}).json()["status"] == "sent"
    check_ohif(hospital["url"], study_uid, res, dicom_cohort / pid, free_port(), tmp_path, repo_root)


def check_ohif(orthanc: str, study_uid: str, res: dict, patient: Path, port: int, tmp_path: Path, repo_root: Path):
    """OHIF 3.13 (`serve --ohif`'s app, reading Orthanc through our proxy) in real Chromium lists
    the SR and the key image in the study, opens the SR on the first box's slice with the box
    drawn and its P(high) as the label, and the last measurement shows the patient's P(high).
    The `--sr-style ohif` SR loads into OHIF's own rectangle tool (its area as OHIF measures it
    equals the box's) and a corner dragged there resizes it: the radiologist can correct it."""
    import threading

    import uvicorn
    from playwright.sync_api import sync_playwright

    from ccrcc_grade.serve.ohif import ohif_app

    server = uvicorn.Server(
        uvicorn.Config(ohif_app(f"{orthanc}/dicom-web", None, ["127.0.0.1"]), host="127.0.0.1", port=port)
    )
    threading.Thread(target=server.run, daemon=True).start()
    headers = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, patient.rglob("*.dcm"))}
    instance = {sop: int(ds.InstanceNumber) for sop, ds in headers.items()}
    first = res["slices"][0]
    largest = max(res["slices"], key=lambda s: (s["box"][2] - s["box"][0]) * (s["box"][3] - s["box"][1]))
    try:
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.1)
        with sync_playwright() as p:
            # SwiftShader: OHIF's Cornerstone3D renders with WebGL, which headless Chromium has only in software
            args = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=args)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/viewer?StudyInstanceUIDs={study_uid}")
            sr = page.locator("[data-cy=study-browser-thumbnail-no-image]", has_text="ccrcc-grade WHO/ISUP grade")
            sr.wait_for(timeout=90_000)
            key = page.locator("[data-cy=study-browser-thumbnail]", has_text="ccrcc-grade key image")
            assert key.count() == 1 and "research use only" in key.inner_text()
            sr.dblclick()
            label = page.locator("svg text", has_text="Probability of high WHO/ISUP nuclear grade")
            label.first.wait_for(timeout=60_000)
            overlay = page.locator("[data-cy=viewport-overlay-bottom-right]")
            assert overlay.inner_text().startswith(f"I:{instance[first['sop_instance_uid']]} ")  # the box's slice
            assert f"{first['prob_high']:.2f}" in label.first.text_content()
            page.screenshot(path=tmp_path / "ohif-sr.png")
            if os.environ.get("CCRCC_UPDATE_DOCS") == "1":
                page.screenshot(path=repo_root / "docs" / "ohif-sr.png")
            for _ in range(len(res["slices"])):  # to the last measurement: the patient-level grade
                page.locator("[data-cy=viewport-action-arrows-right]").click()
            page.wait_for_function(
                "(p) => [...document.querySelectorAll('svg text')].some(t => t.textContent.includes(p))",
                arg=f": {res['prob_high']:.2f}",
                timeout=30_000,
            )
            assert overlay.inner_text().startswith(f"I:{instance[largest['sop_instance_uid']]} ")
            # the OHIF-style SR: its boxes load into OHIF's own measurement tools, where they can be edited
            page.goto(f"http://127.0.0.1:{port}/viewer?StudyInstanceUIDs={study_uid}")
            ohif_sr = page.locator("[data-cy=study-browser-thumbnail-no-image]", has_text="ccrcc-grade OHIF boxes")
            ohif_sr.wait_for(timeout=90_000)
            ohif_sr.dblclick()
            page.locator("[data-cy=yes-hydrate-btn]").click(timeout=60_000)
            area = page.locator("[data-cy=viewport-pane] svg text", has_text="Area:")
            area.first.wait_for(timeout=60_000)  # OHIF's own RectangleROI tool now holds the box, with its statistics

            def shown_mm2() -> float:
                return float(area.first.text_content().split("Area:")[1].split("mm")[0])

            x0, y0, x1, y1 = first["box"]
            dy, dx = headers[first["sop_instance_uid"]].PixelSpacing
            assert shown_mm2() == pytest.approx((x1 - x0) * float(dx) * (y1 - y0) * float(dy), rel=0.02)
            before = shown_mm2()
            handle = page.locator("[data-cy=viewport-pane] svg circle").first.bounding_box()
            page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
            page.mouse.down()
            page.mouse.move(handle["x"] - 30, handle["y"] - 30, steps=8)
            page.mouse.up()
            page.wait_for_function(
                "(a) => [...document.querySelectorAll('[data-cy=viewport-pane] svg text')]"
                ".some(t => t.textContent.startsWith('Area:') && parseFloat(t.textContent.slice(5)) > a)",
                arg=before * 1.2,
                timeout=20_000,
            )  # edited: the corner moved out, the area grew
            page.screenshot(path=tmp_path / "ohif-edited.png")
            browser.close()
    finally:
        server.should_exit = True


def test_destination_down_then_retried(dicom_cohort, trained_run, cohort_boxes, patient_files, free_port, tmp_path):
    """The PACS is down when results are sent: the job is queued, the study is ``failed`` with the
    error on the worklist; once a PACS answers at that address the retry delivers them."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    from ccrcc_grade.serve import sender

    pid = torch.load(trained_run / "best.pt", weights_only=True)["splits"]["test"][0]
    port = free_port()
    node = DicomNode("CCRCC", None, [], send=f"DOWN@127.0.0.1:{port}")
    with TestClient(create_app([trained_run], tmp_path / "d", dicom=node), base_url="http://127.0.0.1") as c:
        sid = c.post("/api/studies", files=patient_files(dicom_cohort, pid)).json()["study_id"]
        assert c.put(f"/api/studies/{sid}/boxes", json=cohort_boxes(dicom_cohort, pid)).status_code == 200
        c.post(f"/api/studies/{sid}/predict", json={})
        r = c.post(f"/api/studies/{sid}/send", json={}).json()
        assert r["status"] == "queued" and r["sent"] == [] and "not reachable" in r["error"]
        (entry,) = c.get("/api/studies").json()
        assert entry["status"] == "failed" and "attempt 1 of" in entry["error"] and "next in 5 s" in entry["error"]
        received = []
        scp = AE("DOWN")
        scp.supported_contexts = AllStoragePresentationContexts
        server = scp.start_server(
            ("127.0.0.1", port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, lambda e: received.append(e.request.AffectedSOPInstanceUID) or 0)],
        )
        try:
            assert sender.RETRY_SECONDS[0] == 5
            wait = time.time() + 20
            while c.get("/api/studies").json()[0]["status"] != "sent" and time.time() < wait:
                time.sleep(0.3)
        finally:
            server.shutdown()
        assert c.get("/api/studies").json()[0]["status"] == "sent"
        (job,) = c.get(f"/api/studies/{sid}/history").json()["jobs"]
        assert job["status"] == "sent" and job["attempts"] == 2
        assert len(received) == 2
