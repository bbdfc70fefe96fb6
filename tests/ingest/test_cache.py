"""ccrcc_grade.ingest.cache: the cache never destroys what it did not create."""

from __future__ import annotations

import fcntl
import json
import shutil

import pytest


@pytest.mark.parametrize(
    "case",
    [
        "out is the cohort",
        "out holds the cohort",
        "out inside the cohort",
        "out holds runs",
        "out is not a cache",
        "out is a file",
    ],
)
def test_ingest_never_destroys_what_it_did_not_create(snapshot, refused, slices_cohort, work, tmp_path, capsys, case):
    root = tmp_path / "root"
    cohort = root / "cohort"
    shutil.copytree(slices_cohort, cohort)
    args, needle = {
        "out is the cohort": ([cohort, "--out", cohort, "--overwrite"], "is (or contains) the input cohort"),
        "out holds the cohort": ([cohort, "--out", root, "--overwrite"], "is (or contains) the input cohort"),
        "out inside the cohort": ([cohort, "--out", cohort / "work", "--overwrite"], "lies inside the input cohort"),
        "out holds runs": ([cohort, "--out", tmp_path / "w", "--overwrite"], "holds runs, splits.json besides"),
        "out is not a cache": ([cohort, "--out", tmp_path / "mine", "--overwrite"], "only replaces an ingested WORK"),
        "out is a file": ([cohort, "--out", tmp_path / "f.txt"], "--out is a file"),
    }[case]
    shutil.copytree(work, tmp_path / "w")
    (tmp_path / "w" / "runs" / "resnet34-plain").mkdir(parents=True)
    (tmp_path / "w" / "runs" / "resnet34-plain" / "best.pt").write_bytes(b"a trained model")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.docx").write_text("years of work")
    (tmp_path / "f.txt").write_text("a file")
    before = snapshot(tmp_path)
    refused(capsys, ["ingest", *args], needle)
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_a_bare_cache(run_cli, slices_cohort, work, tmp_path):
    w = tmp_path / "w"
    shutil.copytree(work, w)
    (w / "splits.json").unlink()
    assert run_cli("ingest", slices_cohort, "--out", w, "--overwrite", "--size", "32") == 0
    assert json.loads((w / "preprocess.json").read_text())["size"] == 32


def test_one_ingest_at_a_time_and_stale_temporary_folders(refused, run_cli, slices_cohort, tmp_path, capsys):
    w = tmp_path / "w"
    stale = tmp_path / ".w.ingest-killed"  # what a kill -9 during ingest leaves
    stale.mkdir()
    (stale / "crops.npy").write_bytes(b"half")
    with open(tmp_path / ".w.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another ingest holds the lock
        refused(capsys, ["ingest", slices_cohort, "--out", w], "another ingest is writing this folder")
        assert stale.exists() and not w.exists()
    assert run_cli("ingest", slices_cohort, "--out", w, "--size", "32") == 0
    assert not stale.exists() and (w / "manifest.csv").is_file()


@pytest.mark.parametrize("size_mm, warned", [(3.5, True), (4.8, True), (8.0, False)])
def test_boxes_far_smaller_than_a_tumour_are_warned_about(
    read_rows, write_rows, run_cli, dicom_cohort, tmp_path, size_mm, warned
):
    """A box of a few millimetres is named in the ingest report, once per patient."""
    import pydicom

    c = tmp_path / "c"
    shutil.copytree(dicom_cohort, c)
    rows = read_rows(c / "boxes.csv")
    r = rows[0]
    size_px = size_mm / float(pydicom.dcmread(c / r["file"], stop_before_pixels=True).PixelSpacing[0])
    r["x_max"], r["y_max"] = str(float(r["x_min"]) + size_px), str(float(r["y_min"]) + size_px)
    write_rows(c / "boxes.csv", rows)
    assert run_cli("ingest", c, "--out", tmp_path / "w") == 0
    warnings = json.loads((tmp_path / "w" / "ingest_report.json").read_text())["warnings"]
    hits = [w for w in warnings if "smaller than 5 mm, far smaller than a renal tumour" in w]
    assert (hits != []) is warned
    if warned:
        assert len(hits) == 1 and hits[0].startswith(f"{r['patient_id']}: 1 box(es)") and r["file"] in hits[0]
