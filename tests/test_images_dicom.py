"""Slice readers on real CT DICOM (plain, JPEG 2000, a 20-slice series) and bad files."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from PIL import Image

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.io.dicom import display_flips, read_hu, scan_series
from ccrcc_grade.io.images import read_gray

from conftest import survey


def test_ct_small_hu_range():
    hu, spacing = read_hu(survey("ct/pydicom/CT_small.dcm"))
    assert hu.shape == (128, 128)
    assert (hu.min(), hu.max()) == (-896.0, 1167.0)
    assert spacing == pytest.approx((0.661468, 0.661468))


def test_jpeg2000_abdomen_decodes_to_hu_and_is_flipped_to_the_radiological_view():
    path = survey("ct/pydicom/explicit_VR-UN_pancreasct_abdomen.dcm")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert "JPEG 2000" in ds.file_meta.TransferSyntaxUID.name
    hu, _ = read_hu(path)
    assert hu.shape == (512, 512) and (hu.min(), hu.max()) == (-1024.0, 1186.0)
    assert display_flips(ds) == (True, False)       # orientation [1,0,0,0,-1,0]: rows run posterior->anterior
    body = hu > -300
    rows = np.nonzero(body.any(axis=1))[0]
    mid = (rows.min() + rows.max()) / 2
    bone = hu > 300                                  # the spine is posterior
    assert np.nonzero(bone)[0].mean() < mid          # stored: spine in the upper half (upside-down)
    flipped = hu[::-1]
    assert np.nonzero(flipped > 300)[0].mean() > mid


def test_twenty_slice_series_sorted_by_position(tmp_path):
    src = survey("ct/totalsegmentator/example_ct_dicom")
    files = sorted(src.iterdir())
    for i, f in enumerate(reversed(files)):       # names no longer in slice order
        shutil.copy(f, tmp_path / f"{(i * 7) % 20:02d}_x.dcm")
    series = scan_series(tmp_path)
    assert len(series) == 20
    pos = [s.position for s in series]
    assert pos == sorted(pos) and len(set(pos)) == 20
    assert np.allclose(np.diff(pos), 2.0, atol=1e-3)
    hu, _ = read_hu(series[0].path)
    assert hu.min() >= -1024 and hu.max() <= 1436 + 1


def test_two_series_in_one_folder_is_an_error(tmp_path):
    shutil.copy(survey("ct/pydicom/CT_small.dcm"), tmp_path / "a.dcm")
    shutil.copy(survey("ct/pydicom/explicit_VR-UN_pancreasct_abdomen.dcm"), tmp_path / "b.dcm")
    with pytest.raises(CcrccError, match="2 DICOM series mixed in one phase folder"):
        scan_series(tmp_path)


def test_missing_rescale_tags_default_with_a_warning(tmp_path):
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


def test_truncated_and_foreign_dicom_are_errors(tmp_path):
    data = survey("ct/pydicom/CT_small.dcm").read_bytes()
    (tmp_path / "t.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(CcrccError, match=r"t\.dcm: cannot decode DICOM pixel data"):
        read_hu(tmp_path / "t.dcm")
    (tmp_path / "n.dcm").write_text("not dicom at all")
    with pytest.raises(CcrccError, match=r"n\.dcm: not a readable DICOM"):
        scan_series(tmp_path)


def test_gray_reader_rgb_and_truncated(tmp_path):
    rgb = np.zeros((6, 6, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert read_gray(tmp_path / "rgb.png")[0, 0] == 76          # ITU-R 601 luma of pure red
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "g.bmp")
    assert read_gray(tmp_path / "g.bmp")[7, 7] == 63
    Image.fromarray(np.full((64, 64), 9, np.uint8)).save(tmp_path / "full.png")
    b = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(b[: len(b) - 30])
    with pytest.raises(CcrccError, match=r"cut\.png: unreadable or truncated image"):
        read_gray(tmp_path / "cut.png")
