"""ccrcc_grade.ingest.anatomy: the vertebral body and the aorta on real and phantom CT, and what
a box holds."""

from __future__ import annotations

import numpy as np
import pytest

from ccrcc_grade.ingest.anatomy import aorta_hu, box_stats, reference, spine_centre
from ccrcc_grade.io.boxes import Box
from ccrcc_grade.tools import synth


def test_spine_on_a_real_ct_lies_in_a_vertebra(real_ct_slice):
    hu, spacing, labels = real_ct_slice()
    row, col, _ = spine_centre(hu, spacing)
    # TotalSegmentator v2 labels 26-50 are the vertebrae (S1 ... C1)
    assert 26 <= labels[int(row), int(col)] <= 50, labels[int(row), int(col)]


def test_aorta_on_a_real_contrast_ct(real_ct_slice):
    """The series is contrast-enhanced (ContrastBolusAgent APPLIED): the aorta measures well
    above unenhanced blood; TotalSegmentator's aorta label (52) agrees within 40 HU."""
    hu, spacing, labels = real_ct_slice()
    found = aorta_hu(hu, spacing, spine_centre(hu, spacing))
    assert found > 150
    assert abs(found - float(np.median(hu[labels == 52]))) < 40


@pytest.mark.parametrize("phase", ["plain", "corticomedullary", "parenchymal", "excretory"])
def test_phantom_spine_and_aorta(phase):
    """On the phantom, where the truth is known: the vertebral body at x = 0, y = 0.55 b, and
    the aorta's HU of the phase (within the noise and blur)."""
    rng = np.random.default_rng(1)
    p = synth._make_patient(rng, "P1", 0, 256)
    hu, _ = synth._render(p, phase, 3, 256)
    sp = (p.spacing, p.spacing)
    row, col, radius = spine_centre(hu, sp)
    fov = 256 * p.spacing
    assert abs(col * p.spacing - fov / 2) < 6 and abs(row * p.spacing - (fov / 2 + p.body[1] * 0.55)) < 8
    expected = 35 + (synth._HU[phase]["aorta"] - 35) * p.enh + p.hu_offset
    assert abs(aorta_hu(hu, sp, (row, col, radius)) - expected) < 25 + 0.15 * expected


def test_spine_absent_in_air():
    assert spine_centre(np.full((128, 128), -1000.0, np.float32), (1.0, 1.0)) is None


def test_box_stats_and_reference():
    hu = np.zeros((50, 60), np.float32)
    hu[:, 30:] = -1000
    s = box_stats(hu, Box(20, 10, 40, 30), (0.5, 0.8))
    assert s["width_mm"] == 16 and s["height_mm"] == 10 and s["air"] == 0.5 and s["mean_hu"] == -500
    assert s["lateral_mm"] is None  # no spine given
    ref = reference([{"mean_hu": v, "lateral_mm": None, "ap_mm": None} for v in (10, 20, 30)], [{"pixel_spacing": 0.7}])
    assert ref["mean_hu"] == [10, 30] and ref["lateral_mm"] is None and ref["pixel_spacing_mm"] == [0.7, 0.7]
