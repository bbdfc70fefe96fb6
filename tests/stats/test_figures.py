"""ccrcc_grade.stats.figures: counts readable on every cell of a confusion matrix."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from ccrcc_grade.stats.figures import text_colour


def _contrast(a: tuple, b: tuple) -> float:
    def lum(rgba):
        c = [x / 12.92 if x <= 0.03928 else ((x + 0.055) / 1.055) ** 2.4 for x in rgba[:3]]
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]

    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.mark.parametrize(
    "cm",
    [[[30, 28], [29, 31]], [[12, 0], [1, 5]], [[0, 0], [0, 0]], [[100, 3], [50, 49]], [[5, 5], [5, 5]]],
)
def test_every_count_reads_on_its_cell(cm):
    """The reviewer's figure: white counts on pale cells (one invisible). Cells are coloured from
    zero and each count takes black or white, whichever contrasts more: WCAG's 4.5:1 at least."""
    cmap = plt.get_cmap("Blues")
    top = max(max(max(r) for r in cm), 1)
    for row in cm:
        for v in row:
            cell = cmap(v / top)
            ink = (0, 0, 0, 1) if text_colour(cell) == "black" else (1, 1, 1, 1)
            assert _contrast(cell, ink) >= 4.5, (v, cell)
