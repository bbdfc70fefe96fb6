"""The key image: a Secondary Capture (highdicom ``SCImage``) of the graded slice with the boxes,
the Grad-CAM heat map and the grade burned in, for PACS and viewers that show no SR. Rendered in
the radiological view (patient right on the left, anterior up; ``display_flips``) at the source
slice's pixel spacing, so distances measured on it stay true; "research use only, not for
diagnosis" is written on every key image (BurnedInAnnotation YES)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from ccrcc_grade.ingest.preprocess import window_to_uint8
from ccrcc_grade.io.dicom import display_flips
from ccrcc_grade.serve.provenance import RESEARCH_USE, add_provenance

MIN_SIZE = 512  # smaller slices are enlarged (whole times, pixel spacing adjusted) for legible text
PERSON, PROPOSED = (0, 255, 0), (0, 200, 255)  # a box drawn by a person; one made by the software


def render(
    hu: np.ndarray,
    boxes: list[tuple[float, float, float, float, str]],
    heat_png: Path | None,
    flips: tuple[bool, bool],
    lines: list[str],
    window: tuple[float, float] = (40.0, 290.0),
    scale: int = 1,
) -> np.ndarray:
    """RGB uint8: the slice windowed, the heat layer (an RGBA PNG of the slice's size) blended in,
    enlarged ``scale`` times (small matrices, so the text stays legible), each box outlined
    (green: drawn by a person; cyan: proposed), flipped to the radiological view, and ``lines`` of
    text top left on a dark band."""
    from PIL import Image, ImageDraw, ImageFont

    grey = window_to_uint8(hu, *window)
    img = Image.fromarray(np.stack([grey] * 3, axis=-1))
    if heat_png is not None and heat_png.is_file():
        heat = Image.open(heat_png).convert("RGBA")
        if heat.size == img.size:
            img = Image.alpha_composite(img.convert("RGBA"), heat).convert("RGB")
    if scale > 1:
        img = img.resize((img.size[0] * scale, img.size[1] * scale), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    width = max(1, round(max(img.size) / 256))
    for x0, y0, x1, y1, source in boxes:
        xy = [x0 * scale, y0 * scale, x1 * scale, y1 * scale]
        draw.rectangle(xy, outline=PERSON if source == "person" else PROPOSED, width=width)
    arr = np.asarray(img)
    if flips[0]:
        arr = arr[::-1]
    if flips[1]:
        arr = arr[:, ::-1]
    img = Image.fromarray(np.ascontiguousarray(arr))
    draw = ImageDraw.Draw(img)
    size = max(10, round(img.size[1] / 40))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    pad = max(2, size // 4)
    boxes_text = [draw.textbbox((0, 0), t, font=font) for t in lines]
    band_h = sum(b[3] - b[1] + pad for b in boxes_text) + 2 * pad
    band_w = max((b[2] - b[0] for b in boxes_text), default=0) + 2 * pad
    draw.rectangle([0, 0, min(img.size[0], band_w), min(img.size[1], band_h)], fill=(0, 0, 0))
    y = pad
    for t, b in zip(lines, boxes_text):
        draw.text((pad, y - b[1]), t, fill=(255, 255, 0), font=font)
        y += b[3] - b[1] + pad
    return np.asarray(img)


def build_key_image(
    result: dict,
    source: pydicom.Dataset,
    hu: np.ndarray,
    boxes: list[tuple[float, float, float, float, str]],
    heat_png: Path | None,
    model_name: str,
    weights_sha256: str,
    series_uid: str,
    instance_number: int = 1,
) -> pydicom.Dataset:
    """A Secondary Capture in the source's study (patient and study attributes copied by
    highdicom from ``source``, the graded slice), carrying the IHE AI Results provenance."""
    import highdicom as hd

    p = result.get("prob_high")
    lines = [
        f"ccrcc-grade: {RESEARCH_USE.upper()}",
        f"WHO/ISUP grade: {result['grade']}" + (f"  P(high) = {p:.2f}" if p is not None else ""),
        f"model {model_name}, {result['phase']} phase, {len(result.get('slices', []))} boxed slice(s)",
    ]
    scale = max(1, int(np.ceil(MIN_SIZE / max(hu.shape))))
    rgb = render(hu, boxes, heat_png, display_flips(source), lines, scale=scale)
    try:
        spacing = tuple(float(v) / scale for v in source.PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        spacing = None
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_uid,
        series_number=901,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer="ccrcc-grade",
        pixel_spacing=spacing,
        patient_orientation=("L", "P"),  # the radiological view: rows toward the left, columns toward posterior
    )
    # General Series Laterality (2C: the kidney is a paired organ): the side the boxes lie on, else empty
    sides = {s.get("laterality") for s in result.get("slices", [])}
    sc.Laterality = {"left": "L", "right": "R"}.get(next(iter(sides)), "") if len(sides) == 1 else ""
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = f"{RESEARCH_USE}; grade {result['grade']}"[:10240]
    add_provenance(sc, model_name, weights_sha256, "key image")
    return sc
