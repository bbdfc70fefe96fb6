"""The project's one exception type.

Every expected failure (bad input, impossible request) raises :class:`CcrccError` with a
message that names the file and the problem; the CLI prints it as one line and exits 2.
"""

from __future__ import annotations


class CcrccError(Exception):
    """An error caused by the user's input or request, reported as one line (exit code 2)."""


class CannotWrite(CcrccError):
    """A file could not be written (a full disk, no permission): one line, never a traceback;
    ``reason`` is the system's words without the path (the workstation answers HTTP 507 with it)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def check_number(
    value: object,
    what: str,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    integer: bool = False,
) -> float:
    """A number read from a file or a flag: finite (NaN and infinity pass every comparison
    unnoticed, so they are refused here, where the number enters) and within [lo, hi] (or
    (lo, hi] with ``lo_open``); ``integer`` refuses 1.7 where a whole number is meant. Returns
    it as a float; a one-line :class:`CcrccError` naming ``what`` otherwise."""
    import math

    try:
        f = float(value)
    except (TypeError, ValueError):
        raise CcrccError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(f):
        raise CcrccError(f"{what} must be a finite number, got {value!r}")
    if integer and f != int(f):
        raise CcrccError(f"{what} must be a whole number, got {value!r}")
    if (lo is not None and (f <= lo if lo_open else f < lo)) or (hi is not None and f > hi):
        lo_text = "-inf" if lo is None else f"{lo:g}"
        hi_text = "inf" if hi is None else f"{hi:g}"
        raise CcrccError(f"{what} must lie in {'(' if lo_open else '['}{lo_text}, {hi_text}], got {value!r}")
    return f
