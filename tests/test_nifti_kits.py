"""NIfTI input (layout C), KiTS19/KiTS23 ingest with real clinical JSON and real tumour masks,
and DICOM phase detection."""

from __future__ import annotations

import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from ccrcc_grade.ingest.cache import CropCache, ingest
from ccrcc_grade.core.config import PreprocessConfig
from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.io.kits import ingest_kits, kits_grade, read_kits_clinical, select_cases
from ccrcc_grade.io.nifti import axial, load_ras, mask_boxes
from ccrcc_grade.ingest.phase_detect import detect_phases

from conftest import run_cli, survey


def test_kits23_clinical_counts():
    cases = read_kits_clinical(survey("kits23/kits23.json"))
    assert len(cases) == 489
    kept, excluded = select_cases(cases)
    cc = [c for c in cases if c["tumor_histologic_subtype"] == "clear_cell_rcc"]
    assert len(cc) == 310 and len(kept) == 308
    grades = [kits_grade(c) for c in kept]
    assert [grades.count(g) for g in "1234"] == [34, 151, 86, 37]
    assert sum(r == "clear cell RCC without ISUP grade" for r in excluded.values()) == 2


def test_kits19_clinical_counts():
    kept, _ = select_cases(read_kits_clinical(survey("kits19/kits.json")))
    grades = [kits_grade(c) for c in kept]
    assert len(kept) == 143 and [grades.count(g) for g in "1234"] == [18, 79, 36, 10]


MASKS = ["case_00152", "case_00061", "case_00038", "case_00546", "case_00285", "case_00110"]


@pytest.fixture(scope="module")
def kits_dir(tmp_path_factory):
    """Real KiTS23 masks, each paired with a synthetic imaging volume of the same shape and
    affine (the real CT is not available offline): tumour 60 HU, kidney 150, rest -80."""
    survey("kits23/segmentations")
    d = tmp_path_factory.mktemp("kits")
    for case in MASKS:
        seg = nib.load(survey(f"kits23/segmentations/{case}_segmentation.nii.gz"))
        lab = np.asanyarray(seg.dataobj)
        img = np.where(lab == 2, 60, np.where(lab == 1, 150, -80)).astype(np.int16)
        (d / case).mkdir()
        nib.save(nib.Nifti1Image(img, seg.affine), d / case / "imaging.nii.gz")
        shutil.copy(survey(f"kits23/segmentations/{case}_segmentation.nii.gz"), d / case / "segmentation.nii.gz")
    shutil.copy(survey("kits23/kits23.json"), d / "kits23.json")
    return d


def test_kits_orientation_matches_the_radiological_view():
    """KiTS stores (slice, row, col) with axes inferior/posterior/left: each stored slice already
    is the radiological view, so our canonical axial slice must equal it."""
    path = survey("kits23/segmentations/case_00152_segmentation.nii.gz")
    native = np.asanyarray(nib.load(str(path)).dataobj)
    ras, zooms = load_ras(path)
    assert ras.shape == (native.shape[2], native.shape[1], native.shape[0])
    z_native = int(np.argmax((native == 2).sum(axis=(1, 2))))
    z_ras = native.shape[0] - 1 - z_native              # axis 0 runs inferior: RAS z runs superior
    assert np.array_equal(axial(ras, z_ras), native[z_native])
    assert zooms == pytest.approx((0.72265625, 0.72265625, 5.0))


def test_kits_ingest_boxes_cover_every_tumour_voxel(kits_dir, tmp_path):
    rep = ingest_kits(kits_dir, tmp_path / "w", PreprocessConfig(size=32), show_progress=False)
    cache = CropCache.load(tmp_path / "w")
    assert {r["patient_id"] for r in cache.manifest} == set(MASKS)
    assert rep["excluded_patients"]["case_00000"] == "imaging.nii.gz or segmentation.nii.gz not downloaded"
    assert set(cache.phases()) == {"corticomedullary"}
    for case in MASKS:
        ras, zooms = load_ras(kits_dir / case / "segmentation.nii.gz")
        rows = [r for r in cache.manifest if r["patient_id"] == case]
        zs = {int(r["source"].rsplit("#z", 1)[1]) for r in rows}
        assert zs == set(np.nonzero((ras == 2).any(axis=(0, 1)))[0].tolist())
        for z in zs:
            tum = axial(ras, z) == 2
            covered = np.zeros_like(tum)
            for r in rows:
                if int(r["source"].rsplit("#z", 1)[1]) != z:
                    continue
                x0, y0, x1, y1 = (float(r[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
                # a 1.5 mm margin on each side (pixels = 1.5 / spacing)
                assert x1 - x0 >= 2 * 1.5 / zooms[0] and y1 - y0 >= 2 * 1.5 / zooms[1]
                covered[max(0, int(np.floor(y0))):int(np.ceil(y1)), max(0, int(np.floor(x0))):int(np.ceil(x1))] = True
            assert not (tum & ~covered).any(), f"{case} z={z}: tumour voxels outside every box"
    grades = {r["patient_id"]: r["grade"] for r in cache.manifest}
    assert grades == {"case_00152": "1", "case_00061": "2", "case_00038": "2", "case_00546": "3", "case_00285": "3",
                      "case_00110": "4"}
    crops = cache.crops[[r["index"] for r in cache.manifest]].astype(float)
    assert crops[:, 12:20, 12:20].mean() > crops[:, :2, :].mean() - 1     # tumour (60 HU) centre vs edges


def test_mask_boxes_per_component():
    m = np.zeros((20, 20), np.uint8)
    m[2:5, 3:7] = 1
    m[10:15, 12:14] = 1
    assert [b.as_tuple() for b in mask_boxes(m)] == [(3, 2, 7, 5), (12, 10, 14, 15)]


def test_kits_without_downloaded_imaging_is_a_clear_error(tmp_path, capsys):
    shutil.copy(survey("kits23/kits23.json"), tmp_path / "kits23.json")
    assert run_cli("ingest", "--format", "kits", tmp_path, "--out", tmp_path / "w") == 2
    assert "download them with the KiTS repository's script" in capsys.readouterr().err


def test_nifti_layout_with_real_ct(tmp_path):
    """Layout C with the real TotalSegmentator CT (RAS-stored, 3 mm) and its right-kidney label as
    the 'tumour' mask: crops come out in the radiological view (right kidney on the image left)."""
    ct = survey("ct/totalsegmentator/example_ct_sm.nii.gz")
    seg = nib.load(survey("ct/totalsegmentator/example_seg.nii.gz"))
    lab = np.asanyarray(seg.dataobj)
    c = tmp_path / "c"
    (c / "P1").mkdir(parents=True)
    shutil.copy(ct, c / "P1" / "NP.nii.gz")
    nib.save(nib.Nifti1Image((lab == 2).astype(np.uint8), seg.affine), c / "P1" / "NP_mask.nii.gz")
    (c / "clinical.csv").write_text("patient_id,who_isup_grade\nP1,2\n")
    ingest(c, tmp_path / "w", PreprocessConfig(size=32), show_progress=False)
    cache = CropCache.load(tmp_path / "w")
    assert cache.phases() == ["parenchymal"] and len(cache.manifest) > 3
    width = axial(load_ras(ct)[0], 0).shape[1]
    xs = [(float(r["x_min"]) + float(r["x_max"])) / 2 for r in cache.manifest]
    assert max(xs) < width / 2                       # right kidney: left half of the image
    mean = cache.crops[[r["index"] for r in cache.manifest]].mean()
    assert 40 < mean < 200                            # soft tissue in the 40/290 window, not air or bone


def test_nifti_mask_shape_mismatch(tmp_path, capsys):
    c = tmp_path / "c"
    (c / "P1").mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4)), c / "P1" / "plain.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((8, 8, 3), np.uint8), np.eye(4)), c / "P1" / "plain_mask.nii.gz")
    (c / "clinical.csv").write_text("patient_id,who_isup_grade\nP1,2\n")
    assert run_cli("ingest", c, "--out", tmp_path / "w") == 2
    assert "differs from the volume" in capsys.readouterr().err


def _series(desc, contrast, t):
    return {"uid": desc + str(t), "description": desc, "protocol": "", "contrast": contrast, "time": t}


def test_phase_detection_rules():
    s = detect_phases([_series("Abd NC 5mm", False, 0), _series("Arterial 1.25", True, 60),
                       _series("Venous", True, 130), _series("Delayed 10min", True, 600)])
    assert [x["phase"] for x in s] == ["plain", "corticomedullary", "parenchymal", "excretory"]
    s = detect_phases([_series("", False, 0), _series("", True, 70), _series("", True, 160), _series("", True, 400)])
    assert [x["phase"] for x in s] == ["plain", "corticomedullary", "parenchymal", "excretory"]
    s = detect_phases([_series("", True, 70), _series("", True, 80)])
    assert [x["phase"] for x in s] == [None, None] and all("ambiguous" in x["rule"] for x in s)
    s = detect_phases([_series("NP", True, 70), _series("venous", True, 90)])
    assert [x["phase"] for x in s] == [None, None] and "2 series look parenchymal" in s[0]["rule"]


def test_phase_detection_on_real_series_tags():
    """The real TotalSegmentator series: contrast APPLIED, description 'CT Body 3.0', one series
    - nothing says which contrast phase it is, so it is reported as ambiguous, not guessed."""
    from ccrcc_grade.ingest.phase_detect import scan_patient

    groups = scan_patient(survey("ct/totalsegmentator/example_ct_dicom"))
    assert len(groups) == 1
    g = next(iter(groups.values()))
    assert g["contrast"] and len(g["files"]) == 20 and g["description"] == "CT Body 3.0"
    assert detect_phases([g])[0]["phase"] is None


def test_detect_phases_ingest_of_unsorted_series(dicom_cohort, tmp_path):
    c = tmp_path / "c"
    c.mkdir()
    shutil.copy(dicom_cohort / "clinical.csv", c)
    for p in (q for q in dicom_cohort.iterdir() if q.is_dir()):
        (c / p.name / "all").mkdir(parents=True)
        for f in p.glob("*/*.dcm"):
            shutil.copy(f, c / p.name / "all" / f.name)
    rows = list(csv.DictReader(open(dicom_cohort / "boxes.csv")))
    with open(c / "boxes.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["patient_id", "file", "x_min", "y_min", "x_max", "y_max"])
        w.writeheader()
        for r in rows:
            w.writerow({"patient_id": r["patient_id"], "file": f"{r['patient_id']}/all/{r['file'].rsplit('/', 1)[1]}",
                        **{k: r[k] for k in ("x_min", "y_min", "x_max", "y_max")}})
    assert run_cli("ingest", c, "--detect-phases", "--out", tmp_path / "w", "--size", "32") == 0
    rep = json.loads((tmp_path / "w" / "ingest_report.json").read_text())
    assert len(rep["phase_assignment"]) == 16 * 4 and all(a["phase"] for a in rep["phase_assignment"])
    got = CropCache.load(tmp_path / "w")
    assert sorted((r["patient_id"], r["phase"]) for r in got.manifest) == sorted((r["patient_id"], r["phase"]) for r in rows)


def test_bad_kits_json(tmp_path):
    (tmp_path / "k.json").write_text(json.dumps({"not": "kits"}))
    with pytest.raises(CcrccError, match="not a KiTS clinical JSON"):
        read_kits_clinical(tmp_path / "k.json")


def test_kits_as_external_validation(kits_dir, work, tmp_path):
    """A model trained on another cohort (the phantom, corticomedullary) validated on a raw
    KiTS folder, ingested on the fly with the model's preprocessing."""
    from ccrcc_grade.core.config import TrainConfig
    from ccrcc_grade.model.train import fit

    run = tmp_path / "cm"
    fit(TrainConfig(work=str(work), phase="corticomedullary", out=str(run), weights="none", epochs=1,
                    image_size=48, batch_size=16, progress=False))
    assert run_cli("evaluate", run, "--cohort", kits_dir, "--out", tmp_path / "ext", "--bootstrap", "50") == 0
    m = json.loads((tmp_path / "ext" / "metrics.json").read_text())
    assert m["patient"]["n"] == len(MASKS) and m["patient"]["confusion_matrix"][0][0] + m["patient"]["confusion_matrix"][0][1] == 3


def test_study_on_a_kits_folder(kits_dir, tmp_path):
    """`study --format kits`: one contrast phase, so ResNet34 and SE-ResNet34 on it alone."""
    out = tmp_path / "ks"
    assert run_cli("study", kits_dir, "--format", "kits", "--out", out, "--preset", "quick", "--epochs", "1",
                   "--image-size", "32", "--size", "32", "--ratios", "1:1:1") == 0
    res = json.loads((out / "results.json").read_text())
    assert res["best_phase"] == "corticomedullary"
    assert set(res["runs"]) == {"resnet34-corticomedullary", "se_resnet34-corticomedullary"}
    assert res["dataset"]["test"]["corticomedullary"]["high"]["patients"] == 1
    assert (out / "report.html").is_file()
