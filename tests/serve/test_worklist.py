"""ccrcc_grade.serve.worklist: the SQLite state behind the worklist. Two tabs editing one study
never lose each other's boxes (a stale save is a 409 and changes nothing); statuses follow the
work (complete -> boxed -> graded) with who and when; a data folder of an older version (boxes
in boxes.json) joins the worklist with its boxes; a restart finds everything as it was."""

from __future__ import annotations

import json
import shutil

import pytest
from fastapi.testclient import TestClient

from ccrcc_grade.serve import create_app
from ccrcc_grade.serve.errors import Stale
from ccrcc_grade.serve.worklist import Worklist

BASE = "http://127.0.0.1"


def test_two_tabs_never_lose_each_others_boxes(trained_run, dicom_cohort, patient_files, cohort_boxes, tmp_path):
    app = create_app([trained_run], tmp_path / "d")
    with TestClient(app, base_url=BASE) as tab1, TestClient(app, base_url=BASE) as tab2:
        sid = tab1.post("/api/studies", files=patient_files(dicom_cohort, "SYN001")).json()["study_id"]
        assert tab1.get("/api/studies").json()[0]["status"] == "complete"
        boxes = cohort_boxes(dicom_cohort, "SYN001")
        seen1 = tab1.get(f"/api/studies/{sid}/boxes")
        seen2 = tab2.get(f"/api/studies/{sid}/boxes")
        assert seen1.json() == [] and seen1.headers["etag"] == seen2.headers["etag"] == '"0"'
        r1 = tab1.put(f"/api/studies/{sid}/boxes", json=boxes[:1], headers={"If-Match": seen1.headers["etag"]})
        assert r1.status_code == 200 and r1.headers["etag"] == '"1"'
        # tab 2 still shows version 0: its save would drop tab 1's box, so it is refused
        r2 = tab2.put(f"/api/studies/{sid}/boxes", json=boxes[1:2], headers={"If-Match": seen2.headers["etag"]})
        assert r2.status_code == 409 and "changed elsewhere" in r2.json()["detail"]
        again = tab2.get(f"/api/studies/{sid}/boxes")  # the page reloads
        assert [b["sop_instance_uid"] for b in again.json()] == [boxes[0]["sop_instance_uid"]]
        r2 = tab2.put(f"/api/studies/{sid}/boxes", json=again.json() + boxes[1:2], headers={"If-Match": '"1"'})
        assert r2.status_code == 200 and len(tab1.get(f"/api/studies/{sid}/boxes").json()) == 2
        assert tab1.get("/api/studies").json()[0]["status"] == "boxed"
        bad = tab1.put(f"/api/studies/{sid}/boxes", json=boxes, headers={"If-Match": "yesterday"})
        assert bad.status_code == 422 and "If-Match" in bad.json()["detail"]
        tab1.post(f"/api/studies/{sid}/predict", json={}, headers={"X-User": "Jane Roe"})
        (entry,) = tab1.get("/api/studies").json()
        assert entry["status"] == "graded" and entry["source"] == "upload" and entry["series"]
        events = tab1.get(f"/api/studies/{sid}/history").json()["events"]
        assert [e["action"] for e in events] == ["complete", "boxes", "boxes", "graded"]
        assert events[-1]["actor"] == "workstation user Jane Roe" and events[0]["time"] <= events[-1]["time"]
    # a restart: a new app on the same folder finds the study, its status and its boxes
    with TestClient(create_app([trained_run], tmp_path / "d"), base_url=BASE) as c:
        (entry,) = c.get("/api/studies").json()
        assert entry["study_id"] == sid and entry["status"] == "graded"
        assert c.get(f"/api/studies/{sid}/boxes").headers["etag"] == '"2"'


def test_an_older_data_folder_joins_the_worklist(trained_run, dicom_cohort, patient_files, cohort_boxes, tmp_path):
    """A study stored before the worklist (boxes in boxes.json, the grade in result.json, the
    sign-off in signoff.json, the SR versions in sr/index.json) is listed with all of them: the
    report is made, and the SR asked for again is the same instance, still signed."""
    from ccrcc_grade.serve.store import StudyStore

    model = "resnet34-parenchymal"
    with TestClient(create_app([trained_run], tmp_path / "d"), base_url=BASE) as c:
        sid = c.post("/api/studies", files=patient_files(dicom_cohort, "SYN001")).json()["study_id"]
        boxes = c.put(f"/api/studies/{sid}/boxes", json=cohort_boxes(dicom_cohort, "SYN001")).json()
        c.post(f"/api/studies/{sid}/predict", json={"box_k": 0})
        c.post(f"/api/studies/{sid}/signoff", json={"observer": "Jane Roe"})
        sr = c.get(f"/api/studies/{sid}/sr").content
    wl = StudyStore(tmp_path / "d").worklist
    result, sign = wl.grade(sid, model)
    old = tmp_path / "old"
    old.mkdir(mode=0o700)
    shutil.copytree(tmp_path / "d" / sid, old / sid)  # written as the earlier version kept it
    (old / sid / "boxes.json").write_text(json.dumps(boxes))
    pred = old / sid / "predictions" / model
    (pred / "result.json").write_text(json.dumps(result))
    (pred / "signoff.json").write_text(json.dumps(sign))
    versions = [{"file": v["file"], "key": v["key"], "sop_instance_uid": v["sop_uid"]} for v in wl.objects(sid)]
    (pred / "sr" / "index.json").write_text(json.dumps({"series_uid": "x", "versions": versions}))
    with TestClient(create_app([trained_run], old), base_url=BASE) as c:
        (entry,) = c.get("/api/studies").json()
        assert entry["study_id"] == sid and entry["status"] == "boxed"
        assert c.get(f"/api/studies/{sid}/boxes").json() == boxes
        assert c.get(f"/api/studies/{sid}/report").status_code == 200
        again = c.get(f"/api/studies/{sid}/sr").content
        assert again == sr and b"VERIFIED" in again  # no new version: the signed one, found again


def test_versions_in_the_database(tmp_path):
    wl = Worklist(tmp_path / "w.sqlite")
    wl.add_study("a" * 16, "1.2.3", "upload", "test")
    assert wl.set_boxes("a" * 16, [{"confirmed": False}], 0, "test") == 1
    assert wl.study("a" * 16)["status"] == "complete"  # an unconfirmed proposal is not a boxed study
    with pytest.raises(Stale):
        wl.set_boxes("a" * 16, [], 0, "test")
    assert wl.boxes("a" * 16) == ([{"confirmed": False}], 1)  # the refused save changed nothing
    with pytest.raises(ValueError, match="unknown status"):
        wl.set_status("a" * 16, "done", "test")
