"""Boxes of one phase proposed on another: first through patient coordinates (a box corner's
ImagePositionPatient/ImageOrientationPatient/PixelSpacing position mapped to the nearest slice of
the other series), then corrected for breathing and table motion between the acquisitions by a
rigid registration of the two volumes around the tumour (SimpleITK, Mattes mutual information:
the phases differ in contrast, so intensities are not compared directly).

Two series with different FrameOfReferenceUID share no coordinates: the boxes are then placed
by the registration alone (started from the volumes' centres), and the result says so. A
registration that does not converge is reported and never replaces the coordinate mapping
silently: same frame -> coordinates only, with the reason; different frames -> no proposal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.io.boxes import Box
from ccrcc_grade.roi.volume import PhaseVolume

CONTEXTS_MM = (70.0, 15.0)  # coarse (body wall, spine: table motion), then fine (kidney: breathing)
MIN_MUTUAL_INFORMATION = 0.05  # phases of one patient share 0.2-1.1 nats around the kidney; noise ~0.005
MAX_SHIFT_MM = 40.0  # more is not breathing or table motion (two phases each moved ~15 mm: up to 30 mm apart)
HU_RANGE = (-250.0, 500.0)  # air, bone and contrast-filled pelvis clipped: soft tissue drives the metric


class RegistrationFailed(CcrccError):
    """The rigid registration did not converge (the message says why)."""


@dataclass
class Registration:
    translation_mm: np.ndarray  # (3,) moving - fixed, LPS mm, at the boxes' centre
    transform: object  # SimpleITK transform: fixed (source) point -> moving (target) point
    metric_before: float  # Mattes MI at the start (negative: lower is more shared structure)
    metric_after: float

    def apply(self, p: np.ndarray) -> np.ndarray:
        return np.asarray(self.transform.TransformPoint(tuple(float(v) for v in p)))


def _sitk(vol: PhaseVolume):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.clip(vol.hu, *HU_RANGE).astype(np.float32))  # (z, y, x) -> x, y, z
    img.SetSpacing((vol.spacing[1], vol.spacing[0], vol.gap))
    img.SetOrigin(tuple(float(v) for v in vol.origin[0]))
    d = np.stack([vol.row_dir, vol.col_dir, vol.normal], axis=1)  # columns: the image axes
    img.SetDirection(tuple(float(v) for v in d.ravel()))
    return img


def boxes_region(vol: PhaseVolume, boxes: dict[int, Box], context_mm: float) -> tuple[slice, ...]:
    """(z, y, x) index ranges around the boxes plus ``context_mm`` in-plane and 2 slices each way."""
    ks = sorted(boxes)
    x0 = min(b.x_min for b in boxes.values()) - context_mm / vol.spacing[1]
    x1 = max(b.x_max for b in boxes.values()) + context_mm / vol.spacing[1]
    y0 = min(b.y_min for b in boxes.values()) - context_mm / vol.spacing[0]
    y1 = max(b.y_max for b in boxes.values()) + context_mm / vol.spacing[0]
    nz, ny, nx = vol.hu.shape
    return (
        slice(max(0, ks[0] - 2), min(nz, ks[-1] + 3)),
        slice(max(0, int(y0)), min(ny, int(np.ceil(y1)))),
        slice(max(0, int(x0)), min(nx, int(np.ceil(x1)))),
    )


def _method(seed: int, thin: bool = False):
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.REGULAR)
    reg.SetMetricSamplingPercentage(0.5, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=0.02, numberOfIterations=150, relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    # a thin volume (a few slices around the tumour) is not shrunk: halving 8 slices leaves too
    # little along z for the samples to stay inside the other phase
    reg.SetShrinkFactorsPerLevel([1, 1] if thin else [2, 1])
    reg.SetSmoothingSigmasPerLevel([2.0, 0.5])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return reg


def register_phases(
    src: PhaseVolume, dst: PhaseVolume, boxes: dict[int, Box], seed: int = 0, same_frame: bool | None = None
) -> Registration:
    """Rigid (Euler 3-D) registration of ``src`` around ``boxes`` to ``dst``: the transform maps a
    point of the source phase to the same anatomy in the target phase."""
    import SimpleITK as sitk

    if not boxes:
        raise CcrccError("registration needs at least one box on the source phase")
    if same_frame is None:
        same_frame = bool(src.frame_uid) and src.frame_uid == dst.frame_uid
    fixed_full = _sitk(src)
    moving = _sitk(dst)
    centre = np.mean(
        [src.to_patient(k, (b.x_min + b.x_max) / 2, (b.y_min + b.y_max) / 2) for k, b in boxes.items()], axis=0
    )
    init = sitk.Euler3DTransform()
    init.SetCenter(tuple(float(v) for v in centre))
    if not same_frame:  # no shared coordinates: start from the volumes' centres
        geo = sitk.CenteredTransformInitializer(
            fixed_full, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
        )
        init.SetTranslation(geo.GetTranslation())
    start_translation = init.GetTranslation()
    # two stages: the body around the tumour (spine, body wall, kidney: table motion), then the
    # kidney around the tumour (its own breathing motion), each started where the last ended
    for stage, context in enumerate(CONTEXTS_MM):
        zs, ys, xs = boxes_region(src, boxes, context)
        fixed = fixed_full[xs, ys, zs]  # SimpleITK slices (x, y, z) and keeps the physical origin
        reg = _method(seed, thin=min(src.hu.shape[0], dst.hu.shape[0]) < 16)
        start = sitk.TranslationTransform(3, init.GetTranslation())
        if stage == 0:  # the body in-plane first: along z only the tumour itself tells the phases apart
            reg.SetOptimizerWeights([1.0, 1.0, 0.0])
        reg.SetInitialTransform(start, inPlace=False)
        try:
            out = reg.Execute(fixed, moving)
        except RuntimeError as exc:
            raise RegistrationFailed(
                f"registration of {dst.name} to {src.name} did not converge (SimpleITK: "
                f"{str(exc).strip().splitlines()[-1][:120]})"
            ) from None
        tx = out.GetNthTransform(0) if hasattr(out, "GetNthTransform") else out
        nxt = sitk.Euler3DTransform()
        nxt.SetCenter(tuple(float(v) for v in centre))
        nxt.SetTranslation(tuple(np.asarray(tx.TransformPoint(tuple(centre))) - centre))
        init = nxt
    tx = init
    after = reg.GetMetricValue()
    check = _method(seed)  # the similarity at the start, on the last stage's region (MetricEvaluate: no pyramid)
    check.SetInitialTransform(sitk.TranslationTransform(3, start_translation))
    before = check.MetricEvaluate(fixed, moving)
    moved = np.asarray(tx.TransformPoint(tuple(float(v) for v in centre))) - centre
    result = Registration(moved, tx, float(before), float(after))
    if not np.all(np.isfinite(moved)) or not np.isfinite(after):
        raise RegistrationFailed(f"registration of {dst.name} did not converge (no finite result)")
    if same_frame and np.linalg.norm(moved) > MAX_SHIFT_MM:
        raise RegistrationFailed(
            f"registration of {dst.name} did not converge: it moved the tumour {np.linalg.norm(moved):.0f} mm "
            f"(more than {MAX_SHIFT_MM:.0f} mm of breathing or table motion)"
        )
    if after > -MIN_MUTUAL_INFORMATION:
        raise RegistrationFailed(
            f"registration of {dst.name} did not converge: the two volumes share no structure around the tumour "
            f"(mutual information {-after:.3f}, below {MIN_MUTUAL_INFORMATION})"
        )
    if after > before + 1e-4:  # Mattes MI is negative: lower is better
        raise RegistrationFailed(
            f"registration of {dst.name} did not converge (similarity {after:.3f} worse than at the start {before:.3f})"
        )
    return result


def map_box(box: Box, k: int, src: PhaseVolume, dst: PhaseVolume, reg: Registration | None = None) -> tuple[int, Box]:
    """A box on slice ``k`` of ``src`` -> (nearest slice, box) on ``dst``: the box's centre and
    size in mm carried through patient coordinates (and the registration, when given)."""
    cx, cy = (box.x_min + box.x_max) / 2, (box.y_min + box.y_max) / 2
    p = src.to_patient(k, cx, cy)
    if reg is not None:
        p = reg.apply(p)
    kk, x, y = dst.to_pixel(p)
    w = box.width * src.spacing[1] / dst.spacing[1]
    h = box.height * src.spacing[0] / dst.spacing[0]
    return int(round(kk)), Box(x - w / 2, y - h / 2, x + w / 2, y + h / 2)


def propagate_boxes(
    boxes: dict[int, Box], src: PhaseVolume, dst: PhaseVolume, register: bool = True, seed: int = 0
) -> tuple[dict[int, Box], dict]:
    """``boxes`` (slice -> box) of ``src`` proposed on ``dst``. Returns (slice -> box, info) where
    info says how the boxes were placed: ``method``, ``moved_mm`` (the registration's correction
    at the tumour, [x, y, z] and its length), and ``note`` when something was not as asked."""
    same = bool(src.frame_uid) and src.frame_uid == dst.frame_uid
    info: dict = {"same_frame_of_reference": same, "method": "patient coordinates", "moved_mm": None, "note": ""}
    reg = None
    if register:
        try:
            reg = register_phases(src, dst, boxes, seed=seed, same_frame=same)
        except RegistrationFailed as exc:
            if not same:
                raise RegistrationFailed(
                    f"{dst.name}: another FrameOfReferenceUID than {src.name} and {exc}; no proposal"
                ) from None
            info["note"] = f"{exc}; boxes placed by patient coordinates only"
        if reg is not None:
            info["method"] = "patient coordinates + rigid registration" if same else "rigid registration only"
            info["moved_mm"] = [round(float(v), 2) for v in reg.translation_mm] + [
                round(float(np.linalg.norm(reg.translation_mm)), 2)
            ]
    elif not same:
        raise CcrccError(f"{dst.name}: another FrameOfReferenceUID than {src.name}; only registration can place boxes")
    if not same and reg is not None:
        info["note"] = "different FrameOfReferenceUID: placed by registration only"
    nz, ny, nx = dst.hu.shape
    out: dict[int, Box] = {}
    for k, b in sorted(boxes.items()):
        kk, nb = map_box(b, k, src, dst, reg)
        if not 0 <= kk < nz:
            continue
        nb = nb.clip(nx, ny)
        if nb.width < 1 or nb.height < 1:
            continue
        if kk in out:  # two source slices on one target slice (thinner source slices): keep the larger
            o = out[kk]
            if o.width * o.height >= nb.width * nb.height:
                continue
        out[kk] = nb
    if not out:
        raise CcrccError(f"{dst.name}: the boxes map outside this series (no slice at the tumour's position)")
    return out, info
