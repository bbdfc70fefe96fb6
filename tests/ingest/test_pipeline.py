"""ccrcc_grade.ingest (pipeline, cohort, preprocess): cohort folders to the crop cache."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pydicom
import pytest
from PIL import Image

from ccrcc_grade.core.config import PreprocessConfig
from ccrcc_grade.ingest.cache import CropCache
from ccrcc_grade.ingest.pipeline import ingest


def _ingest(cohort, out):
    ingest(cohort, out, PreprocessConfig(size=32), show_progress=False)
    return out


@pytest.fixture
def bad(slices_cohort, copy_tree, tmp_path):
    """A copy of the cohort to break, and an earlier WORK cache (which --overwrite may replace)."""
    c = copy_tree(slices_cohort, "bad")
    w = tmp_path / "work"
    w.mkdir()
    for name in ("manifest.csv", "preprocess.json"):
        (w / name).write_text("the earlier cache")
    return c, w


def _untouched(w):
    assert sorted(p.name for p in w.iterdir()) == ["manifest.csv", "preprocess.json"]
    assert all((w / n).read_text() == "the earlier cache" for n in ("manifest.csv", "preprocess.json"))
    assert not [p for p in w.parent.iterdir() if ".ingest-" in p.name]


def _ingest_bad(refused, capsys, c, w, *fragments):
    refused(capsys, ["ingest", c, "--out", w, "--size", "32", "--overwrite"], *fragments)
    _untouched(w)


def test_end_to_end_both_layouts_give_the_same_crops(
    crop_size, read_rows, run_cli, slices_cohort, dicom_cohort, tmp_path, capsys
):
    assert run_cli("ingest", slices_cohort, "--out", tmp_path / "ws", "--size", crop_size) == 0
    table = capsys.readouterr().out
    assert "parenchymal" in table and "combined" in table and "slices layout" in table
    assert run_cli("ingest", dicom_cohort, "--out", tmp_path / "wd", "--size", crop_size) == 0
    a, b = CropCache.load(tmp_path / "ws"), CropCache.load(tmp_path / "wd")
    clinical = read_rows(slices_cohort / "clinical.csv")
    assert {r["patient_id"] for r in a.manifest} == {r["patient_id"] for r in clinical}
    assert len(a.manifest) == len(b.manifest) > 0
    for col in ("patient_id", "phase", "source", "x_min", "y_min", "x_max", "y_max", "grade", "label", "index"):
        assert col in a.manifest[0]

    def slice_no(cohort, r):  # the slice number: file name for PNG/BMP, InstanceNumber for DICOM
        if r["source"].endswith(".dcm"):
            return int(pydicom.dcmread(cohort / r["source"], stop_before_pixels=True).InstanceNumber)
        return int(r["source"].rsplit("_", 1)[1].split(".")[0])

    ka = {(r["patient_id"], r["phase"], slice_no(slices_cohort, r)): r for r in a.manifest}
    kb = {(r["patient_id"], r["phase"], slice_no(dicom_cohort, r)): r for r in b.manifest}
    assert ka.keys() == kb.keys()
    keys = sorted(ka)
    for k in keys:
        assert [ka[k][c] for c in ("x_min", "y_min", "x_max", "y_max")] == [
            kb[k][c] for c in ("x_min", "y_min", "x_max", "y_max")
        ]
    diff = np.abs(
        a.crops[[ka[k]["index"] for k in keys]].astype(int) - b.crops[[kb[k]["index"] for k in keys]].astype(int)
    )
    assert diff.max() <= 2  # PNG of windowed HU vs DICOM integer HU: rounding only
    for p in ("plain", "corticomedullary", "parenchymal", "excretory"):
        assert len(a.select(p)) * 4 == len(a.select("combined"))
    report = json.loads((tmp_path / "ws" / "ingest_report.json").read_text())
    images = [p for p in slices_cohort.rglob("*") if p.suffix in (".png", ".bmp")]
    unannotated = [p for p in images if not p.with_suffix(".json").exists()]
    assert report["n_slices_without_annotation"] == len(unannotated) >= 2 * 4 * 16  # >= 1 above + 1 below
    assert report["summary"]["combined"]["high"]["patients"] == sum(int(r["who_isup_grade"]) >= 3 for r in clinical)
    assert run_cli("split", tmp_path / "wd", "--ratios", "2:1:1", "--folds", "3") == 0
    s = json.loads((tmp_path / "wd" / "splits.json").read_text())
    assert len(s["train"]) + len(s["val"]) + len(s["test"]) == 16 and len(s["folds"]) == 16


def test_crop_content_is_the_tumour(crop_size, work):
    """The tumour (enhancing, bright in the parenchymal phase) fills the middle of each crop."""
    cache = CropCache.load(work)
    rows = cache.select("parenchymal")
    crops = cache.crops[[r["index"] for r in rows]].astype(float)
    centre = crops[:, crop_size // 3 : 2 * crop_size // 3, crop_size // 3 : 2 * crop_size // 3].mean()
    assert centre > 80  # tumour ~90-125 HU -> grey ~110-150 in the 40/290 window; fat is ~0


def test_phase_aliases_and_unknown_folders(slices_cohort, tmp_path, copy_tree):
    c = copy_tree(slices_cohort)
    for pdir in [p for p in c.iterdir() if p.is_dir()]:
        (pdir / "parenchymal").rename(pdir / "NP")
        (pdir / "excretory").rename(pdir / "Delayed")
        (pdir / "notes").mkdir()
    ingest(c, tmp_path / "w", PreprocessConfig(size=32), show_progress=False)
    m = CropCache.load(tmp_path / "w")
    assert set(m.phases()) == {"plain", "corticomedullary", "parenchymal", "excretory"}
    rep = json.loads((tmp_path / "w" / "ingest_report.json").read_text())
    assert any("notes: not a phase folder name" in w for w in rep["warnings"])


def test_several_rectangles_clipping_and_other_shapes(slices_cohort, tmp_path, copy_tree):
    c = copy_tree(slices_cohort)
    j = sorted((c / "SYN001" / "parenchymal").glob("*.json"))[0]
    data = json.loads(j.read_text())
    w = data["imageWidth"]
    # 80% of this box lies on the image: clipped with a warning (mostly outside would be refused)
    data["shapes"].append({"label": "t2", "points": [[w - 20, 5], [w + 5, 25]], "shape_type": "rectangle"})
    data["shapes"].append({"label": "k", "points": [[1, 1], [5, 5], [1, 9]], "shape_type": "polygon"})
    j.write_text(json.dumps(data))
    before = len(CropCache.load(_ingest(slices_cohort, tmp_path / "w0")).manifest)
    ingest(c, tmp_path / "w", PreprocessConfig(size=32), show_progress=False)
    m = CropCache.load(tmp_path / "w")
    assert len(m.manifest) == before + 1
    warns = json.loads((tmp_path / "w" / "ingest_report.json").read_text())["warnings"]
    assert any("extends outside" in x and "clipped" in x for x in warns)
    assert any("ignored non-rectangle shapes (polygon x1)" in x for x in warns)
    clipped = [r for r in m.manifest if float(r["x_min"]) == w - 20]
    assert len(clipped) == 1 and float(clipped[0]["x_max"]) == w  # the manifest records the box cropped


def test_bad_grade(refused, read_rows, write_rows, bad, capsys):
    c, w = bad
    rows = read_rows(c / "clinical.csv")
    rows[2]["who_isup_grade"] = "5"
    write_rows(c / "clinical.csv", rows)
    _ingest_bad(refused, capsys, c, w, "clinical.csv:4", "outside 1-4")


def test_duplicate_patient(refused, read_rows, write_rows, bad, capsys):
    c, w = bad
    rows = read_rows(c / "clinical.csv")
    rows[3]["patient_id"] = rows[2]["patient_id"]
    write_rows(c / "clinical.csv", rows)
    _ingest_bad(refused, capsys, c, w, "duplicate patient_id")


def test_missing_grade_column(refused, read_rows, write_rows, bad, capsys):
    c, w = bad
    rows = [{k: v for k, v in r.items() if k != "who_isup_grade"} for r in read_rows(c / "clinical.csv")]
    write_rows(c / "clinical.csv", rows)
    _ingest_bad(refused, capsys, c, w, "missing required column 'who_isup_grade'")


def test_grade_column_low_high_is_accepted(read_rows, write_rows, bad, tmp_path):
    c, _ = bad
    rows = read_rows(c / "clinical.csv")
    for r in rows:
        r["grade"] = "high" if int(r.pop("who_isup_grade")) >= 3 else "low"
    write_rows(c / "clinical.csv", rows)
    m = CropCache.load(_ingest(c, tmp_path / "w2"))
    assert {r["grade"] for r in m.manifest} == {"low", "high"}


def test_unreadable_image(refused, bad, capsys):
    c, w = bad
    img = sorted((c / "SYN002" / "plain").glob("*.png"))[1]
    img.write_bytes(img.read_bytes()[:100])
    _ingest_bad(refused, capsys, c, w, img.name, "unreadable or truncated image")


def test_not_labelme_json(refused, bad, capsys):
    c, w = bad
    j = sorted((c / "SYN002" / "plain").glob("*.json"))[0]
    j.write_text(json.dumps({"annotations": []}))
    _ingest_bad(refused, capsys, c, w, j.name, "not a labelme annotation")


def test_zero_area_box(refused, bad, capsys):
    c, w = bad
    j = sorted((c / "SYN002" / "plain").glob("*.json"))[0]
    d = json.loads(j.read_text())
    d["shapes"][0]["points"][1][0] = d["shapes"][0]["points"][0][0]
    j.write_text(json.dumps(d))
    _ingest_bad(refused, capsys, c, w, j.name, "zero area")


def test_image_path_escapes(refused, bad, capsys):
    c, w = bad
    j = sorted((c / "SYN002" / "plain").glob("*.json"))[0]
    d = json.loads(j.read_text())
    d["imagePath"] = "../../../../outside.png"
    j.write_text(json.dumps(d))
    _ingest_bad(refused, capsys, c, w, j.name, "points outside the folder of patient SYN002")


def test_existing_work_needs_overwrite(refused, bad, capsys):
    c, w = bad
    refused(capsys, ["ingest", c, "--out", w], "not empty", "--overwrite")
    _untouched(w)


def test_patients_without_images_and_images_without_rows_are_reported(read_rows, write_rows, bad, tmp_path):
    c, _ = bad
    rows = read_rows(c / "clinical.csv")
    dropped = rows.pop(0)["patient_id"]
    rows.append({**rows[0], "patient_id": "GHOST"})
    write_rows(c / "clinical.csv", rows)
    w = _ingest(c, tmp_path / "w3")
    rep = json.loads((w / "ingest_report.json").read_text())
    assert rep["excluded_patients"] == {
        dropped: "images but no row in clinical.csv",
        "GHOST": "row in clinical.csv but no annotated images",
    }
    assert dropped not in {r["patient_id"] for r in CropCache.load(w).manifest}


def test_dicom_bad_inputs(refused, read_rows, write_rows, dicom_cohort, copy_tree, tmp_path, capsys):
    c = copy_tree(dicom_cohort, "dbad")
    w = tmp_path / "work"
    w.mkdir()
    for name in ("manifest.csv", "preprocess.json"):
        (w / name).write_text("the earlier cache")
    boxes = read_rows(c / "boxes.csv")
    # zero-area box
    b2 = [dict(r) for r in boxes]
    b2[0]["x_max"] = b2[0]["x_min"]
    write_rows(c / "boxes.csv", b2)
    _ingest_bad(refused, capsys, c, w, "boxes.csv:2", "zero area")
    # file outside the cohort
    b2 = [dict(r) for r in boxes]
    b2[0]["file"] = "../elsewhere.dcm"
    write_rows(c / "boxes.csv", b2)
    _ingest_bad(refused, capsys, c, w, "outside the cohort folder")
    write_rows(c / "boxes.csv", boxes)
    # two series mixed in one phase folder
    other = sorted((c / "SYN002" / "plain").glob("*.dcm"))[0]
    shutil.copy(other, c / "SYN001" / "plain" / "intruder.dcm")
    _ingest_bad(refused, capsys, c, w, "2 DICOM series mixed in one phase folder")
    (c / "SYN001" / "plain" / "intruder.dcm").unlink()
    # truncated DICOM
    f = c / boxes[5]["file"]
    f.write_bytes(f.read_bytes()[:2000])
    _ingest_bad(refused, capsys, c, w, f.name)


def test_dicom_missing_rescale_is_a_warning(read_rows, dicom_cohort, copy_tree, tmp_path):
    c = copy_tree(dicom_cohort, "dresc")
    f = c / read_rows(c / "boxes.csv")[0]["file"]
    ds = pydicom.dcmread(f)
    del ds.RescaleIntercept
    del ds.RescaleSlope
    ds.save_as(f)
    w = _ingest(c, tmp_path / "w")
    warns = json.loads((w / "ingest_report.json").read_text())["warnings"]
    assert any(f.name in x and "RescaleSlope/RescaleIntercept missing" in x for x in warns)


def test_real_labelme_examples_as_a_cohort(survey, tmp_path):
    """labelme's own example folder (v4 rectangles, RGB JPEG photos) ingests as layout A."""
    src = survey("labelme")
    c = tmp_path / "c"
    for pid in ("P1", "P2", "P3", "P4"):
        d = c / pid / "parenchymal"
        d.mkdir(parents=True)
    for i, n in enumerate(("2011_000003", "2011_000006", "2011_000025")):
        shutil.copy(src / f"{n}.jpg", c / f"P{i + 1}" / "parenchymal" / f"{n}.jpg")
        shutil.copy(src / f"bbox_{n}.json", c / f"P{i + 1}" / "parenchymal" / f"bbox_{n}.json")
    shutil.copy(src / "primitives.jpg", c / "P4" / "parenchymal")
    shutil.copy(src / "primitives.json", c / "P4" / "parenchymal")
    (c / "clinical.csv").write_text("patient_id,who_isup_grade\nP1,1\nP2,3\nP3,2\nP4,4\n")
    w = _ingest(c, tmp_path / "w")
    m = CropCache.load(w)
    n_rect = sum(
        sum(s["shape_type"] == "rectangle" for s in json.loads(p.read_text())["shapes"]) for p in c.rglob("*.json")
    )
    assert len(m.manifest) == n_rect
    assert m.crops.shape[1:] == (32, 32)
    im = np.asarray(Image.open(c / "P1" / "parenchymal" / "2011_000003.jpg").convert("L"))
    r = m.manifest[0]
    x0, y0, x1, y1 = (int(float(r[k])) for k in ("x_min", "y_min", "x_max", "y_max"))
    assert abs(float(m.crops[r["index"]].mean()) - float(im[y0:y1, x0:x1].mean())) < 6
