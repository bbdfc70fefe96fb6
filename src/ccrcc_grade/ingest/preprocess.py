"""Slice + box -> crop. The ONE preprocessing path shared by ingest, evaluation and prediction.

The study cropped each labelme rectangle from an exported (already windowed) 8-bit slice and
resized it to 224 x 224. For DICOM and NIfTI input we first apply the same abdominal window
(level 40 / width 290 HU by default) so all layouts give the same kind of crop.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ccrcc_grade.core.config import PreprocessConfig
from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.io.boxes import Box


def window_to_uint8(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """Map HU to 0..255 with a linear window [level - width/2, level + width/2]."""
    lo = level - width / 2.0
    scaled = (np.asarray(hu, dtype=np.float32) - lo) * (255.0 / width)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def margin_box(box: Box, margin_mm: float, spacing: tuple[float, float] | None) -> Box:
    """Grow a box by ``margin_mm`` on every side; spacing is (row, col) mm per pixel
    (None for exported slices without spacing: the margin is then read as pixels)."""
    if margin_mm <= 0:
        return box
    row_mm, col_mm = spacing if spacing else (1.0, 1.0)
    return box.expand(margin_mm / col_mm, margin_mm / row_mm)


MIN_INSIDE = 0.5  # a box with less than half its area on the image is refused, not clipped


def crop_box(image: np.ndarray, box: Box, source: str = "", warnings: list[str] | None = None) -> np.ndarray:
    """Cut ``box`` out of a 2-D image, clipping (with a warning) where it leaves the image."""
    h, w = image.shape[:2]
    if not box.inside(w, h):
        clipped = box.clip(w, h)
        if clipped.width < 1 or clipped.height < 1:
            raise CcrccError(f"{source}: box {_fmt(box)} lies outside the {w}x{h} image")
        inside = clipped.width * clipped.height / (box.width * box.height)
        if inside < MIN_INSIDE:  # mostly off the image: a wrong coordinate, not a box to trim
            raise CcrccError(
                f"{source}: box {_fmt(box)} lies mostly outside the {w}x{h} image ({inside:.0%} "
                "inside): an annotation error, not clipped"
            )
        if warnings is not None:
            warnings.append(f"{source}: box {_fmt(box)} extends outside the {w}x{h} image; clipped")
        box = clipped
    x0, y0 = int(np.floor(box.x_min)), int(np.floor(box.y_min))
    x1, y1 = max(x0 + 1, int(np.ceil(box.x_max))), max(y0 + 1, int(np.ceil(box.y_max)))
    return image[y0:y1, x0:x1]


def resize_uint8(crop: np.ndarray, size: int) -> np.ndarray:
    """Resize an 8-bit crop to size x size (bilinear, with antialiasing when shrinking)."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BILINEAR))


def make_crop(
    image: np.ndarray,
    box: Box,
    cfg: PreprocessConfig,
    *,
    is_hu: bool,
    spacing: tuple[float, float] | None = None,
    source: str = "",
    warnings: list[str] | None = None,
    flip: tuple[bool, bool] = (False, False),
) -> np.ndarray:
    """Turn one slice and one tumour box into a ``cfg.size`` square uint8 crop.

    ``image`` is either HU (``is_hu=True``: DICOM/NIfTI, windowed here) or an exported 8-bit
    gray slice (already windowed by the viewer). ``flip`` (rows, cols) turns a crop of a series
    stored in another orientation to the radiological view.
    """
    region = crop_box(image, margin_box(box, cfg.margin_mm, spacing), source, warnings)
    if flip[0]:
        region = region[::-1]
    if flip[1]:
        region = region[:, ::-1]
    if is_hu:
        region = window_to_uint8(region, cfg.window_level, cfg.window_width)
    elif region.dtype != np.uint8:
        raise CcrccError(f"{source}: expected an 8-bit slice, got {region.dtype}")
    return resize_uint8(region, cfg.size)


def _fmt(box: Box) -> str:
    return "(" + ", ".join(f"{v:g}" for v in box.as_tuple()) + ")"
