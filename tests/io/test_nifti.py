"""ccrcc_grade.io.nifti: NIfTI orientation and mask boxes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from ccrcc_grade.io.nifti import axial, load_ras, mask_boxes


def test_kits_orientation_matches_the_radiological_view(survey):
    """KiTS stores (slice, row, col) with axes inferior/posterior/left: each stored slice already
    is the radiological view, so our canonical axial slice must equal it."""
    path = survey("kits23/segmentations/case_00152_segmentation.nii.gz")
    native = np.asanyarray(nib.load(str(path)).dataobj)
    ras, zooms = load_ras(path)
    assert ras.shape == (native.shape[2], native.shape[1], native.shape[0])
    z_native = int(np.argmax((native == 2).sum(axis=(1, 2))))
    z_ras = native.shape[0] - 1 - z_native  # axis 0 runs inferior: RAS z runs superior
    assert np.array_equal(axial(ras, z_ras), native[z_native])
    assert zooms == pytest.approx((0.72265625, 0.72265625, 5.0))


def test_mask_boxes_per_component():
    m = np.zeros((20, 20), np.uint8)
    m[2:5, 3:7] = 1
    m[10:15, 12:14] = 1
    assert [b.as_tuple() for b in mask_boxes(m)] == [(3, 2, 7, 5), (12, 10, 14, 15)]
