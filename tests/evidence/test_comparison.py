"""ccrcc_grade.evidence.comparison: Holm's adjustment."""

from __future__ import annotations

import math

import pytest

from ccrcc_grade.evidence.comparison import holm


def test_holm_adjustment():
    # sorted 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, then max(0.06, 0.04*1) = 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    got = holm([0.5, float("nan"), 0.9])
    assert got[0] == pytest.approx(1.0) and math.isnan(got[1]) and got[2] == pytest.approx(1.0)
