"""Boxes between key slices: each corner interpolated linearly over slice POSITION (mm along the
slice normal, from ImagePositionPatient), never over slice index, so a series with a missing slice
or uneven numbering still gets the boxes where the tumour is. No extrapolation: slices beyond the
first and last key box get none (the clinician's first and last slice bound the tumour)."""

from __future__ import annotations

import numpy as np

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.io.boxes import Box


def interpolate_boxes(keys: dict[int, Box], positions: np.ndarray | list[float]) -> dict[int, Box]:
    """Boxes for every slice strictly between two key slices. ``keys``: slice index -> box (at
    least two slices); ``positions``: every slice's position (mm). Returns only the new boxes."""
    pos = np.asarray(positions, dtype=float)
    if len(keys) < 2:
        raise CcrccError("interpolation needs key boxes on at least two slices (the first and the last)")
    if not np.all(np.isfinite(pos)):
        raise CcrccError("interpolation needs the position of every slice (ImagePositionPatient)")
    bad = [k for k in keys if not 0 <= k < len(pos)]
    if bad:
        raise CcrccError(f"key slice {bad[0]} outside the series ({len(pos)} slices)")
    order = sorted(keys, key=lambda k: pos[k])
    corners = np.array([keys[k].as_tuple() for k in order])
    kp = pos[order]
    out = {}
    lo, hi = kp[0], kp[-1]
    for k in range(len(pos)):
        if k in keys or not lo < pos[k] < hi:
            continue
        c = [float(np.interp(pos[k], kp, corners[:, j])) for j in range(4)]
        out[k] = Box.from_corners(*c)
    return out
