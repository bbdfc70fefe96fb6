"""Where a box lies and what it holds, in the patient's anatomy: the vertebral body and the aorta
found on an axial CT slice, and a box's size, attenuation and position relative to the spine.
Computed for every training box at ingest (the reference a model carries) and for every box
before a grade (`model.plausibility`). Hand-written: a few thresholded components on a 4x
downsampled slice, milliseconds per slice; no library finds these without a segmentation model.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ccrcc_grade.io.boxes import Box

AIR_HU = -500.0
STEP = 4  # the anatomy is found on a 4x downsampled slice (a few ms for 512 x 512)


def spine_centre(hu: np.ndarray, spacing: tuple[float, float]) -> tuple[float, float, float] | None:
    """(row, col, radius in mm) of the vertebral body: the largest bone component (> 150 HU on 4x4 block
    means, at least 3 cm^2) within 3 cm of the body's midline and behind its centre; None when there is none."""
    h, w = (hu.shape[0] // STEP) * STEP, (hu.shape[1] // STEP) * STEP
    small = hu[:h, :w].reshape(h // STEP, STEP, w // STEP, STEP).mean(axis=(1, 3))  # block means
    sy, sx = spacing[0] * STEP, spacing[1] * STEP
    body = ndi.binary_fill_holes(small > -300)
    lab, n = ndi.label(body)
    if n == 0:
        return None
    body = lab == 1 + int(np.argmax(ndi.sum(body, lab, range(1, n + 1))))
    rows, cols = np.nonzero(body)
    cy, cx = rows.mean(), cols.mean()
    lab, n = ndi.label(ndi.binary_closing((small > 150) & body, iterations=1))
    best = None
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        rr, cc = np.nonzero(lab[sl] == i)
        area = len(rr) * sy * sx
        r, c = rr.mean() + sl[0].start, cc.mean() + sl[1].start
        if area >= 300 and abs(c - cx) * sx < 30 and r > cy and (best is None or area > best[0]):
            best = (area, r, c)
    if best is None:
        return None
    return (best[1] * STEP + STEP / 2, best[2] * STEP + STEP / 2, float(np.sqrt(best[0] / np.pi)))


def aorta_hu(hu: np.ndarray, spacing: tuple[float, float], spine: tuple[float, float, float]) -> float | None:
    """The aorta's HU: the highest 7 mm median of soft tissue (-50..600 HU, bone excluded) in
    the 6 cm wide region 1-6 cm anterior to the vertebral body's centre, the vertebral body
    itself (its radius + 8 mm) left out."""
    r0 = max(int(spine[0] - 60 / spacing[0]), 0)
    r1 = max(int(spine[0] - 10 / spacing[0]), 0)
    c0 = max(int(spine[1] - 30 / spacing[1]), 0)
    c1 = min(int(spine[1] + 30 / spacing[1]), hu.shape[1])
    region = hu[r0:r1, c0:c1]
    if region.size < 100:
        return None
    k = max(3, int(round(7 / spacing[0])) | 1)
    med = ndi.median_filter(region, size=k)
    rows, cols = np.mgrid[r0:r1, c0:c1]
    vertebra = ((rows - spine[0]) * spacing[0]) ** 2 + ((cols - spine[1]) * spacing[1]) ** 2 <= (spine[2] + 8) ** 2
    bone = ndi.binary_dilation(region > 600, iterations=k) | vertebra
    soft = med[(med > -50) & (med < 600) & ~bone]
    return float(soft.max()) if soft.size else None


def box_stats(
    hu: np.ndarray, box: Box, spacing: tuple[float, float] | None, spine: tuple[float, float] | None = None
) -> dict:
    """What a box holds: size in mm, mean/SD HU, the fractions of air and bone, and its centre
    relative to the vertebral body (mm; x lateral without side, y posterior positive)."""
    x0, y0 = int(np.floor(max(box.x_min, 0))), int(np.floor(max(box.y_min, 0)))
    x1, y1 = int(np.ceil(min(box.x_max, hu.shape[1]))), int(np.ceil(min(box.y_max, hu.shape[0])))
    region = hu[y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)]
    sy, sx = spacing or (1.0, 1.0)
    out = {
        "width_mm": round(float(box.width * sx), 1),
        "height_mm": round(float(box.height * sy), 1),
        "mean_hu": round(float(region.mean()), 1),
        "sd_hu": round(float(region.std()), 1),
        "air": round(float((region < AIR_HU).mean()), 3),
        "bone": round(float((region > 500).mean()), 3),
        "lateral_mm": None,
        "ap_mm": None,
    }
    if spine is not None and spacing is not None:
        cx, cy = (box.x_min + box.x_max) / 2, (box.y_min + box.y_max) / 2
        out["lateral_mm"] = round(float(abs(cx - spine[1]) * sx), 1)
        out["ap_mm"] = round(float((cy - spine[0]) * sy), 1)
    return out


def reference(stats: list[dict], series: list[dict]) -> dict:
    """A phase's training reference from its boxes' stats and its series' geometry: 1st-99th
    percentile ranges (min-max below 50 values) and counts."""

    def span(values: object) -> list[float] | None:
        v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
        if not v.size:
            return None
        lo, hi = np.percentile(v, [1, 99]) if v.size >= 50 else (v.min(), v.max())
        return [round(float(lo), 2), round(float(hi), 2)]

    return {
        "boxes": len(stats),
        "mean_hu": span(s["mean_hu"] for s in stats),
        "lateral_mm": span(s["lateral_mm"] for s in stats),
        "ap_mm": span(s["ap_mm"] for s in stats),
        "pixel_spacing_mm": span(s.get("pixel_spacing") for s in series),
        "slice_thickness_mm": span(s.get("slice_thickness") for s in series),
    }
