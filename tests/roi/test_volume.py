"""ccrcc_grade.roi.volume: a phase in patient coordinates, from DICOM or NIfTI, and the geometry
a proposal refuses (unequal spacing, mixed orientation, no position)."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.roi.volume import read_dicom_volume, read_nifti_mask, read_nifti_volume


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same phantom patient written as DICOM and as NIfTI (same seed: same pixels)."""
    from ccrcc_grade.tools.synth import make_cohort

    root = tmp_path_factory.mktemp("pair")
    d = make_cohort(root / "d", patients=2, seed=8, matrix=96, layout="dicom")
    n = make_cohort(root / "n", patients=2, seed=8, matrix=96, layout="nifti")
    return d, n


def test_dicom_and_nifti_give_the_same_volume_in_the_same_coordinates(pair):
    d, n = pair
    dv = read_dicom_volume(d / "SYN001" / "parenchymal", d)
    nv = read_nifti_volume(n / "SYN001" / "parenchymal.nii.gz", n)
    assert dv.hu.shape == nv.hu.shape
    assert np.abs(dv.hu - nv.hu).max() <= 0.5  # int16 NIfTI vs 12-bit DICOM of the same HU
    assert np.allclose(dv.origin, nv.origin, atol=1e-3)
    assert np.allclose(dv.row_dir, nv.row_dir) and np.allclose(dv.col_dir, nv.col_dir)
    assert np.allclose(dv.spacing, nv.spacing, rtol=1e-5)
    assert np.all(np.diff(dv.positions) > 0) and abs(dv.gap - 5.0) < 1e-6
    assert all(r.startswith("SYN001/parenchymal/") for r in dv.refs) and len(set(dv.sops)) == len(dv.sops)


@pytest.mark.parametrize("k, x, y", [(0, 0, 0), (3, 10.5, 40.25), (5, 95, 1)])
def test_pixel_and_patient_coordinates_round_trip(pair, k, x, y):
    d, _ = pair
    v = read_dicom_volume(d / "SYN002" / "plain", d)
    p = v.to_patient(k, x, y)
    kk, xx, yy = v.to_pixel(p)
    assert (kk, xx, yy) == pytest.approx((k, x, y), abs=1e-6)
    ds = pydicom.dcmread(d / v.refs[k], stop_before_pixels=True)  # DICOM's own formula, PS3.3 C.7.6.2.1.1
    ipp = np.array([float(a) for a in ds.ImagePositionPatient])
    sp = [float(a) for a in ds.PixelSpacing]
    assert np.allclose(p, ipp + np.array([x * sp[1], y * sp[0], 0.0]), atol=1e-4)


def test_the_nifti_mask_lies_on_the_volumes_slices(pair):
    _, n = pair
    v = read_nifti_volume(n / "SYN001" / "corticomedullary.nii.gz", n)
    m = read_nifti_mask(n / "SYN001" / "corticomedullary_mask.nii.gz", v)
    assert m.shape == v.hu.shape and m.any()
    # the tumour enhances: the masked voxels are far from fat and air
    assert float(np.median(v.hu[m])) > 40


def _edit(folder, k, **tags):
    f = sorted(folder.iterdir())[k]
    ds = pydicom.dcmread(f)
    for key, val in tags.items():
        if val is None:
            delattr(ds, key)
        else:
            setattr(ds, key, val)
    ds.save_as(f)


BAD_SERIES = [
    ("a missing slice (10 mm gap among 5 mm)", "drop", "unequal spacing"),
    ("one slice tilted", {"ImageOrientationPatient": [1, 0, 0, 0, 0.98, 0.199]}, "another orientation"),
    ("no position", {"ImagePositionPatient": None}, "ImagePositionPatient"),
]


@pytest.mark.parametrize("case, change, needle", BAD_SERIES, ids=[c[0] for c in BAD_SERIES])
def test_a_series_a_proposal_cannot_walk_is_refused_in_one_line(pair, tmp_path, case, change, needle):
    d, _ = pair
    folder = tmp_path / "parenchymal"
    shutil.copytree(d / "SYN001" / "parenchymal", folder)
    if change == "drop":
        v = read_dicom_volume(folder)
        (folder / v.refs[3]).unlink()
    else:
        f = sorted(folder.iterdir())
        mid = read_dicom_volume(folder).refs[4]
        _edit(folder, [p.name for p in f].index(mid), **change)
    with pytest.raises(CcrccError) as e:
        read_dicom_volume(folder)
    assert needle in str(e.value) and "\n" not in str(e.value)
