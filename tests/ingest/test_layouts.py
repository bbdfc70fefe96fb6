"""ccrcc_grade.ingest.layouts: NIfTI and KiTS layouts, detect_layout."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

from ccrcc_grade.core.config import PreprocessConfig
from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.ingest.cache import CropCache
from ccrcc_grade.ingest.layouts import CohortSource
from ccrcc_grade.ingest.pipeline import ingest
from ccrcc_grade.io.nifti import axial, load_ras


def test_kits_ingest_boxes_cover_every_tumour_voxel(kits_cases, kits_dir, tmp_path):
    rep = ingest(CohortSource(kits_dir, "kits"), tmp_path / "w", PreprocessConfig(size=32), show_progress=False)
    cache = CropCache.load(tmp_path / "w")
    assert {r["patient_id"] for r in cache.manifest} == set(kits_cases)
    assert rep["excluded_patients"]["case_00000"] == "imaging.nii.gz or segmentation.nii.gz not downloaded"
    assert set(cache.phases()) == {"corticomedullary"}
    for case in kits_cases:
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
                covered[max(0, int(np.floor(y0))) : int(np.ceil(y1)), max(0, int(np.floor(x0))) : int(np.ceil(x1))] = (
                    True
                )
            assert not (tum & ~covered).any(), f"{case} z={z}: tumour voxels outside every box"
    grades = {r["patient_id"]: r["grade"] for r in cache.manifest}
    assert grades == {
        "case_00152": "1",
        "case_00061": "2",
        "case_00038": "2",
        "case_00546": "3",
        "case_00285": "3",
        "case_00110": "4",
    }
    crops = cache.crops[[r["index"] for r in cache.manifest]].astype(float)
    assert crops[:, 12:20, 12:20].mean() > crops[:, :2, :].mean() - 1  # tumour (60 HU) centre vs edges


def test_kits_without_downloaded_imaging_is_a_clear_error(run_cli, survey, tmp_path, capsys):
    (tmp_path / "kits").mkdir()
    shutil.copy(survey("kits23/kits23.json"), tmp_path / "kits" / "kits23.json")
    assert run_cli("ingest", "--format", "kits", tmp_path / "kits", "--out", tmp_path / "w") == 2
    assert "download them with the KiTS repository's script" in capsys.readouterr().err


def test_nifti_layout_with_real_ct(survey, tmp_path):
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
    assert max(xs) < width / 2  # right kidney: left half of the image
    mean = cache.crops[[r["index"] for r in cache.manifest]].mean()
    assert 40 < mean < 200  # soft tissue in the 40/290 window, not air or bone


def test_nifti_mask_shape_mismatch(run_cli, tmp_path, capsys):
    c = tmp_path / "c"
    (c / "P1").mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4)), c / "P1" / "plain.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((8, 8, 3), np.uint8), np.eye(4)), c / "P1" / "plain_mask.nii.gz")
    (c / "clinical.csv").write_text("patient_id,who_isup_grade\nP1,2\n")
    assert run_cli("ingest", c, "--out", tmp_path / "w") == 2
    assert "differs from the volume" in capsys.readouterr().err


@pytest.mark.parametrize(
    "folder, layout",
    [
        ("slices_cohort", "slices"),
        ("dicom_cohort", "dicom"),
        ("work", "work"),
        ("kits_dir", "kits"),
        ("nifti", "nifti"),
    ],
)
def test_detect_layout_is_the_one_rule(request, tmp_path, folder, layout):
    from ccrcc_grade.ingest.layouts import detect_layout

    if folder == "nifti":
        root = tmp_path / "n"
        (root / "P1").mkdir(parents=True)
        (root / "P1" / "parenchymal.nii.gz").write_bytes(b"")
    else:
        root = request.getfixturevalue(folder)
    assert detect_layout(root) == layout


@pytest.mark.parametrize(
    "make, needle",
    [
        ("missing", "cohort folder not found"),
        ("work", "is an ingested WORK folder"),
        ("layout", "unknown layout 'png'"),
    ],
)
def test_what_no_reader_reads_is_refused(work, tmp_path, make, needle):
    from ccrcc_grade.ingest.layouts import CohortSource, read_cohort

    with pytest.raises(CcrccError, match=needle):
        if make == "missing":
            read_cohort(tmp_path / "nothing")
        elif make == "work":
            read_cohort(work)
        else:
            read_cohort(CohortSource(tmp_path, "png"))


def test_every_layout_reader_returns_a_validated_cohort(slices_cohort, dicom_cohort):
    """Both layouts of the same phantom give the same patients, phases and labels."""
    from ccrcc_grade.ingest.layouts import READERS, read_cohort

    assert set(READERS) == {"slices", "dicom", "detect", "nifti", "kits"}
    a, b = read_cohort(slices_cohort), read_cohort(dicom_cohort)
    assert (a.layout, b.layout) == ("slices", "dicom")
    assert {(r.patient_id, r.phase) for r in a.rois} == {(r.patient_id, r.phase) for r in b.rois}
    assert a.clinical.labels == b.clinical.labels
