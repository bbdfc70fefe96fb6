"""What ccrcc-grade refuses (issue #10), one parametrised table per class of problem. Every case
asserts exit code 2, a one-line message naming the file or flag, and that nothing was written or
deleted."""

from __future__ import annotations

import fcntl
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import read_rows, run_cli, write_rows


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, args, *needles) -> str:
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ccrcc-grade: error: "), err
    for n in needles:
        assert str(n) in err, (n, err)
    return err


# --- 1. data loss: ingest --out / --overwrite ----------------------------------------------------

@pytest.mark.parametrize("case", ["out is the cohort", "out holds the cohort", "out inside the cohort",
                                  "out holds runs", "out is not a cache", "out is a file"])
def test_ingest_never_destroys_what_it_did_not_create(slices_cohort, work, tmp_path, capsys, case):
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


def test_overwrite_replaces_a_bare_cache(slices_cohort, work, tmp_path):
    w = tmp_path / "w"
    shutil.copytree(work, w)
    (w / "splits.json").unlink()
    assert run_cli("ingest", slices_cohort, "--out", w, "--overwrite", "--size", "32") == 0
    assert json.loads((w / "preprocess.json").read_text())["size"] == 32


def test_one_ingest_at_a_time_and_stale_temporary_folders(slices_cohort, tmp_path, capsys):
    w = tmp_path / "w"
    stale = tmp_path / ".w.ingest-killed"      # what a kill -9 during ingest leaves
    stale.mkdir()
    (stale / "crops.npy").write_bytes(b"half")
    with open(tmp_path / ".w.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)   # another ingest holds the lock
        refused(capsys, ["ingest", slices_cohort, "--out", w], "another ingest is writing this folder")
        assert stale.exists() and not w.exists()
    assert run_cli("ingest", slices_cohort, "--out", w, "--size", "32") == 0
    assert not stale.exists() and (w / "manifest.csv").is_file()


# --- 2. another patient's or another cohort's data ----------------------------------------------

def test_labelme_image_of_another_patient(slices_cohort, tmp_path, capsys):
    c = tmp_path / "c"
    shutil.copytree(slices_cohort, c)
    j = sorted((c / "SYN001" / "parenchymal").glob("*.json"))[0]
    d = json.loads(j.read_text())
    other = sorted((c / "SYN004" / "parenchymal").glob("*.png")) or sorted((c / "SYN004" / "parenchymal").glob("*.bmp"))
    d["imagePath"] = f"../../SYN004/parenchymal/{other[0].name}"
    j.write_text(json.dumps(d))
    refused(capsys, ["ingest", c, "--out", tmp_path / "w"], j.name, "points outside the folder of patient SYN001")
    assert not (tmp_path / "w").exists()


def test_predict_uses_only_the_patients_own_boxes(trained_run, dicom_cohort, tmp_path, capsys):
    import torch

    from ccrcc_grade.model.predict import predict_patient

    pid, other = torch.load(trained_run / "best.pt", weights_only=True)["splits"]["test"][:2]
    rows = read_rows(dicom_cohort / "boxes.csv")
    write_rows(tmp_path / "mixed.csv", [r for r in rows if r["patient_id"] in (pid, other)])
    r = predict_patient(trained_run, dicom_cohort / pid / "parenchymal", boxes=tmp_path / "mixed.csv")
    own = [x for x in rows if x["patient_id"] == pid and x["phase"] == "parenchymal"]
    assert len(r["slices"]) == len(own)            # not the other patient's boxes matched by file name
    write_rows(tmp_path / "other.csv", [x for x in rows if x["patient_id"] == other])
    refused(capsys, ["predict", trained_run, dicom_cohort / pid / "parenchymal", "--boxes", tmp_path / "other.csv"],
            "other.csv", f"no parenchymal boxes for patient '{pid}'")


def test_a_study_folder_belongs_to_one_cohort(slices_cohort, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(slices_cohort, a)
    shutil.copytree(slices_cohort, b)
    out = tmp_path / "study"
    (out / "work").mkdir(parents=True)
    assert run_cli("ingest", a, "--out", out / "work", "--size", "32") == 0
    capsys.readouterr()
    before = snapshot(out)
    refused(capsys, ["study", b, "--out", out, "--preset", "quick"], f"holds the study of cohort {a.resolve()}",
            "give another --out")
    rows = read_rows(a / "clinical.csv")
    rows[0]["who_isup_grade"] = "4" if rows[0]["who_isup_grade"] != "4" else "1"
    write_rows(a / "clinical.csv", rows)
    refused(capsys, ["study", a, "--out", out, "--preset", "quick"], "has changed since this study ingested it")
    assert snapshot(out) == before


@pytest.mark.parametrize("splits, needle", [
    ({"train": ["SYN001"], "val": ["SYN002"], "test": ["NOBODY"]}, "names 1 patient(s) not in the ingested cohort"),
    (["SYN001", "SYN002"], "must be a JSON object with train, val and test lists, got a list"),
    ({"train": ["SYN001", "SYN001"], "val": ["SYN002"], "test": []}, "the train list names a patient twice"),
    ({"train": "SYN001", "val": [], "test": []}, "missing the 'train' list"),
])
def test_bad_splits_files(work, tmp_path, capsys, splits, needle):
    w = tmp_path / "w"
    shutil.copytree(work, w)
    (w / "splits.json").write_text(json.dumps(splits))
    before = snapshot(w)
    refused(capsys, ["train", w, "--weights", "none", "--epochs", "1"], "splits.json", needle)
    assert snapshot(w) == before


# --- 3. numbers that are not finite or not in range, in files and flags -------------------------

def _labelme_case(c, mutate):
    j = sorted((c / "SYN002" / "plain").glob("*.json"))[0]
    text = j.read_text()
    d = json.loads(text)
    mutate(d)
    j.write_text(json.dumps(d))   # json writes NaN / Infinity literals, as a broken exporter would
    return j.name


@pytest.mark.parametrize("case, needle", [
    ("labelme point NaN", "coordinate must be a finite number"),
    ("labelme point 1e308", "coordinate must lie in [-100000, 100000]"),
    ("labelme imageWidth Infinity", "imageWidth must be a finite number"),
    ("labelme imageHeight 2.5", "imageHeight must be a whole number"),
])
def test_non_finite_numbers_in_labelme(slices_cohort, tmp_path, capsys, case, needle):
    c = tmp_path / "c"
    shutil.copytree(slices_cohort, c)
    mutate = {
        "labelme point NaN": lambda d: d["shapes"][0]["points"][0].__setitem__(0, float("nan")),
        "labelme point 1e308": lambda d: d["shapes"][0]["points"][1].__setitem__(1, 1e308),
        "labelme imageWidth Infinity": lambda d: d.__setitem__("imageWidth", float("inf")),
        "labelme imageHeight 2.5": lambda d: d.__setitem__("imageHeight", 2.5),
    }[case]
    name = _labelme_case(c, mutate)
    refused(capsys, ["ingest", c, "--out", tmp_path / "w"], name, needle)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("case, needle", [
    ("boxes.csv nan", "boxes.csv:2: x_min must be a finite number"),
    ("boxes.csv inf", "boxes.csv:2: y_max must be a finite number"),
    ("RescaleSlope NaN", "RescaleSlope must be a finite number"),
    ("PixelSpacing 0", "PixelSpacing must lie in (0, 100]"),
    ("PixelSpacing one value", "PixelSpacing must hold two values"),
    ("Modality MR", "Modality is MR, not CT"),
    ("box far outside", "lies mostly outside the 128x128 image"),
])
def test_bad_numbers_and_claims_in_dicom_cohorts(dicom_cohort, tmp_path, capsys, case, needle):
    c = tmp_path / "c"
    shutil.copytree(dicom_cohort, c)
    rows = read_rows(c / "boxes.csv")
    f = c / rows[0]["file"]
    if case.startswith("boxes.csv"):
        rows[0]["x_min" if "nan" in case else "y_max"] = "nan" if "nan" in case else "inf"
        write_rows(c / "boxes.csv", rows)
    elif case == "box far outside":
        rows[0]["x_max"] = "4096"
        write_rows(c / "boxes.csv", rows)
    else:
        ds = pydicom.dcmread(f)
        if case == "RescaleSlope NaN":
            ds.RescaleSlope = "NaN"
        elif case == "PixelSpacing 0":
            ds.PixelSpacing = [0, 0]
        elif case == "PixelSpacing one value":
            ds.PixelSpacing = [0.7]
        else:
            for g in sorted(f.parent.glob("*.dcm")):   # the whole series claims MR
                d = pydicom.dcmread(g)
                d.Modality = "MR"
                d.save_as(g)
            ds = pydicom.dcmread(f)
        ds.save_as(f)
    refused(capsys, ["ingest", c, "--out", tmp_path / "w", "--margin-mm", "1"], needle)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("args, needle", [
    (["ingest", "{c}", "--out", "{w}", "--window", "nan,nan"], "window level (--window) must be a finite number"),
    (["ingest", "{c}", "--out", "{w}", "--window", "40,-5"], "window width (--window) must lie in (0, 10000]"),
    (["ingest", "{c}", "--out", "{w}", "--margin-mm", "nan"], "box margin (--margin-mm) must be a finite number"),
    (["ingest", "{c}", "--out", "{w}", "--size", "0"], "size (--size) must lie in [8, 1024]"),
    (["split", "{work}", "--ratios", "nan:1:1"], "--ratios must be three non-negative numbers"),
    (["split", "{work}", "--ratios", "inf:1:1"], "--ratios must be three non-negative numbers"),
    (["train", "{work}", "--lr", "nan"], "learning rate (--lr) must be a finite number"),
    (["train", "{work}", "--weight-decay", "-1"], "weight decay (--weight-decay) must lie in [0, 1]"),
    (["train", "{work}", "--threshold", "nan"], "strictly between 0 and 1"),
])
def test_bad_numbers_in_flags(slices_cohort, work, tmp_path, capsys, args, needle):
    w = tmp_path / "work"
    shutil.copytree(work, w)
    before = snapshot(w)
    args = [a.format(c=slices_cohort, w=tmp_path / "new", work=w) for a in args]
    refused(capsys, args, needle)
    assert snapshot(w) == before and not (tmp_path / "new").exists()


@pytest.mark.parametrize("content, needle", [
    ("patient_id,label,prob_high\nA,1,nan\nB,0,0.2\n", "bad.csv:2: prob_high must be a finite number"),
    ("patient_id,label,prob_high\nA,1.7,0.5\nB,0,0.2\n", "bad.csv:2: label (0 low, 1 high) must be a whole number"),
    ("patient_id,label,prob_high\nA,2,0.5\nB,0,0.2\n", "bad.csv:2: label (0 low, 1 high) must lie in [0, 1]"),
    ("patient_id,label,prob_high\nA,1,0.9\nA,0,0.2\n", "patient 'A' has rows with label 0 and label 1"),
    ("patient_id,label,prob_high\nA,1,0.9\nA,1,0.9\nB,0,0.1\n", "patient 'A' is listed twice"),
    ("patient_id,phase,source,label,prob_high,x_min,y_min,x_max,y_max\nA,np,s1,1,0.9,1,1,5,5\n"
     "A,np,s1,1,0.9,1,1,5,5\n", "the row of 'A' s1 is listed twice"),
])
def test_bad_prediction_files(tmp_path, capsys, content, needle):
    (tmp_path / "bad.csv").write_text(content)
    refused(capsys, ["evaluate", "--predictions", tmp_path / "bad.csv", "--out", tmp_path / "ev"], needle)
    assert not (tmp_path / "ev").exists()


# --- 4. statistics and decisions that would mislead ---------------------------------------------

def test_delong_on_too_few_patients_is_not_estimable():
    from ccrcc_grade.stats.metrics import delong_paired_test

    y = np.array([0, 0, 1])                      # 3 patients: both models separate them perfectly
    d = delong_paired_test(y, np.array([0.1, 0.2, 0.9]), np.array([0.3, 0.1, 0.8]))
    assert not d["estimable"] and np.isnan(d["p"]) and "needs >= 3 of each" in d["reason"]
    y = np.array([0, 0, 0, 1, 1, 1])
    d = delong_paired_test(y, np.array([.1, .2, .3, .7, .8, .9]), np.array([.2, .1, .3, .9, .7, .8]))
    assert not d["estimable"] and "zero variance" in d["reason"]


def test_compare_partial_overlap(tmp_path, capsys):
    a = "patient_id,label,prob_high\n" + "".join(f"P{i},{i % 2},{0.2 + 0.6 * (i % 2) + 0.01 * i}\n" for i in range(10))
    b_some = "patient_id,label,prob_high\n" + "".join(f"P{i},{i % 2},{0.5 + 0.01 * i}\n" for i in range(2, 10))
    b_few = "patient_id,label,prob_high\n" + "".join(f"P{i},{i % 2},0.5\n" for i in range(8, 10)) + \
        "".join(f"Q{i},{i % 2},0.5\n" for i in range(10))
    for name, text in (("a.csv", a), ("some.csv", b_some), ("few.csv", b_few)):
        (tmp_path / name).write_text(text)
    assert run_cli("compare", tmp_path / "a.csv", tmp_path / "some.csv") == 0
    assert "only the 8 shared cases are compared (2 only in A, 0 only in B)" in capsys.readouterr().out
    refused(capsys, ["compare", tmp_path / "a.csv", tmp_path / "few.csv"], "share only 2 of 20 cases")


# --- 5. one line instead of a traceback ----------------------------------------------------------

def _png_header(width: int, height: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b""))


def test_decompression_bomb_image(slices_cohort, tmp_path, capsys):
    c = tmp_path / "c"
    shutil.copytree(slices_cohort, c)
    j = sorted((c / "SYN002" / "plain").glob("*.json"))[0]     # an annotated slice: it is decoded
    img = j.parent / json.loads(j.read_text())["imagePath"]
    img.write_bytes(_png_header(20000, 20000))
    refused(capsys, ["ingest", c, "--out", tmp_path / "w"], img.name, "decompression bomb")


def test_clinical_csv_with_the_grade_column_twice(slices_cohort, tmp_path, capsys):
    c = tmp_path / "c"
    shutil.copytree(slices_cohort, c)
    lines = (c / "clinical.csv").read_text().splitlines()
    head = lines[0].split(",")
    g = head.index("who_isup_grade")
    (c / "clinical.csv").write_text("\n".join(ln + "," + ln.split(",")[g] if i else ln + ",who_isup_grade"
                                              for i, ln in enumerate(lines)) + "\n")
    refused(capsys, ["ingest", c, "--out", tmp_path / "w"], "clinical.csv", "'who_isup_grade' appears twice")


def test_outputs_that_are_folders_or_unwritable(trained_run, slices_cohort, work, tmp_path, capsys):
    import torch

    pid = torch.load(trained_run / "best.pt", weights_only=True)["splits"]["test"][0]
    (tmp_path / "out.json").mkdir()
    refused(capsys, ["predict", trained_run, slices_cohort / pid, "--json", tmp_path / "out.json"],
            "out.json: is a folder")
    (tmp_path / "plain.txt").write_text("a file where a folder should be")
    refused(capsys, ["predict", trained_run, slices_cohort / pid, "--json", tmp_path / "plain.txt" / "r.json"],
            "r.json: cannot write here")
    w = tmp_path / "w"
    shutil.copytree(work, w)
    (w / "preprocess.json").unlink()
    refused(capsys, ["train", w, "--weights", "none", "--epochs", "1"], "preprocess.json: missing or damaged")
    (tmp_path / "empty").mkdir()
    refused(capsys, ["predict", trained_run, tmp_path / "empty"], "empty folder")


def test_truncated_embedded_image_names_the_json(slices_cohort, tmp_path, capsys):
    import base64

    c = tmp_path / "c"
    shutil.copytree(slices_cohort, c)
    j = sorted((c / "SYN002" / "plain").glob("*.json"))[0]
    d = json.loads(j.read_text())
    img = j.parent / d["imagePath"]
    d["imageData"] = base64.b64encode(img.read_bytes()[:300]).decode()   # cut short
    d["imagePath"] = "exported-elsewhere.png"                             # not beside the JSON
    j.write_text(json.dumps(d))
    err = refused(capsys, ["ingest", c, "--out", tmp_path / "w"], j.name, "unreadable or truncated image")
    assert "exported-elsewhere" not in err


def test_a_run_of_another_cohort_is_not_reused(slices_cohort, tmp_path, capsys):
    out = tmp_path / "study"
    (out / "work").mkdir(parents=True)
    assert run_cli("ingest", slices_cohort, "--out", out / "work", "--size", "32") == 0
    run = out / "runs" / "resnet34-plain"
    run.mkdir(parents=True)
    (run / "best.pt").write_bytes(b"a model of another cohort")
    (run / "train_summary.json").write_text(json.dumps({"cohort": {"path": "/elsewhere", "fingerprint": "0123abcd"}}))
    capsys.readouterr()
    refused(capsys, ["study", slices_cohort, "--out", out, "--preset", "quick"], str(run),
            "was trained on another cohort (/elsewhere)")
    assert (run / "best.pt").read_bytes() == b"a model of another cohort"
