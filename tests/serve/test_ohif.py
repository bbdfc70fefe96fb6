"""ccrcc_grade.serve.ohif: the OHIF viewer's server. Its configuration names only our read-only
DICOMweb proxy; the proxy passes GET to the PACS and nothing else; with a token every request
needs it (the cookie the workstation's page sets); a foreign Host is refused; a PACS that is
down is a 502 naming it; without `make vendor` the error says how to get OHIF. (OHIF itself in
Chromium: test_pacs_push.)"""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.serve.ohif import OHIF_DIST, app_config, ohif_app

TOKEN = "k3J9-xQ2vLr8Tz5wPn4dYh7Ub6Mc1Fa0"


@pytest.fixture(scope="module")
def viewer(orthanc):
    if not (OHIF_DIST / "index.html").is_file():
        pytest.fail("the OHIF viewer is not installed: run `make vendor`")
    return ohif_app(orthanc, TOKEN, ["127.0.0.1"])


def test_config_names_only_the_proxy():
    text = app_config()
    config = json.loads(text.removeprefix("window.config = ").rstrip(";\n"))
    (source,) = config["dataSources"]
    roots = {source["configuration"][k] for k in ("qidoRoot", "wadoRoot", "wadoUriRoot")}
    assert roots == {"/dicom-web"} and config["defaultDataSourceName"] == source["sourceName"]


def test_the_token_the_host_and_read_only(viewer, orthanc):
    c = TestClient(viewer, base_url="http://127.0.0.1")
    for path in ("/viewer", "/app-config.js", "/dicom-web/studies"):
        r = c.get(path)
        assert r.status_code == 401 and "workstation" in r.json()["detail"], path
    c.cookies.set("ccrcc_token", TOKEN)
    page = c.get("/viewer?StudyInstanceUIDs=1.2.3")  # the viewer's own route: its page
    assert page.status_code == 200 and "OHIF" in page.text and "no-store" not in page.headers.get("cache-control", "")
    assert c.get("/app-config.js").text.startswith("window.config")
    studies = c.get("/dicom-web/studies", headers={"Accept": "application/dicom+json"})
    assert studies.status_code == 200 and studies.headers["cache-control"] == "no-store"
    assert isinstance(studies.json(), list)
    assert c.post("/dicom-web/studies", content=b"x").status_code == 405  # nothing is stored through it
    assert c.get("/../../etc/passwd").text == page.text  # never a file outside the viewer
    c.cookies.set("ccrcc_token", "wrong")
    assert c.get("/viewer").status_code == 401
    foreign = TestClient(viewer, base_url="http://evil.example")
    assert foreign.get("/viewer").status_code == 421


def test_a_pacs_that_is_down(free_port):
    c = TestClient(
        ohif_app(f"http://127.0.0.1:{free_port()}/dicom-web", None, ["127.0.0.1"]), base_url="http://127.0.0.1"
    )
    r = c.get("/dicom-web/studies")
    assert r.status_code == 502 and "not reachable" in r.json()["detail"]


def test_without_the_viewer_installed(tmp_path):
    with pytest.raises(CcrccError, match="make vendor"):
        ohif_app("http://127.0.0.1:1/dicom-web", None, ["127.0.0.1"], dist=tmp_path)
