"""ccrcc_grade.io.dicom: DICOM decoding to HU, orientation, series, and bad DICOM inputs."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.io.dicom import display_flips, read_hu, scan_series


def test_ct_small_hu_range(survey):
    hu, spacing = read_hu(survey("ct/pydicom/CT_small.dcm"))
    assert hu.shape == (128, 128)
    assert (hu.min(), hu.max()) == (-896.0, 1167.0)
    assert spacing == pytest.approx((0.661468, 0.661468))


def test_jpeg2000_abdomen_decodes_to_hu_and_is_flipped_to_the_radiological_view(survey):
    path = survey("ct/pydicom/explicit_VR-UN_pancreasct_abdomen.dcm")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert "JPEG 2000" in ds.file_meta.TransferSyntaxUID.name
    hu, _ = read_hu(path)
    assert hu.shape == (512, 512) and (hu.min(), hu.max()) == (-1024.0, 1186.0)
    assert display_flips(ds) == (True, False)  # orientation [1,0,0,0,-1,0]: rows run posterior->anterior
    body = hu > -300
    rows = np.nonzero(body.any(axis=1))[0]
    mid = (rows.min() + rows.max()) / 2
    bone = hu > 300  # the spine is posterior
    assert np.nonzero(bone)[0].mean() < mid  # stored: spine in the upper half (upside-down)
    flipped = hu[::-1]
    assert np.nonzero(flipped > 300)[0].mean() > mid


def test_twenty_slice_series_sorted_by_position(survey, tmp_path):
    src = survey("ct/totalsegmentator/example_ct_dicom")
    files = sorted(src.iterdir())
    for i, f in enumerate(reversed(files)):  # names no longer in slice order
        shutil.copy(f, tmp_path / f"{(i * 7) % 20:02d}_x.dcm")
    series = scan_series(tmp_path)
    assert len(series) == 20
    pos = [s.position for s in series]
    assert pos == sorted(pos) and len(set(pos)) == 20
    assert np.allclose(np.diff(pos), 2.0, atol=1e-3)
    hu, _ = read_hu(series[0].path)
    assert hu.min() >= -1024 and hu.max() <= 1436 + 1


def test_two_series_in_one_folder_is_an_error(survey, tmp_path):
    shutil.copy(survey("ct/pydicom/CT_small.dcm"), tmp_path / "a.dcm")
    shutil.copy(survey("ct/pydicom/explicit_VR-UN_pancreasct_abdomen.dcm"), tmp_path / "b.dcm")
    with pytest.raises(CcrccError, match="2 DICOM series mixed in one phase folder"):
        scan_series(tmp_path)


def test_missing_rescale_tags_default_with_a_warning(survey, tmp_path):
    ds = pydicom.dcmread(survey("ct/pydicom/CT_small.dcm"))
    raw = ds.pixel_array.copy()
    del ds.RescaleSlope
    del ds.RescaleIntercept
    ds.save_as(tmp_path / "norescale.dcm")
    warnings: list[str] = []
    hu, _ = read_hu(tmp_path / "norescale.dcm", warnings)
    assert len(warnings) == 1 and "norescale.dcm: RescaleSlope/RescaleIntercept missing" in warnings[0]
    offset = -1024 if int(ds.PixelRepresentation) == 0 else 0
    assert np.array_equal(hu, raw.astype(np.float32) + offset)


def test_truncated_and_foreign_dicom_are_errors(survey, tmp_path):
    data = survey("ct/pydicom/CT_small.dcm").read_bytes()
    (tmp_path / "t.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(CcrccError, match=r"t\.dcm: cannot decode DICOM pixel data"):
        read_hu(tmp_path / "t.dcm")
    (tmp_path / "n.dcm").write_text("not dicom at all")
    with pytest.raises(CcrccError, match=r"n\.dcm: not a readable DICOM"):
        scan_series(tmp_path)


@pytest.mark.parametrize(
    "case, needle",
    [
        ("boxes.csv nan", "boxes.csv:2: x_min must be a finite number"),
        ("boxes.csv inf", "boxes.csv:2: y_max must be a finite number"),
        ("RescaleSlope NaN", "RescaleSlope must be a finite number"),
        ("PixelSpacing 0", "PixelSpacing must lie in (0, 100]"),
        ("PixelSpacing one value", "PixelSpacing must hold two values"),
        ("Modality MR", "Modality is MR, not CT"),
        ("box far outside", "lies mostly outside the 128x128 image"),
    ],
)
def test_bad_numbers_and_claims_in_dicom_cohorts(
    read_rows, refused, write_rows, dicom_cohort, tmp_path, capsys, case, needle
):
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
            for g in sorted(f.parent.glob("*.dcm")):  # the whole series claims MR
                d = pydicom.dcmread(g)
                d.Modality = "MR"
                d.save_as(g)
            ds = pydicom.dcmread(f)
        ds.save_as(f)
    refused(capsys, ["ingest", c, "--out", tmp_path / "w", "--margin-mm", "1"], needle)
    assert not (tmp_path / "w").exists()
