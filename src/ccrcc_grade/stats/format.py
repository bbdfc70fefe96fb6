"""How numbers of statistical tests are printed, in one place, so no output says "P = 0".

A P value is an upper-tail probability: it is never zero, so anything below 0.001 reads
"<0.001"; otherwise three decimals, with more where three would move it across 0.05 (0.0496
reads 0.0496, not 0.050)."""

from __future__ import annotations

import math

ALPHA = 0.05


def format_p(p: float | None) -> str:
    """'<0.001', '0.034', '0.0496'; 'n/a' for a missing or undefined P."""
    if p is None or not isinstance(p, (int, float)) or math.isnan(p):
        return "n/a"
    if p < 0.001:
        return "<0.001"
    digits = 3
    while digits < 6 and (round(p, digits) < ALPHA) != (p < ALPHA):
        digits += 1
    return f"{p:.{digits}f}"


def signed(v: float) -> str:
    """'+0.344', '-0.016': a difference with its sign, never '-0.000'."""
    return f"{v + 0.0:+.3f}"
