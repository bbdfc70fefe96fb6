"""ccrcc_grade.serve.security and the workstation's refusals at its door: Host and origin checks,
upload bounds, headers on every answer, the private study store, de-identified export, one patient
per upload, derived series, stale results, a full disk, no server paths, checksummed models."""

from __future__ import annotations

import asyncio
import copy
import errno
import io
import json
import re
import stat
import zipfile

import httpx
import numpy as np
import pydicom
import pytest
import torch
from fastapi.testclient import TestClient

from ccrcc_grade.serve import create_app
from ccrcc_grade.serve.security import Guard
from ccrcc_grade.serve.store import UploadLimits

BASE = "http://127.0.0.1"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tmp_path_factory.mktemp("sec") / "data"


@pytest.fixture(scope="module")
def client(trained_run, data):
    with TestClient(create_app([trained_run], data), base_url=BASE) as c:
        yield c


@pytest.fixture(scope="module")
def pid(trained_run):
    return torch.load(trained_run / "best.pt", weights_only=True)["splits"]["test"][0]


@pytest.fixture(scope="module")
def study(client, patient_files, dicom_cohort, pid):
    r = client.post("/api/studies", files=patient_files(dicom_cohort, pid))
    assert r.status_code == 200, r.text
    return r.json()["study_id"]


def _dicom_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _edited(files, **tags):
    """The multipart files with ``tags`` set in every dataset."""
    out = []
    for field, (name, data, mime) in files:
        ds = pydicom.dcmread(io.BytesIO(data))
        for k, v in tags.items():
            setattr(ds, k, v)
        out.append((field, (name, _dicom_bytes(ds), mime)))
    return out


def _studies(data) -> set[str]:
    """What is in the data folder besides the worklist's database."""
    return {p.name for p in data.iterdir() if not p.name.startswith("worklist.sqlite")}


# ---- class 2: who may talk to the workstation ---------------------------------------------------
@pytest.mark.parametrize(
    "method, path, headers, status, message",
    [
        ("GET", "/api/config", {"host": "evil.example"}, 421, "does not name this server"),
        ("GET", "/api/config", {"host": "evil.example:8000"}, 421, "DNS rebinding"[:0] + "--allowed-host"),
        ("GET", "/", {"host": "127.0.0.1.nip.io"}, 421, "does not name this server"),
        ("POST", "/api/studies", {"origin": "http://evil.example"}, 403, "from another origin"),
        ("POST", "/api/studies", {"origin": "null"}, 403, "from another origin"),
        ("POST", "/api/studies", {"sec-fetch-site": "cross-site"}, 403, "from another site"),
        ("POST", "/api/studies", {"sec-fetch-site": "same-site"}, 403, "from another site"),
        ("PUT", "/api/studies/{sid}/boxes", {"origin": "http://localhost:9999"}, 403, "from another origin"),
        ("PUT", "/api/studies/{sid}/phases", {"sec-fetch-site": "cross-site"}, 403, "from another site"),
        ("POST", "/api/studies/{sid}/predict", {"origin": "https://attacker.test"}, 403, "from another origin"),
    ],
)
def test_foreign_hosts_and_cross_site_writes_are_refused(client, study, data, method, path, headers, status, message):
    before = _studies(data)
    body = {"content": b"--x--\r\n", "headers": {**headers, "content-type": "multipart/form-data; boundary=x"}}
    if method == "PUT":
        body = {"json": [], "headers": headers}
    elif method == "POST" and "predict" in path:
        body = {"json": {}, "headers": headers}
    elif method == "GET":
        body = {"headers": headers}
    r = client.request(method, path.format(sid=study), **body)
    assert r.status_code == status and message in r.json()["detail"], r.text
    assert r.headers["cache-control"] == "no-store" and "content-security-policy" in r.headers
    assert _studies(data) == before


@pytest.mark.parametrize(
    "headers",
    [{}, {"origin": BASE}, {"sec-fetch-site": "same-origin"}, {"sec-fetch-site": "none"}, {"host": "localhost"}],
)
def test_same_origin_requests_pass(client, study, headers):
    r = client.put(f"/api/studies/{study}/boxes", json=[], headers=headers)
    assert r.status_code == 200, r.text


def test_upload_without_length_or_over_the_limit_is_refused_before_it_is_read(trained_run, tmp_path):
    with TestClient(
        create_app([trained_run], tmp_path / "d", limits=UploadLimits(max_bytes=2**20)), base_url=BASE
    ) as c:

        def chunks():
            yield b"--x\r\n"

        r = c.post("/api/studies", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
        assert r.status_code == 411 and "Content-Length" in r.json()["detail"]
        r = c.post(
            "/api/studies",
            content=b"0" * (3 * 2**20),
            headers={"content-type": "multipart/form-data; boundary=x"},
        )
        assert r.status_code == 413 and "exceeds the limit of 1 MB" in r.json()["detail"]
    assert _studies(tmp_path / "d") == set()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize("case", ["zip bomb", "pixel bomb in the header", "pixel bomb inside a zip"])
def test_decompression_bombs_are_refused_before_they_unpack(
    patient_files, trained_run, dicom_cohort, pid, tmp_path, case
):
    ds = pydicom.dcmread(io.BytesIO(patient_files(dicom_cohort, pid)[0][1][1]))
    huge = copy.deepcopy(ds)
    huge.Rows = huge.Columns = 65535  # a few kB claiming 8 GB of pixels
    payload = {
        "zip bomb": ("bomb.zip", _zip({"a.dcm": bytes(64 * 2**20)})),  # 64 MB of zeros: ~64 kB packed
        "pixel bomb in the header": ("huge.dcm", _dicom_bytes(huge)),
        "pixel bomb inside a zip": ("huge.zip", _zip({"x/huge.dcm": _dicom_bytes(huge)})),
    }[case]
    assert len(payload[1]) < 2**20
    with TestClient(
        create_app([trained_run], tmp_path / "d", limits=UploadLimits(max_bytes=8 * 2**20)), base_url=BASE
    ) as c:
        r = c.post("/api/studies", files=[("files", (payload[0], payload[1], "application/octet-stream"))])
    assert r.status_code == 413, r.text
    assert ("unpacks to more than" if case == "zip bomb" else "larger than any CT slice") in r.json()["detail"]
    assert _studies(tmp_path / "d") == set()


def test_concurrent_uploads_beyond_the_limit_wait_their_turn():
    """The Guard on its own: two uploads held open, the third is told to come back (429)."""
    release = asyncio.Event()

    async def app(scope, receive, send):
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    guard = Guard(app, hosts=["127.0.0.1"], max_body=2**20, max_uploads=2)

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url=BASE) as c:
            post = lambda: c.post("/api/studies", content=b"x")  # noqa: E731
            held = [asyncio.create_task(post()) for _ in range(2)]
            await asyncio.sleep(0.05)
            third = await post()
            release.set()
            return third, await asyncio.gather(*held), await post()

    third, held, later = asyncio.run(main())
    assert third.status_code == 429 and "uploads are being read" in third.json()["detail"]
    assert [r.status_code for r in held] == [200, 200] and later.status_code == 200


# ---- class 1 and 3: what every answer carries; the store ----------------------------------------
@pytest.mark.parametrize(
    "path, cached",
    [
        ("/", False),
        ("/api/config", False),
        ("/api/studies/{sid}", False),
        ("/api/studies/{sid}/series/{uid}/slices/0.png", False),
        ("/static/app.js", True),
        ("/openapi.json", False),
    ],
)
def test_every_answer_has_the_security_headers(client, study, path, cached):
    uid = client.get(f"/api/studies/{study}").json()["series"][0]["series_uid"]
    r = client.get(path.format(sid=study, uid=uid))
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert "frame-ancestors 'none'" in csp and r.headers["x-content-type-options"] == "nosniff"
    assert (r.headers.get("cache-control") == "no-store") is not cached


def test_the_page_renders_no_data_as_html(repo_root):
    """The page builds every element from text; no HTML sink is left in it for data to reach."""
    js = (repo_root / "src/ccrcc_grade/serve/static/app.js").read_text()
    code = "\n".join(line for line in js.splitlines() if not line.lstrip().startswith("//"))
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in code, sink
    for page in ("index.html", "docs.html"):
        html = (repo_root / "src/ccrcc_grade/serve/static" / page).read_text()
        assert not re.search(r"<script(?![^>]*\ssrc=)", html)  # no inline script
        assert not re.search(r"<[^>]*\son\w+\s*=", html)  # no inline event handler


def test_the_study_store_is_the_owners_only(client, study, data, trained_run, tmp_path):
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(Exception, match="other users can open this folder"):
        create_app([trained_run], shared)


def test_export_is_deidentified_unless_asked_otherwise(
    client, study, cohort_boxes, dicom_cohort, pid, run_cli, tmp_path
):
    boxes = cohort_boxes(dicom_cohort, pid)
    assert client.put(f"/api/studies/{study}/boxes", json=boxes).status_code == 200
    r = client.get(f"/api/studies/{study}/export")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    names = zf.namelist()
    assert not any(pid in n for n in names)
    ds = pydicom.dcmread(io.BytesIO(zf.read(next(n for n in names if n.endswith(".dcm")))))
    original = pydicom.dcmread(next((dicom_cohort / pid).rglob("*.dcm")))
    assert ds.PatientIdentityRemoved == "YES" and ds.PatientID != original.PatientID
    assert ds.PatientName != original.PatientName and ds.StudyInstanceUID != original.StudyInstanceUID
    assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    pseudonym = names[0].split("/")[0]
    assert all(n.startswith(pseudonym + "/") for n in names if n.endswith(".dcm"))
    assert zf.read("clinical.csv").decode().splitlines()[1] == f"{pseudonym},"
    rows = zf.read("boxes.csv").decode().splitlines()[1:]
    assert len(rows) == len(boxes) and all(r.startswith(f"{pseudonym},") and f",{pseudonym}/" in r for r in rows)
    zf.extractall(tmp_path / "export")  # the export is a cohort ingest reads as it is (grade filled in)
    (tmp_path / "export" / "clinical.csv").write_text(f"patient_id,who_isup_grade\n{pseudonym},3\n")
    assert run_cli("ingest", tmp_path / "export", "--out", tmp_path / "w") == 0
    r = client.get(f"/api/studies/{study}/export?identifiable=true")
    assert zipfile.ZipFile(io.BytesIO(r.content)).namelist()[0].startswith(pid + "/")


# ---- class 4 and 5: one patient per upload; derived series --------------------------------------
@pytest.mark.parametrize(
    "case, message",
    [
        ("two patients", "images of 2 patients (PatientID"),
        ("two anonymised patients, blank UIDs", "patient name and birth date"),
        ("two anonymised series interleaved, blank UIDs", "at the same position"),
        ("an image twice in two series", "the same image twice"),
    ],
)
def test_uploads_mixing_patients_or_images_are_refused(
    client, data, patient_files, dicom_cohort, trained_run, case, message
):
    pids = torch.load(trained_run / "best.pt", weights_only=True)["splits"]["test"][:2]
    a, b = patient_files(dicom_cohort, pids[0])[:10], patient_files(dicom_cohort, pids[1])[:10]
    blank = dict(StudyInstanceUID="", SeriesInstanceUID="", PatientID="")
    if case == "two patients":
        files = a + b
    elif case == "two anonymised patients, blank UIDs":
        files = _edited(a, **blank, PatientName="Anon^A") + _edited(b, **blank, PatientName="Anon^B")
    elif case == "two anonymised series interleaved, blank UIDs":
        files = _edited(a, **blank, PatientName="Anon", SeriesNumber=1) + _edited(
            b, **blank, PatientName="Anon", SeriesNumber=1
        )
        files = [(k, (f"{i}-{n}", d, m)) for i, (k, (n, d, m)) in enumerate(files)]
    else:
        ds = pydicom.dcmread(io.BytesIO(a[0][1][1]))
        twin = copy.deepcopy(ds)
        twin.SeriesInstanceUID = pydicom.uid.generate_uid()
        files = a + [("files", ("twin.dcm", _dicom_bytes(twin), "application/dicom"))]
    before = _studies(data)
    r = client.post("/api/studies", files=files)
    assert r.status_code == 400 and message in r.json()["detail"], r.text
    assert _studies(data) == before


def test_a_derived_series_takes_a_phase_only_by_override(client, patient_files, dicom_cohort, pid, cohort_boxes):
    files = patient_files(dicom_cohort, pid)
    names = {f.name for f in (dicom_cohort / pid / "parenchymal").glob("*.dcm")}
    par = [f for f in files if f[1][0] in names]
    rest = [f for f in files if f[1][0] not in names]
    files = rest + _edited(par, ImageType=["DERIVED", "SECONDARY", "MPR"])
    s = client.post("/api/studies", files=files).json()
    sid = s["study_id"]
    (mpr,) = [x for x in s["series"] if x["problem"]]
    assert mpr["phase"] is None and "derived image" in mpr["problem"] and any("derived" in n for n in s["notes"])
    r = client.put(f"/api/studies/{sid}/phases", json={mpr["series_uid"]: "parenchymal"})
    assert r.status_code == 400 and "allow_derived=true" in r.json()["detail"]
    r = client.put(f"/api/studies/{sid}/phases?allow_derived=true", json={mpr["series_uid"]: "parenchymal"})
    assert r.status_code == 200
    client.put(f"/api/studies/{sid}/boxes", json=cohort_boxes(dicom_cohort, pid))
    res = client.post(f"/api/studies/{sid}/predict", json={}).json()
    assert any("user's override" in w and "derived image" in w for w in res["warnings"])


# ---- class 6: results that match their inputs ---------------------------------------------------
def test_report_and_sr_after_a_change_are_refused_until_graded_again(
    client, patient_files, dicom_cohort, pid, cohort_boxes
):
    sid = client.post("/api/studies", files=patient_files(dicom_cohort, pid)).json()["study_id"]
    boxes = cohort_boxes(dicom_cohort, pid)
    client.put(f"/api/studies/{sid}/boxes", json=boxes)
    res = client.post(f"/api/studies/{sid}/predict", json={}).json()
    assert client.get(f"/api/studies/{sid}/report").status_code == 200
    page = client.get(f"/api/studies/{sid}/report").text
    d = res["digits"]
    assert f"{res['prob_high']:.{max(3, d)}f}" in page and f"({res['threshold']:.{max(3, d)}f})" in page
    series = client.get(f"/api/studies/{sid}").json()["series"]
    for change in ("boxes", "phases"):
        if change == "boxes":
            client.put(f"/api/studies/{sid}/boxes", json=boxes[:-1])
        else:
            client.put(f"/api/studies/{sid}/boxes", json=boxes)
            client.post(f"/api/studies/{sid}/predict", json={})
            other = next(x for x in series if x["phase"] == "plain")
            client.put(f"/api/studies/{sid}/phases", json={other["series_uid"]: None})
        for path in ("report", "sr"):
            r = client.get(f"/api/studies/{sid}/{path}")
            assert r.status_code == 409 and "grade it again" in r.json()["detail"], (change, path)
    client.post(f"/api/studies/{sid}/predict", json={})
    assert client.get(f"/api/studies/{sid}/sr").status_code == 200


@pytest.mark.parametrize(
    "p, t",
    [(0.49996, 0.5), (0.5, 0.5), (0.5049, 0.5), (0.123456789, 0.1234567)],
)
def test_numbers_beside_a_grade_agree_with_it(p, t):
    from ccrcc_grade.core.threshold import decision_digits

    d = max(3, decision_digits(p, t))
    shown_p, shown_t = round(p, d), round(t, d)
    assert (shown_p >= shown_t) == (p >= t) and (shown_p == shown_t) == (p == t)


# ---- class 9: limits, a full disk, no server paths ----------------------------------------------
def test_a_cap_on_boxes_per_study(trained_run, patient_files, dicom_cohort, pid, cohort_boxes, tmp_path):
    with TestClient(create_app([trained_run], tmp_path / "d", limits=UploadLimits(max_boxes=3)), base_url=BASE) as c:
        sid = c.post("/api/studies", files=patient_files(dicom_cohort, pid)).json()["study_id"]
        boxes = cohort_boxes(dicom_cohort, pid)
        assert len(boxes) > 3
        r = c.put(f"/api/studies/{sid}/boxes", json=boxes)
        assert r.status_code == 413 and "at most 3" in r.json()["detail"]
        assert c.get(f"/api/studies/{sid}/boxes").json() == []


def test_a_full_disk_is_507_and_nothing_is_half_written(
    client, data, study, patient_files, dicom_cohort, pid, cohort_boxes, monkeypatch
):
    """No portable way to fill a real disk in a test: the first write that reaches the disk fails
    as a full one would (ENOSPC from fsync, and from pydicom's file write)."""
    import ccrcc_grade.core.fileio as fileio

    boxes = cohort_boxes(dicom_cohort, pid)
    before = client.get(f"/api/studies/{study}/boxes").json()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", full)
    r = client.put(f"/api/studies/{study}/boxes", json=boxes)
    assert (
        r.status_code == 507
        and r.json()["detail"] == "the server cannot write (No space left on device); nothing was saved"
    )
    monkeypatch.undo()
    assert client.get(f"/api/studies/{study}/boxes").json() == before
    monkeypatch.setattr(pydicom.dataset.Dataset, "save_as", full)
    names = _studies(data)
    r = client.post("/api/studies", files=patient_files(dicom_cohort, pid))
    assert r.status_code == 507 and str(data) not in r.text
    assert _studies(data) == names  # the half-written upload folder is gone


def test_no_server_path_in_any_answer(client, data, study, trained_run):
    s = client.get(f"/api/studies/{study}").json()["series"][0]
    for folder in (data / study / "series").iterdir():  # a damaged file in the store
        (folder / "1.dcm").write_bytes(b"DICM broken")
    r = client.get(f"/api/studies/{study}/series/{s['series_uid']}/slices/1.png")
    assert r.status_code == 400 and "cannot decode" in r.json()["detail"]
    for text in (r.text, client.get("/api/models").text):
        assert str(data) not in text and str(trained_run) not in text and "/tmp/" not in text


# ---- class 9: models carry a checksum of their weights ------------------------------------------
def test_models_carry_a_verified_checksum(trained_run, run_cli, refused, capsys, tmp_path):
    from ccrcc_grade.core.errors import CcrccError
    from ccrcc_grade.model.predict import load_predictor

    ckpt = torch.load(trained_run / "best.pt", weights_only=True)
    assert len(ckpt["weights_sha256"]) == 64
    p = load_predictor(trained_run)
    assert p.weights_sha256 == ckpt["weights_sha256"]
    key = next(k for k, v in ckpt["state_dict"].items() if v.dtype.is_floating_point)
    ckpt["state_dict"][key] = ckpt["state_dict"][key] + 1e-3  # one layer changed, the checksum kept
    torch.save(ckpt, tmp_path / "altered.pt")
    with pytest.raises(CcrccError, match="do not match the checksum"):
        load_predictor(tmp_path / "altered.pt")
    assert run_cli("export", trained_run, "--onnx", tmp_path / "m.onnx") == 0
    card = json.loads((tmp_path / "m.card.json").read_text())
    assert card["weights_sha256"] == ckpt["weights_sha256"] and len(card["onnx_weights_sha256"]) == 64
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(tmp_path / "m.onnx"))
    init = max(proto.graph.initializer, key=lambda i: np.prod(i.dims))
    arr = numpy_helper.to_array(init).copy()
    arr.flat[0] += 1.0
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(proto, str(tmp_path / "altered.onnx"))
    refused(capsys, ["predict", tmp_path / "altered.onnx", tmp_path], "do not match the checksum")
