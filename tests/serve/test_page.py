"""ccrcc_grade.serve static page: a real Chromium boxes and grades."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pydicom
import pytest
import torch

from ccrcc_grade.model.predict import predict_patient

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def server(free_port, wait_http, trained_run, tmp_path_factory):
    """`ccrcc-grade serve` as a user starts it, on a free loopback port."""
    data = tmp_path_factory.mktemp("page") / "data"
    port = free_port()
    log = open(data.parent / "serve.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ccrcc_grade",
            "serve",
            "--models",
            str(trained_run),
            "--port",
            str(port),
            "--data",
            str(data),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/api/config", 120, proc)
        yield f"http://127.0.0.1:{port}", data
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def _get(url: str):
    with urllib.request.urlopen(url) as r:
        return json.loads(r.read())


def test_box_and_grade_in_the_browser(cohort_boxes, repo_root, server, dicom_cohort, trained_run, tmp_path):
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        pytest.fail("Debian's chromium is not installed: run `make system-deps` (apt-get install chromium)")
    url, data = server
    pid = torch.load(trained_run / "best.pt", weights_only=True)["splits"]["test"][0]
    target = max(cohort_boxes(dicom_cohort, pid), key=lambda b: (b["x_max"] - b["x_min"]) * (b["y_max"] - b["y_min"]))
    files = [str(f) for f in sorted((dicom_cohort / pid).rglob("*.dcm"))]
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 1140, "height": 780})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: "Content Security Policy" in m.text and errors.append(m.text))
        page.goto(url)
        page.set_input_files("#files", files)
        page.wait_for_selector("#series tbody tr:nth-child(4)")
        sid = page.evaluate("state.study.study_id")
        series = next(s for s in _get(f"{url}/api/studies/{sid}")["series"] if s["phase"] == "parenchymal")
        assert page.evaluate("series().phase") == "parenchymal"  # the model's phase is shown first
        k = series["sop_instance_uids"].index(target["sop_instance_uid"])
        page.focus("#canvas")
        current = page.evaluate("state.k")
        for _ in range(abs(k - current)):
            page.keyboard.press("ArrowDown" if k > current else "ArrowUp")
        assert page.evaluate("state.k") == k
        canvas = page.locator("#canvas").bounding_box()
        scale = 640 / series["columns"]  # the synthetic series needs no flip

        def drag(x0, y0, x1, y1):
            page.mouse.move(canvas["x"] + x0 * scale, canvas["y"] + y0 * scale)
            page.mouse.down()
            page.mouse.move(canvas["x"] + x1 * scale, canvas["y"] + y1 * scale, steps=6)
            page.mouse.up()

        drag(target["x_min"], target["y_min"], target["x_max"], target["y_max"])
        page.wait_for_function("() => document.getElementById('box-line').textContent.startsWith('1 box saved')")
        page.keyboard.press("ArrowDown")  # a stray box on the next slice ...
        drag(10, 10, 30, 30)
        page.wait_for_function("() => document.getElementById('box-line').textContent.startsWith('2 boxes saved')")
        page.mouse.click(canvas["x"] + 20 * scale, canvas["y"] + 20 * scale)  # ... selected and deleted
        page.keyboard.press("Delete")
        page.wait_for_function("() => document.getElementById('box-line').textContent.startsWith('1 box saved')")
        page.keyboard.press("ArrowUp")
        page.click("#grade")
        page.wait_for_selector("#decision")
        page.wait_for_timeout(500)  # the heat layer loads
        shot = tmp_path / "workstation.png"
        page.screenshot(path=str(shot))
        shown_prob = float(page.text_content("#prob"))
        decision = page.text_content("#decision")
        robustness = page.text_content("#robustness")
        assert errors == []
        browser.close()
    if os.environ.get("CCRCC_UPDATE_DOCS") == "1":
        shutil.copy(shot, repo_root / "docs" / "workstation.png")
    (saved,) = _get(f"{url}/api/studies/{sid}/boxes")
    assert saved["sop_instance_uid"] == target["sop_instance_uid"]
    assert all(abs(saved[c] - target[c]) <= 0.5 for c in ("x_min", "y_min", "x_max", "y_max"))  # drawn by mouse
    # predict on the very box the browser saved, through the command line's path
    src = next(
        f
        for f in (dicom_cohort / pid / "parenchymal").glob("*.dcm")
        if str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) == saved["sop_instance_uid"]
    )
    with open(tmp_path / "boxes.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patient_id", "phase", "file", "x_min", "y_min", "x_max", "y_max"])
        w.writerow(
            [
                pid,
                "parenchymal",
                src.name,  # relative to the folder graded
                *(saved[c] for c in ("x_min", "y_min", "x_max", "y_max")),
            ]
        )
    ref = predict_patient(trained_run, src.parent, boxes=tmp_path / "boxes.csv", patient_id=pid)
    assert len(ref["slices"]) == 1
    assert shown_prob == pytest.approx(ref["prob_high"], abs=6e-5)  # the page shows 4 decimals
    stored = json.loads((data / sid / "predictions" / "resnet34-parenchymal" / "result.json").read_text())
    assert stored["prob_high"] == pytest.approx(ref["prob_high"], abs=1e-5)
    assert decision == ref["decision"]
    b = stored["box_robustness"]  # the range beside the probability, as the page shows it
    assert robustness == b["text"] and " over 20 plausible boxes (decision flips in " in robustness
    shown = robustness.split(",")[0].split()[-1]  # the same digits as the decision line above it
    assert f"P(high) = {shown} " in decision


def _open_page(p, errors: list[str]):
    """Debian's Chromium with a page that records script errors and Content-Security-Policy
    violations in ``errors``."""
    browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
    page = browser.new_page(viewport={"width": 1140, "height": 780})
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: "Content Security Policy" in m.text and errors.append(m.text))
    return browser, page


def _load_study(page, url: str, files: list[str]) -> None:
    """The workstation opened and a patient's four series dropped on it."""
    page.goto(url)
    page.set_input_files("#files", files)
    page.wait_for_selector("#series tbody tr:nth-child(4)")


HOSTILE = '<img src=x onerror="window.__pwned=1"><b>bold</b>'


def test_hostile_dicom_text_shows_as_text(server, dicom_cohort, trained_run, tmp_path):
    """Series descriptions and notes from a DICOM header carrying markup reach the page as the
    characters they are: no element is created from them and no script runs."""
    from playwright.sync_api import sync_playwright

    url, _ = server
    pid = torch.load(trained_run / "best.pt", weights_only=True)["splits"]["test"][1]
    files = []
    for f in sorted((dicom_cohort / pid).rglob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.SeriesDescription = f"{f.parent.name[:4]}{HOSTILE}"[:64]
        ds.save_as(tmp_path / f"{f.parent.name}-{f.name}")
        files.append(str(tmp_path / f"{f.parent.name}-{f.name}"))
    errors: list[str] = []
    with sync_playwright() as p:
        browser, page = _open_page(p, errors)
        _load_study(page, url, files)
        cells = page.eval_on_selector_all("#series tbody td:first-child", "tds => tds.map((t) => t.textContent)")
        options = page.eval_on_selector_all("#view-series option", "os => os.map((o) => o.textContent)")
        made = page.evaluate("document.querySelectorAll('#series img, #series b, #view-series img').length")
        pwned = page.evaluate("window.__pwned === undefined")
        page.screenshot(path=str(tmp_path / "hostile.png"))
        browser.close()
    assert errors == [] and pwned and made == 0
    assert len(cells) == 4 and all("<img src=x onerror=" in c for c in cells)
    assert all("<img src=x onerror=" in o for o in options)


def test_api_documentation_is_served_from_local_files(server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, _ = server
    requests, problems = [], []
    with sync_playwright() as p:
        browser, page = _open_page(p, problems)
        page.on("request", lambda r: requests.append(r.url))
        page.goto(f"{url}/docs")
        page.wait_for_selector(".swagger-ui .info .title")
        page.wait_for_selector(".opblock-summary-path[data-path='/api/studies/{study_id}/predict']")
        title = page.text_content(".swagger-ui .info .title")
        page.screenshot(path=str(tmp_path / "docs.png"))
        browser.close()
    assert "ccrcc-grade workstation" in title and problems == []
    assert requests and all(r.startswith(url) or r.startswith("data:") for r in requests), requests


def test_boxes_cannot_fail_unseen_and_keys_never_relabel_a_phase(server, dicom_cohort, trained_run, tmp_path):
    """Right-drag draws nothing; a corner dragged onto the opposite one keeps the box's size; a
    save the server refuses stays on the page in red until a later save of every box succeeds;
    after a phase menu is used, ArrowDown scrolls slices and never relabels the phase."""
    from playwright.sync_api import sync_playwright

    url, _ = server
    pid = torch.load(trained_run / "best.pt", weights_only=True)["splits"]["test"][2]
    files = [str(f) for f in sorted((dicom_cohort / pid).rglob("*.dcm"))]
    errors: list[str] = []
    with sync_playwright() as p:
        browser, page = _open_page(p, errors)
        _load_study(page, url, files)
        sid = page.evaluate("state.study.study_id")
        plain = next(s for s in _get(f"{url}/api/studies/{sid}")["series"] if s["phase"] == "plain")
        menu = f"select.phase[data-uid='{plain['series_uid']}']"
        page.select_option(menu, "")  # the plain series set to "none" by its menu ...
        page.wait_for_function(f"() => document.querySelector(\"{menu}\").value === ''")
        page.keyboard.press("ArrowDown")  # ... and the next key press is not a phase change
        page.keyboard.press("ArrowDown")
        page.wait_for_timeout(300)
        assert (
            next(s for s in _get(f"{url}/api/studies/{sid}")["series"] if s["series_uid"] == plain["series_uid"])[
                "phase"
            ]
            is None
        )
        box = page.locator("#canvas").bounding_box()

        def drag(x0, y0, x1, y1, button="left"):
            page.mouse.move(box["x"] + x0, box["y"] + y0)
            page.mouse.down(button=button)
            page.mouse.move(box["x"] + x1, box["y"] + y1, steps=5)
            page.mouse.up(button=button)

        drag(100, 100, 200, 200, button="right")
        page.wait_for_timeout(300)
        assert page.text_content("#box-line").startswith("0 boxes saved")
        drag(100, 100, 200, 200)
        page.wait_for_function("() => document.getElementById('box-line').textContent.startsWith('1 box saved')")
        before = _get(f"{url}/api/studies/{sid}/boxes")
        drag(200, 200, 100, 100)  # the lower-right corner onto the upper-left one
        page.wait_for_timeout(300)
        assert _get(f"{url}/api/studies/{sid}/boxes") == before and "1 box saved" in page.text_content("#box-line")
        page.route(
            "**/boxes",
            lambda route: (
                route.fulfill(status=507, content_type="application/json", body='{"detail": "disk full"}')
                if route.request.method == "PUT"
                else route.continue_()
            ),
        )
        drag(300, 300, 380, 380)
        page.wait_for_function("() => document.getElementById('box-line').textContent.includes('NOT SAVED')")
        failed = page.text_content("#box-line")
        page.screenshot(path=str(tmp_path / "not-saved.png"))
        page.unroute("**/boxes")
        drag(400, 100, 460, 160)
        page.wait_for_function("() => document.getElementById('box-line').textContent.startsWith('3 boxes saved')")
        browser.close()
    assert failed.startswith("2 boxes NOT SAVED") and "disk full" in failed and errors == []
    assert len(_get(f"{url}/api/studies/{sid}/boxes")) == 3  # the box of the failed save was not dropped
