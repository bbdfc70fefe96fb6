"""ccrcc_grade.serve: the workstation's HTTP API (FastAPI TestClient)."""

from __future__ import annotations

import copy
import io
import json
import logging
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pydicom
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from ccrcc_grade.ingest.preprocess import window_to_uint8
from ccrcc_grade.io.dicom import read_hu
from ccrcc_grade.model.predict import predict_patient
from ccrcc_grade.serve import create_app
from ccrcc_grade.serve.store import StudyStore, UploadLimits

WORKLIST = "worklist.sqlite"  # the worklist's database (and its WAL files) beside the study folders


@pytest.fixture(scope="module")
def app_data(tmp_path_factory):
    return tmp_path_factory.mktemp("serve") / "data"


@pytest.fixture(scope="module")
def client(trained_run, app_data):
    with TestClient(create_app([trained_run], app_data), base_url="http://127.0.0.1") as c:
        yield c


@pytest.fixture(scope="module")
def graded(cohort_boxes, patient_files, client, dicom_cohort, test_pids):
    """One test patient uploaded, boxed from boxes.csv and graded (with Grad-CAM)."""
    pid = test_pids[0]
    r = client.post("/api/studies", files=patient_files(dicom_cohort, pid))
    assert r.status_code == 200, r.text
    sid = r.json()["study_id"]
    boxes = cohort_boxes(dicom_cohort, pid)
    assert client.put(f"/api/studies/{sid}/boxes", json=boxes).status_code == 200
    res = client.post(f"/api/studies/{sid}/predict", json={"model": "resnet34-parenchymal", "cam": True})
    assert res.status_code == 200, res.text
    return pid, sid, boxes, res.json()


def _study(patient_files, client, dicom_cohort, pid):
    return client.post("/api/studies", files=patient_files(dicom_cohort, pid)).json()["study_id"]


def _without_pixels(ds):
    ds = copy.deepcopy(ds)
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _as_modality(ds, modality):
    ds = copy.deepcopy(ds)
    ds.Modality = modality
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def test_pids(trained_run):
    return torch.load(trained_run / "best.pt", weights_only=True)["splits"]["test"]


def test_models_and_their_cards(client, trained_run):
    (m,) = client.get("/api/models").json()
    assert m["id"] == "resnet34-parenchymal" and m["model"] == "resnet34" and m["phase"] == "parenchymal"
    card = m["card"]
    assert card["disclaimer"] == "research software, not a medical device" and card["threshold"]["method"] == "default"
    ck = torch.load(trained_run / "best.pt", weights_only=True)
    assert card["data"]["train_patients"] == len(ck["splits"]["train"]) and card["trained"] == ck["created"]
    assert m["threshold"] == 0.5 and "intended_use" in card
    from ccrcc_grade.model.predict import load_predictor

    assert m["backend"] == load_predictor(trained_run, "auto").backend  # the backend predict runs and says


def test_upload_assigns_phases_from_the_tags(graded, client):
    _, sid, _, _ = graded
    s = client.get(f"/api/studies/{sid}").json()
    assert sorted(x["phase"] for x in s["series"]) == sorted(["plain", "corticomedullary", "parenchymal", "excretory"])
    assert all(x["phase_reason"] == "keyword" and x["slices"] > 0 for x in s["series"])


def test_slice_png_is_the_windowed_slice(graded, client, dicom_cohort):
    pid, sid, _, _ = graded
    s = client.get(f"/api/studies/{sid}").json()
    np_series = next(x for x in s["series"] if x["phase"] == "parenchymal")
    files = sorted(
        (dicom_cohort / pid / "parenchymal").glob("*.dcm"),
        key=lambda f: -float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]),
    )
    sops = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    k = 2
    f = files[sops.index(np_series["sop_instance_uids"][k])]
    for level, width in ((40, 290), (50, 400)):
        r = client.get(
            f"/api/studies/{sid}/series/{np_series['series_uid']}/slices/{k}.png",
            params={"level": level, "width": width},
        )
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        got = np.asarray(Image.open(io.BytesIO(r.content)))
        assert np.array_equal(got, window_to_uint8(read_hu(f)[0], level, width))


def test_grading_equals_predict_on_the_same_boxes(graded, dicom_cohort, trained_run, tmp_path):
    pid, sid, boxes, res = graded
    ref = predict_patient(trained_run, dicom_cohort / pid / "parenchymal", boxes=dicom_cohort / "boxes.csv")
    assert res["prob_high"] == pytest.approx(ref["prob_high"], abs=1e-5)
    assert sorted(s["prob_high"] for s in res["slices"]) == pytest.approx(
        sorted(s["prob_high"] for s in ref["slices"]), abs=1e-5
    )
    assert set(res) >= set(ref) and res["decision"] == ref["decision"] and res["grade"] == ref["grade"]
    assert {s["sop_instance_uid"] for s in res["slices"]} == {b["sop_instance_uid"] for b in boxes}


def test_gradcam_layers_and_report(graded, client):
    _, sid, _, res = graded
    s = res["slices"][0]
    heat = client.get(s["heat_url"])
    assert heat.status_code == 200
    layer = np.asarray(Image.open(io.BytesIO(heat.content)))
    assert layer.shape[2] == 4 and layer[..., 3].max() > 0  # a transparent layer with heat
    x0, y0 = (int(np.floor(v)) for v in s["box"][:2])
    x1, y1 = (int(np.ceil(v)) for v in s["box"][2:])
    outside = layer[..., 3].copy()
    outside[y0:y1, x0:x1] = 0
    assert outside.max() == 0  # heat only inside the tumour box
    assert client.get(s["cam_url"]).status_code == 200
    page = client.get(f"/api/studies/{sid}/report").text
    assert res["decision"].replace(">", "&gt;") in page and "research software, not a medical device" in page.lower()
    assert client.get(f"/api/studies/{sid}/cam/resnet34-parenchymal/..%2f..%2fstudy.json").status_code == 404


def test_dicom_sr_content(check_sr, graded, client):
    _, sid, boxes, res = graded
    r = client.get(f"/api/studies/{sid}/sr")
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    sr = pydicom.dcmread(io.BytesIO(r.content))
    check_sr(sr, res, boxes)


def test_export_as_a_research_cohort(graded, client, tmp_path):
    from ccrcc_grade.io.boxes import read_boxes_csv

    _, sid, boxes, _ = graded
    r = client.get(f"/api/studies/{sid}/export")
    zipfile.ZipFile(io.BytesIO(r.content)).extractall(tmp_path / "c")
    rows = read_boxes_csv(tmp_path / "c" / "boxes.csv", tmp_path / "c")  # ingest's own reader accepts it
    assert len(rows) == len(boxes) and {r["phase"] for r in rows} == {"parenchymal"}
    assert all(r["file"].is_file() for r in rows)
    assert (tmp_path / "c" / "clinical.csv").read_text().startswith("patient_id,who_isup_grade")


def test_restart_keeps_studies_and_boxes(graded, trained_run, app_data):
    _, sid, boxes, _ = graded
    with TestClient(create_app([trained_run], app_data), base_url="http://127.0.0.1") as again:
        assert again.get(f"/api/studies/{sid}").status_code == 200
        assert [b["sop_instance_uid"] for b in again.get(f"/api/studies/{sid}/boxes").json()] == [
            b["sop_instance_uid"] for b in boxes
        ]


def test_parallel_predictions_match_sequential(cohort_boxes, patient_files, client, dicom_cohort, test_pids):
    sids = []
    for i in range(10):
        pid = test_pids[i % len(test_pids)]
        sid = client.post("/api/studies", files=patient_files(dicom_cohort, pid)).json()["study_id"]
        assert client.put(f"/api/studies/{sid}/boxes", json=cohort_boxes(dicom_cohort, pid)).status_code == 200
        sids.append(sid)
    seq = [client.post(f"/api/studies/{s}/predict", json={}).json()["prob_high"] for s in sids]
    with ThreadPoolExecutor(10) as ex:
        par = list(ex.map(lambda s: client.post(f"/api/studies/{s}/predict", json={}), sids))
    assert all(r.status_code == 200 for r in par)
    assert [r.json()["prob_high"] for r in par] == pytest.approx(seq, abs=1e-6)


def test_the_log_names_no_patient(cohort_boxes, patient_files, trained_run, dicom_cohort, test_pids, tmp_path, caplog):
    pid = test_pids[0]
    with (
        caplog.at_level(logging.INFO),
        TestClient(create_app([trained_run], tmp_path / "d"), base_url="http://127.0.0.1") as c,
    ):
        sid = c.post("/api/studies", files=patient_files(dicom_cohort, pid)).json()["study_id"]
        c.put(f"/api/studies/{sid}/boxes", json=cohort_boxes(dicom_cohort, pid))
        c.post(f"/api/studies/{sid}/predict", json={})
    text = caplog.text
    assert sid in text and pid not in text and "SYNTHETIC" not in text


def test_bearer_token(trained_run, tmp_path):
    with TestClient(
        create_app([trained_run], tmp_path / "d", token="s3cret-token-0123456789"), base_url="http://127.0.0.1"
    ) as c:
        r = c.get("/api/models")
        assert r.status_code == 401 and "bearer token" in r.json()["detail"]
        assert c.get("/api/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/models", headers={"Authorization": "Bearer s3cret-token-0123456789"}).status_code == 200
        assert c.get("/").status_code == 200  # the page itself asks for the token


STRONG = "Zk3q-8vYw_p2LmX0rT6uBn4c"


@pytest.mark.parametrize(
    "host, token, mode, extra, message",
    [
        ("0.0.0.0", None, None, [], "give --token-file"),
        ("192.0.2.1", None, None, [], "give --token-file"),
        ("0.0.0.0", "abc", 0o600, [], "at least 16 characters"),
        ("0.0.0.0", "missing", None, [], "token file not found"),
        ("192.0.2.1", STRONG, 0o644, [], "other users can read the token file"),
        ("192.0.2.1", STRONG, 0o640, [], "other users can read the token file"),
        ("192.0.2.1", "a" * 40, 0o600, [], "the token is guessable"),
        ("192.0.2.1", "ab" * 20, 0o600, [], "the token is guessable"),
        ("192.0.2.1", "0123456789abcdef", 0o600, [], "the token is guessable"),
        ("0.0.0.0", STRONG, 0o600, [], "--allowed-host"),
    ],
)
def test_serve_refuses_an_open_address_without_a_safe_token(
    run_cli, trained_run, tmp_path, capsys, host, token, mode, extra, message
):
    args = ["serve", "--models", trained_run, "--host", host, "--data", tmp_path / "d", *extra]
    if token == "missing":
        args += ["--token-file", tmp_path / "nope"]
    elif token is not None:
        (tmp_path / "t").write_text(token + "\n")
        (tmp_path / "t").chmod(mode)
        args += ["--token-file", tmp_path / "t"]
    assert run_cli(*args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "case", ["not dicom", "text file among DICOM", "damaged zip", "empty upload", "DICOM without pixels", "MR series"]
)
def test_bad_uploads(patient_files, client, dicom_cohort, test_pids, app_data, case):
    good = patient_files(dicom_cohort, test_pids[0])[:2]
    dcm = good[0][1][1]
    ds = pydicom.dcmread(io.BytesIO(dcm))
    files, expect = {
        "not dicom": ([("files", ("notes.txt", b"hello", "text/plain"))], "notes.txt: not a DICOM file"),
        "text file among DICOM": (good + [("files", ("x.jpg", b"\xff\xd8\xff", "image/jpeg"))], "x.jpg: not a DICOM"),
        "damaged zip": ([("files", ("s.zip", b"PK\x03\x04garbage", "application/zip"))], "s.zip: a damaged zip"),
        "empty upload": ([("files", ("e.dcm", b"", "application/dicom"))], "e.dcm: not a DICOM file"),
        "DICOM without pixels": (
            [("files", ("h.dcm", _without_pixels(ds), "application/dicom"))],
            "h.dcm: DICOM file without an image",
        ),
        "MR series": ([("files", ("mr.dcm", _as_modality(ds, "MR"), "application/dicom"))], "modality MR"),
    }[case]
    before = sorted(p.name for p in app_data.iterdir() if not p.name.startswith(WORKLIST))
    r = client.post("/api/studies", files=files)
    assert r.status_code == 400 and expect in r.json()["detail"] and "\n" not in r.json()["detail"]
    assert sorted(p.name for p in app_data.iterdir() if not p.name.startswith(WORKLIST)) == before  # nothing left


def test_upload_limits(patient_files, trained_run, dicom_cohort, test_pids, tmp_path):
    with TestClient(
        create_app([trained_run], tmp_path / "d", limits=UploadLimits(max_files=3)), base_url="http://127.0.0.1"
    ) as c:
        r = c.post("/api/studies", files=patient_files(dicom_cohort, test_pids[0]))
        assert r.status_code == 413 and "more than 3 files" in r.json()["detail"]
    with TestClient(
        create_app([trained_run], tmp_path / "e", limits=UploadLimits(max_bytes=1000)), base_url="http://127.0.0.1"
    ) as c:
        r = c.post("/api/studies", files=patient_files(dicom_cohort, test_pids[0]))
        assert r.status_code == 413 and "exceeds the limit" in r.json()["detail"]
    for d in (tmp_path / "d", tmp_path / "e"):  # no study: only the (empty) worklist database
        assert not [p for p in d.iterdir() if not p.name.startswith(WORKLIST)]
        assert StudyStore(d).listing() == []


@pytest.mark.parametrize(
    "change, status, message",
    [
        (dict(x_max=4000.0), 400, "outside the 128x128 image"),
        (dict(x_min=-5.0), 400, "outside the 128x128 image"),
        (dict(x_max=None), 400, "zero or sub-pixel area"),  # x_max = x_min
        (dict(sop_instance_uid="1.2.3.4"), 400, "is not an image of study"),
        (dict(x_min=float("nan")), 422, "0.x_min: Input should be a finite number"),  # the schema refuses it
    ],
)
def test_bad_boxes(client, graded, change, status, message):
    _, sid, boxes, _ = graded
    b = dict(boxes[0])
    for k, v in change.items():
        b[k] = b["x_min"] if v is None else v
    r = client.put(f"/api/studies/{sid}/boxes", content=json.dumps([b]), headers={"content-type": "application/json"})
    assert r.status_code == status and message in str(r.json()["detail"])
    assert len(client.get(f"/api/studies/{sid}/boxes").json()) == len(boxes)  # the saved boxes are untouched


def test_grading_problems(patient_files, client, dicom_cohort, test_pids):
    sid = _study(patient_files, client, dicom_cohort, test_pids[0])
    r = client.post(f"/api/studies/{sid}/predict", json={})
    assert r.status_code == 422 and "no boxes on the parenchymal series" in r.json()["detail"]
    s = client.get(f"/api/studies/{sid}").json()
    np_uid = next(x["series_uid"] for x in s["series"] if x["phase"] == "parenchymal")
    assert client.put(f"/api/studies/{sid}/phases", json={np_uid: None}).status_code == 200
    r = client.post(f"/api/studies/{sid}/predict", json={})
    assert r.status_code == 422 and "trained on the parenchymal phase and no series" in r.json()["detail"]
    r = client.post(f"/api/studies/{sid}/predict", json={"model": "resnet34-plain"})
    assert r.status_code == 404 and "not loaded" in r.json()["detail"]
    other = next(x["series_uid"] for x in s["series"] if x["phase"] == "plain")
    r = client.put(f"/api/studies/{sid}/phases", json={other: "excretory"})
    assert r.status_code == 400 and "two series assigned to excretory" in r.json()["detail"]
    r = client.get(f"/api/studies/{sid}/sr")
    assert r.status_code == 422 and "has not been graded" in r.json()["detail"]


@pytest.mark.parametrize(
    "url, status, message",
    [
        ("/api/studies/0123456789abcdef", 404, "not found"),
        ("/api/studies/..%2f..%2fetc", 404, "not found"),
        ("/api/studies/{sid}/series/1.2.3/slices/0.png", 404, "not in study"),
        ("/api/studies/{sid}/series/{uid}/slices/999.png", 404, "out of range"),
        ("/api/studies/{sid}/series/{uid}/slices/0.png?width=0", 422, "width must be positive"),
        ("/api/studies/{sid}/series/{uid}/slices/0.png?level=nan", 422, "finite"),
    ],
)
def test_bad_lookups(client, graded, url, status, message):
    _, sid, _, _ = graded
    uid = client.get(f"/api/studies/{sid}").json()["series"][0]["series_uid"]
    r = client.get(url.format(sid=sid, uid=uid))
    assert r.status_code == status and message in r.json()["detail"].lower()


def test_no_pacs_configured(client):
    r = client.post("/api/pacs/search", json={"patient_id": "X"})
    assert r.status_code == 422 and "no PACS configured" in r.json()["detail"]


def test_a_real_ct_series_uploaded_as_a_zip(check_sr, survey, client, trained_run, tmp_path):
    """The real 20-slice JPEG 2000 series of ../shared (stored in a flipped orientation): phase
    shown as ambiguous with its reason (its tags name no phase), corrected by the user, boxed,
    graded equal to `predict`, slices decoded and windowed as ingest does."""
    from ccrcc_grade.io.dicom import display_flips

    folder = survey("ct/totalsegmentator/example_ct_dicom")
    files = sorted(folder.iterdir())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in files:
            zf.write(f, f"export/{f.name}")
    r = client.post("/api/studies", files=[("files", ("study.zip", buf.getvalue(), "application/zip"))])
    assert r.status_code == 200, r.text
    sid, (s,) = r.json()["study_id"], r.json()["series"]
    assert s["slices"] == len(files) and (s["phase"] is None) == s["phase_reason"].startswith("ambiguous")
    notes = " ".join(r.json()["notes"])  # this anonymised export blanked its UIDs: said, and filled in
    assert "without a SOPInstanceUID in the dataset: the file meta's is used" in notes
    full = client.get(f"/api/studies/{sid}").json()["series"][0]
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert full["flip"] == list(display_flips(first))
    k = 10
    sop = full["sop_instance_uids"][k]

    def sop_of(f):  # this export keeps the SOP Instance UID in the file meta only
        d = pydicom.dcmread(f, stop_before_pixels=True)
        return str(d.SOPInstanceUID or d.file_meta.MediaStorageSOPInstanceUID)

    src = next(f for f in files if sop_of(f) == sop)
    png = np.asarray(
        Image.open(io.BytesIO(client.get(f"/api/studies/{sid}/series/{s['series_uid']}/slices/{k}.png").content))
    )
    assert np.array_equal(png, window_to_uint8(read_hu(src)[0], 40, 290))
    assert client.put(f"/api/studies/{sid}/phases", json={s["series_uid"]: "parenchymal"}).status_code == 200
    box = {"sop_instance_uid": sop, "x_min": 200.0, "y_min": 220.0, "x_max": 290.0, "y_max": 300.0}
    assert client.put(f"/api/studies/{sid}/boxes", json=[box]).status_code == 200
    res = client.post(f"/api/studies/{sid}/predict", json={}).json()
    (tmp_path / "boxes.csv").write_text(
        f"patient_id,phase,file,x_min,y_min,x_max,y_max\nP,parenchymal,{src.name},200,220,290,300\n"
    )
    ref = predict_patient(trained_run, folder, boxes=tmp_path / "boxes.csv", patient_id="P")
    assert res["prob_high"] == pytest.approx(ref["prob_high"], abs=1e-5) and 0 <= res["prob_high"] <= 1
    sr = pydicom.dcmread(io.BytesIO(client.get(f"/api/studies/{sid}/sr").content))
    check_sr(sr, res, [box])


def test_patient_banner_hu_slices_and_launch_by_study_uid(graded, client, dicom_cohort):
    """The study carries the patient as the DICOM says; a slice in HU is the stored slice's HU;
    the StudyInstanceUID finds the stored study (the page opened from the PACS by URL)."""
    pid, sid, boxes, _ = graded
    s = client.get(f"/api/studies/{sid}").json()
    f = sorted((dicom_cohort / pid / "parenchymal").glob("*.dcm"))[0]
    ds = pydicom.dcmread(f, stop_before_pixels=True)
    assert s["patient"]["name"] == str(ds.PatientName) and s["patient"]["patient_id"] == ds.PatientID
    assert s["patient"]["study_date"] == ds.StudyDate and s["patient"]["sex"] == ds.PatientSex
    assert s["study_uid"] == ds.StudyInstanceUID
    found = client.get("/api/studies", params={"study_uid": ds.StudyInstanceUID}).json()
    assert sid in [x["study_id"] for x in found] and all(x["study_uid"] == ds.StudyInstanceUID for x in found)
    assert client.get("/api/studies", params={"study_uid": "1.2.3.4"}).json() == []
    series = next(x for x in s["series"] if x["phase"] == "parenchymal")
    assert series["slice_thickness"] == float(ds.SliceThickness)
    k = series["sop_instance_uids"].index(str(ds.SOPInstanceUID))
    r = client.get(f"/api/studies/{sid}/series/{series['series_uid']}/slices/{k}.hu")
    got = np.frombuffer(r.content, "<i2").reshape(series["rows"], series["columns"])
    assert np.array_equal(got, np.rint(read_hu(f)[0]).astype(np.int16))


def test_every_model_says_how_far_to_trust_it(client):
    """The red banner's condition: the test AUC's CI includes 0.5 (or there is none)."""
    (m,) = client.get("/api/models").json()
    t, test = m["trust"], m["card"]["test"]
    ci = (test or {}).get("ci95") or [None, None]
    assert (t["warning"] is not None) == (ci[0] is None or ci[0] <= 0.5)
    assert "AUC" in t["text"] or "unknown" in t["text"]


def test_fast_grade_without_heat_map_or_robustness(graded, client):
    _, sid, _, res = graded
    fast = client.post(f"/api/studies/{sid}/predict", json={"box_k": 0}).json()
    assert fast["prob_high"] == pytest.approx(res["prob_high"], abs=1e-6) and fast["decision"] == res["decision"]
    assert "box_robustness" not in fast and all("heat_url" not in s for s in fast["slices"])
    assert fast["assessable"] and fast["trust"]["text"] and {s["drawn_by"] for s in fast["slices"]} == {"person"}
    assert client.post(f"/api/studies/{sid}/predict", json={"box_k": 1}).status_code == 400  # 2-1000 plausible boxes


def test_sign_off_and_sr_versions(
    check_sr, cohort_boxes, patient_files, client, dicom_cohort, test_pids, validate_dicom, tmp_path
):
    """Grade -> SR v1 UNVERIFIED (asked twice: one instance) -> sign-off -> v2 VERIFIED with the
    person observer, same series, v1 as predecessor -> a box changed and graded again -> v3
    UNVERIFIED, v2 as predecessor. Every version passes dciodvfy and DicomSRValidator."""
    import highdicom as hd

    pid = test_pids[1]
    sid = _study(patient_files, client, dicom_cohort, pid)
    boxes = cohort_boxes(dicom_cohort, pid)
    client.put(f"/api/studies/{sid}/boxes", json=boxes)
    res = client.post(f"/api/studies/{sid}/predict", json={}).json()
    r = client.post(f"/api/studies/{sid}/signoff", json={"observer": "x"})
    assert r.status_code == 422  # a name of at least two characters
    versions = []
    validated = set()

    def sr():
        ds = pydicom.dcmread(io.BytesIO(client.get(f"/api/studies/{sid}/sr").content))
        if ds.SOPInstanceUID not in validated:  # each new version through both validators, once
            f = tmp_path / f"sr-{len(versions)}.dcm"
            ds.save_as(f, enforce_file_format=True)
            assert validate_dicom(f, sr=True) == []
            validated.add(ds.SOPInstanceUID)
        return ds

    v1 = sr()
    versions.append(v1)
    assert v1.VerificationFlag == "UNVERIFIED" and sr().SOPInstanceUID == v1.SOPInstanceUID  # no duplicate
    check_sr(v1, res, boxes)
    signed = client.post(f"/api/studies/{sid}/signoff", json={"observer": "Dr Jane Roe"}).json()
    assert signed["observer"] == "Dr Jane Roe" and signed["grade"] == res["grade"]
    v2 = sr()
    versions.append(v2)
    assert (
        v2.VerificationFlag == "VERIFIED"
        and str(v2.VerifyingObserverSequence[0].VerifyingObserverName) == "Roe^Jane^^Dr"
    )
    assert v2.SeriesInstanceUID == v1.SeriesInstanceUID and v2.InstanceNumber == 2
    pred = v2.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert pred.ReferencedSOPInstanceUID == v1.SOPInstanceUID
    doc = hd.sr.Comprehensive3DSR.from_dataset(v2)
    observers = [
        i for i in doc.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121008"
    ]  # Person Observer Name
    assert [str(i.PersonName) for i in observers] == ["Roe^Jane^^Dr"]
    for g in doc.content.get_planar_roi_measurement_groups():  # who drew each box
        (who,) = g.get_qualitative_evaluations()
        assert who.name.meaning == "Region of interest drawn by" and who.value.value == "PERSON"
        (site,) = [i for i in g[0].ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "363698007"]
        assert site.ConceptCodeSequence[0].CodeMeaning == "Kidney"
    assert v2.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99CCRCC"
    assert all(
        "grade" not in str(g.tracking_identifier).lower() or "patient-level" in str(g.tracking_identifier)
        for g in doc.content.get_image_measurement_groups()
    )
    moved = [dict(boxes[0], x_max=boxes[0]["x_max"] - 1)] + boxes[1:]
    client.put(f"/api/studies/{sid}/boxes", json=moved)
    assert client.get(f"/api/studies/{sid}/sr").status_code == 409  # grade again first
    client.post(f"/api/studies/{sid}/predict", json={"box_k": 0})
    v3 = sr()
    assert v3.VerificationFlag == "UNVERIFIED" and v3.InstanceNumber == 3  # the sign-off was for other boxes
    pred = v3.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert pred.ReferencedSOPInstanceUID == v2.SOPInstanceUID and v3.SeriesInstanceUID == v1.SeriesInstanceUID


@pytest.mark.parametrize(
    ("box", "reason"),
    [
        ((64, 64, 65, 65), "far smaller than a renal tumour"),
        ((0, 0, 20, 20), "is air"),
    ],
)
def test_not_assessable(patient_files, client, dicom_cohort, test_pids, box, reason):
    """A box the model cannot grade: 200 with grade "not assessable" and the reason; nothing is
    stored, so neither report nor SR is made from it."""
    sid = _study(patient_files, client, dicom_cohort, test_pids[2])
    s = client.get(f"/api/studies/{sid}").json()
    series = next(x for x in s["series"] if x["phase"] == "parenchymal")
    x0, y0, x1, y1 = box
    b = {"sop_instance_uid": series["sop_instance_uids"][2], "x_min": x0, "y_min": y0, "x_max": x1, "y_max": y1}
    assert client.put(f"/api/studies/{sid}/boxes", json=[b]).status_code == 200
    r = client.post(f"/api/studies/{sid}/predict", json={}).json()
    assert r["assessable"] is False and r["grade"] == "not assessable" and r["prob_high"] is None
    assert reason in r["decision"] and reason in r["plausibility"]["problems"][0]
    assert client.get(f"/api/studies/{sid}/sr").status_code == 422
    assert client.get(f"/api/studies/{sid}/report").status_code == 422
