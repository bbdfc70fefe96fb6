"""ccrcc_grade.evidence.radiomics: IBSI features against pyradiomics, the radiomics models."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from ccrcc_grade.core.errors import CcrccError


def test_radiomics_on_a_real_ct_volume_matches_pyradiomics_reading_the_files(survey):
    """Our path (nibabel arrays -> features) against the library reading the NIfTI files itself,
    on the real TotalSegmentator CT and its right-kidney label; first-order values also against numpy."""
    pytest.importorskip("radiomics")
    import nibabel as nib

    from ccrcc_grade.evidence.radiomics import SETTINGS, _extractor, features

    ct, seg = survey("ct/totalsegmentator/example_ct_sm.nii.gz"), survey("ct/totalsegmentator/example_seg.nii.gz")
    img, lab = nib.load(ct), nib.load(seg)
    hu = np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0)  # (x, y, z) -> (z, y, x)
    mask = (np.asarray(lab.dataobj) == 2).transpose(2, 1, 0)
    assert mask.sum() > 100
    ours = features(hu, mask, tuple(float(z) for z in img.header.get_zooms()[:3]))
    ext = _extractor()
    ext.settings["label"] = 2
    ref = {
        k.removeprefix("original_"): float(v)
        for k, v in ext.execute(str(ct), str(seg), label=2).items()
        if k.startswith("original_")
    }
    assert SETTINGS["label"] == 1 and set(ours) == set(ref) and len(ours) > 80
    for k in ref:
        assert ours[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-8), k
    vox = hu[mask]
    assert ours["firstorder_Mean"] == pytest.approx(float(vox.mean()), rel=1e-5)
    assert ours["firstorder_Maximum"] == pytest.approx(float(vox.max()))
    assert ours["firstorder_Energy"] == pytest.approx(float(np.sum(vox.astype(np.float64) ** 2)), rel=1e-5)


def test_radiomics_on_a_real_ct_slice_with_a_box(survey):
    """A box on the real contrast-enhanced abdominal DICOM slice (JPEG 2000): mean and range from numpy."""
    pytest.importorskip("radiomics")
    import pydicom

    from ccrcc_grade.evidence.radiomics import box_mask, features

    ds = pydicom.dcmread(survey("ct/pydicom/explicit_VR-UN_pancreasct_abdomen.dcm"))
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    box = hu[230:290, 300:360]
    f = features(box, box_mask(box.shape), tuple(float(v) for v in ds.PixelSpacing))
    inner = box[1:-1, 1:-1]
    assert f["firstorder_Mean"] == pytest.approx(float(inner.mean()), rel=1e-5)
    assert f["firstorder_Range"] == pytest.approx(float(inner.max() - inner.min()), rel=1e-5)
    assert all(math.isfinite(v) for v in f.values())


@pytest.mark.parametrize(
    "shape, mask_sum, message",
    [
        ((8, 8), 2, "at least 4 needed"),
        ((8, 8), None, "differ in shape"),
    ],
)
def test_radiomics_refuses_bad_rois(shape, mask_sum, message):
    pytest.importorskip("radiomics")
    from ccrcc_grade.evidence.radiomics import features

    hu = np.zeros(shape, np.float32)
    mask = np.zeros(shape if mask_sum is not None else (4, 4), np.uint8)
    if mask_sum:
        mask.flat[:mask_sum] = 1
    with pytest.raises(CcrccError, match=message):
        features(hu, mask, (1.0, 1.0))


@pytest.mark.parametrize("case, message", [("missing", "not an ingested cohort"), ("no_splits", "no splits file")])
def test_radiomics_command_refuses_what_is_not_a_split_work_folder(run_cli, work, tmp_path, capsys, case, message):
    w = tmp_path / "w"
    if case == "no_splits":
        shutil.copytree(work, w)
        (w / "splits.json").unlink()
    assert run_cli("radiomics", w) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (w / "radiomics").exists()


def test_radiomics_command_on_a_cohort(run_cli, work, tmp_path, capsys):
    pytest.importorskip("radiomics")
    w = tmp_path / "w"
    shutil.copytree(work, w)
    assert run_cli("radiomics", w) == 0
    out = capsys.readouterr().out
    assert "radiomics-logistic" in out and "radiomics-svm" in out
    res = json.loads((w / "radiomics" / "results.json").read_text())
    header = (w / "radiomics" / "features.csv").read_text().splitlines()[0].split(",")
    assert res["n_features"] == len(header) - 1 and res["phases"] == [
        "plain",
        "corticomedullary",
        "parenchymal",
        "excretory",
    ]
    splits = json.loads((w / "splits.json").read_text())
    for m in res["models"].values():
        assert set(m["test"]) == set(splits["test"]) and m["fitted_on"].startswith("training patients")
        assert set(m["selected_features"]) <= set(header)
