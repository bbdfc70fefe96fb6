"""ccrcc_grade.roi.interpolate: boxes between key slices, over slice position."""

from __future__ import annotations

import numpy as np
import pytest

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.io.boxes import Box
from ccrcc_grade.roi.interpolate import interpolate_boxes


def test_corners_follow_position_not_index():
    # slice 3 is missing from the series: positions 0, 5, 10, 20, 25 mm
    pos = [0.0, 5.0, 10.0, 20.0, 25.0]
    keys = {0: Box(10, 10, 20, 20), 4: Box(60, 10, 70, 70)}
    out = interpolate_boxes(keys, pos)
    assert sorted(out) == [1, 2, 3]
    # at 20 mm (index 3) the corners are 80% of the way, not 75% as the index would say
    assert out[3].as_tuple() == pytest.approx((50, 10, 60, 60))
    assert out[1].as_tuple() == pytest.approx((20, 10, 30, 30))  # 20% at 5 mm


def test_no_extrapolation_and_more_keys_bend_the_path():
    pos = np.arange(10) * 5.0
    keys = {2: Box(0, 0, 10, 10), 5: Box(0, 0, 40, 40), 8: Box(0, 0, 10, 10)}
    out = interpolate_boxes(keys, pos)
    assert sorted(out) == [3, 4, 6, 7]  # nothing before the first or after the last key
    assert out[4].width == pytest.approx(30) and out[6].width == pytest.approx(30)


def test_positions_descending_work_as_well():
    pos = [25.0, 20.0, 15.0, 10.0]
    out = interpolate_boxes({0: Box(0, 0, 10, 10), 3: Box(0, 0, 40, 10)}, pos)
    assert out[1].width == pytest.approx(20) and out[2].width == pytest.approx(30)


BAD = [
    ("one key", {0: Box(0, 0, 5, 5)}, [0.0, 5.0], "at least two slices"),
    ("no positions", {0: Box(0, 0, 5, 5), 2: Box(0, 0, 5, 5)}, [0.0, float("nan"), 10.0], "position of every slice"),
    ("key outside", {0: Box(0, 0, 5, 5), 7: Box(0, 0, 5, 5)}, [0.0, 5.0, 10.0], "outside the series"),
]


@pytest.mark.parametrize("case, keys, pos, needle", BAD, ids=[b[0] for b in BAD])
def test_bad_keys_are_refused(case, keys, pos, needle):
    with pytest.raises(CcrccError, match=needle):
        interpolate_boxes(keys, pos)
