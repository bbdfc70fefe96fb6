"""Is a box something the model can grade? Checks before a grade, with the reason in words.

A network answers for any crop, so the workstation asks first (hand-written: no library checks
CT boxes against a grading model's training data):

* **hard problems** (the study is "not assessable" until the boxes are redrawn): a box far
  smaller than a renal tumour (longest side < 5 mm), a box that is mostly air (> 30% of its
  pixels below -500 HU) or not soft tissue (mean HU below -50: fat; above 400: bone or metal);
* **warnings** (graded, the result says why it may not apply): the box lies outside the
  paravertebral region where the training boxes lay (its centre relative to the vertebral body,
  which is found as the largest bone component near the body's midline), its mean HU outside
  the training boxes' range, the series' pixel spacing or slice thickness outside the training
  series', and contrast in the aorta that does not match the phase label (the aorta is the
  brightest round soft-tissue structure just anterior to the vertebral body).

The training side is `ingest.anatomy.box_stats` run on every training box at ingest
(``crop_rois``), summarised per phase by `ingest.anatomy.reference` into the ingest report, and carried by every
checkpoint and ONNX export as ``reference`` (shown in the model card).
"""

from __future__ import annotations

import numpy as np

from ccrcc_grade.ingest.anatomy import AIR_HU, aorta_hu, box_stats, spine_centre
from ccrcc_grade.io.boxes import Box

MIN_ASSESSABLE_MM = 5.0  # longest side; renal tumours graded in the study and in KiTS measure >= 1 cm
MAX_AIR = 0.30
SOFT_TISSUE_HU = (-50.0, 400.0)
# the aorta's HU by phase label: plain CT shows unenhanced blood (30-60 HU); every contrast phase
# at least 100 HU in the aorta (excretory ~120, parenchymal ~170, corticomedullary 250-400)
PLAIN_AORTA_MAX, CONTRAST_AORTA_MIN = 110.0, 90.0


def _outside(value: float | None, rng: list[float] | None, margin: float) -> bool:
    return value is not None and rng is not None and not (rng[0] - margin <= value <= rng[1] + margin)


def assess(
    boxes: list[tuple[str, np.ndarray, Box, tuple[float, float] | None]],
    phase: str,
    ref: dict | None,
    geometry: dict | None = None,
) -> dict:
    """Check a patient's boxes (``(name, HU slice, box, spacing)`` each) before grading.
    Returns ``{"assessable", "problems", "warnings", "boxes"}``: problems make the study not
    assessable; warnings go with the grade."""
    problems, warnings, per_box = [], [], []
    lateral_out, hu_out, aortas = [], [], []
    spines: dict[int, tuple | None] = {}
    for name, hu, box, spacing in boxes:
        key = id(hu)
        if key not in spines:
            spines[key] = spine_centre(hu, spacing or (1.0, 1.0))
            if spines[key] is not None and spacing is not None:
                aortas.append(aorta_hu(hu, spacing, spines[key]))
        s = box_stats(hu, box, spacing, spines[key])
        spine = spines[key]  # kept: the workstation's laterality uses the same vertebral body
        per_box.append({"name": name, **s, "spine": None if spine is None else [round(float(v), 1) for v in spine[:2]]})
        longest = max(s["width_mm"], s["height_mm"])
        unit = "mm" if spacing else "pixels"
        if longest < MIN_ASSESSABLE_MM:
            problems.append(
                f"{name}: the box measures {s['width_mm']:g} x {s['height_mm']:g} {unit}, far smaller than a renal "
                f"tumour (graded tumours measure 1 cm or more); redraw it around the tumour or remove it"
            )
        elif s["air"] > MAX_AIR:
            problems.append(
                f"{name}: {s['air']:.0%} of the box is air (below {AIR_HU:g} HU); it does not hold a tumour"
            )
        elif not SOFT_TISSUE_HU[0] <= s["mean_hu"] <= SOFT_TISSUE_HU[1]:
            what = "fat" if s["mean_hu"] < SOFT_TISSUE_HU[0] else "bone, calcification or metal"
            problems.append(f"{name}: mean {s['mean_hu']:g} HU is {what}, not the soft tissue of a renal tumour")
        if ref:
            if _outside(s["lateral_mm"], ref.get("lateral_mm"), 10) or _outside(s["ap_mm"], ref.get("ap_mm"), 15):
                lateral_out.append((name, s))
            if _outside(s["mean_hu"], ref.get("mean_hu"), 20):
                hu_out.append((name, s))
    if ref and lateral_out:
        name, s = lateral_out[0]
        (lo, hi), (ap_lo, ap_hi) = ref["lateral_mm"], ref.get("ap_mm") or (float("nan"), float("nan"))
        warnings.append(
            f"{len(lateral_out)} box(es) lie outside the kidney region of the training boxes ({name}: centre "
            f"{s['lateral_mm']:g} mm beside the vertebral body and {s['ap_mm']:g} mm behind it; training boxes "
            f"{lo:g} to {hi:g} mm beside and {ap_lo:g} to {ap_hi:g} mm behind, negative: in front): check that "
            "the box is on the kidney"
        )
    if ref and hu_out:
        name, s = hu_out[0]
        lo, hi = ref["mean_hu"]
        warnings.append(
            f"{len(hu_out)} box(es) hold attenuation the model never saw ({name}: mean {s['mean_hu']:g} HU; "
            f"training boxes {lo:g} to {hi:g} HU on the {phase} phase)"
        )
    if boxes and not any(spines.values()):
        warnings.append("no vertebral body found on the boxed slices: the kidney region and the aorta were not checked")
    aortas = [a for a in aortas if a is not None]
    if aortas:
        a = float(np.median(aortas))
        if phase == "plain" and a > PLAIN_AORTA_MAX:
            warnings.append(f"the aorta measures {a:.0f} HU: contrast is present, so this may not be the plain phase")
        elif phase != "plain" and a < CONTRAST_AORTA_MIN:
            warnings.append(
                f"the aorta measures {a:.0f} HU: no contrast: this may not be the {phase} phase (or the bolus missed)"
            )
    if ref and geometry:
        for key, label, margin in (
            ("pixel_spacing_mm", "pixel spacing", 0.1),
            ("slice_thickness_mm", "slice thickness", 0.5),
        ):
            if _outside(geometry.get(key), ref.get(key), margin):
                lo, hi = ref[key]
                warnings.append(
                    f"the series' {label} {geometry[key]:g} mm lies outside the training series' ({lo:g}-{hi:g} mm): "
                    "the model has not been shown to work on such scans"
                )
    elif not ref:
        warnings.append(
            "the model records no training reference (trained on exported 8-bit slices, which carry no HU, or made "
            "by an older version): the kidney-region, attenuation and scanner checks were skipped"
        )
    return {"assessable": not problems, "problems": problems, "warnings": warnings, "boxes": per_box}
