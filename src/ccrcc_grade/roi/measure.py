"""How good are the proposals: on a cohort with true tumour masks (a NIfTI-layout phantom written
by ``synth --layout nifti``, or any cohort with masks), from one box on the largest tumour slice
of the parenchymal phase - the per-slice IoU with the true boxes (ingest's mask-to-box rule),
the slice range, the walk's time, the propagation's box-centre error before and after
registration, and (with a grading model) P(high) from proposed versus true boxes."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.io.boxes import Box
from ccrcc_grade.model.predict import Predictor
from ccrcc_grade.roi.net import RoiModel, cohort_volumes
from ccrcc_grade.roi.volume import PhaseVolume, read_nifti_mask, read_nifti_volume
from ccrcc_grade.stats.agreement import iou


def true_boxes(vol: PhaseVolume, mask: np.ndarray, margin_mm: float) -> dict[int, Box]:
    """slice -> the largest component's box (ingest's rule) of every slice holding tumour."""
    from ccrcc_grade.io.nifti import mask_boxes

    out = {}
    for k in range(len(mask)):
        if mask[k].any():
            boxes = mask_boxes(mask[k], (margin_mm / vol.spacing[1], margin_mm / vol.spacing[0]))
            out[k] = max(boxes, key=lambda b: b.width * b.height)
    return out


def boxes_centre(vol: PhaseVolume, boxes: dict[int, Box]) -> np.ndarray:
    """The area-weighted centre of a set of boxes in patient coordinates (mm)."""
    pts = [vol.to_patient(k, (b.x_min + b.x_max) / 2, (b.y_min + b.y_max) / 2) for k, b in boxes.items()]
    return np.average(pts, axis=0, weights=[b.width * b.height for b in boxes.values()])


def _grade(predictor: Predictor, vol_path: Path, boxes: dict[int, Box], vol: PhaseVolume, pid: str) -> float:
    from ccrcc_grade.ingest.cohort import Roi
    from ccrcc_grade.model.predict import grade_rois

    rois = [
        Roi(pid, "parenchymal", f"{vol_path.name}#z{k:04d}", b, "nifti", vol_path, slice_index=k, spacing=vol.spacing)
        for k, b in sorted(boxes.items())
    ]
    return float(grade_rois(predictor, rois, pid, "parenchymal", box_k=0)["prob_high"])


def measure_proposals(
    cohort: Path,
    model: RoiModel,
    phase: str = "parenchymal",
    grade_model: str | Path | None = None,
    propagate: bool = True,
) -> dict:
    from ccrcc_grade.roi.propagate import propagate_boxes
    from ccrcc_grade.roi.propose import propose_series

    items = cohort_volumes(cohort)
    by_pid: dict[str, dict[str, tuple[Path, Path]]] = {}
    for pid, ph, v, m in items:
        by_pid.setdefault(pid, {})[ph] = (v, m)
    predictor = None
    if grade_model is not None:
        from ccrcc_grade.model.predict import load_predictor

        predictor = load_predictor(Path(grade_model), "cpu")
    margin = model.cfg.margin_mm
    ious, ranges, secs, per_slice, n_slices, prop, p_diff = [], [], [], [], [], [], []
    patients = []
    for pid, phases in sorted(by_pid.items()):
        if phase not in phases:
            continue
        vpath, mpath = phases[phase]
        vol = read_nifti_volume(vpath, frame_uid=pid)
        truth = true_boxes(vol, read_nifti_mask(mpath, vol), margin)
        if not truth:
            continue
        k0 = max(truth, key=lambda k: truth[k].width * truth[k].height)
        t0 = time.perf_counter()
        res, _ = propose_series(vol, {k0: truth[k0]}, model)
        dt = time.perf_counter() - t0
        secs.append(dt)
        per_slice.append(dt / max(1, len(res) + 2))  # + the two slices where the walk stopped
        n_slices.append(vol.hu.shape[0])
        per = [iou(res[k][0].as_tuple(), truth[k].as_tuple()) if k in res else 0.0 for k in truth]
        per += [0.0 for k in res if k not in truth]  # a box on a slice without tumour counts as a miss
        ious += per
        rng = max(abs(min(res) - min(truth)), abs(max(res) - max(truth)))
        ranges.append(rng)
        row = {
            "patient": pid,
            "true_slices": [min(truth), max(truth)],
            "proposed_slices": [min(res), max(res)],
            "median_iou": round(float(np.median(per)), 3),
            "seconds": round(dt, 3),
        }
        if predictor is not None:
            p_true = _grade(predictor, vpath, truth, vol, pid)
            p_prop = _grade(predictor, vpath, {k: b for k, (b, _) in res.items()}, vol, pid)
            row["p_high_true"], row["p_high_proposed"] = round(p_true, 4), round(p_prop, 4)
            p_diff.append(abs(p_true - p_prop))
        src_boxes = {k: b for k, (b, _) in res.items()}
        for ph, (vp, mp) in sorted(phases.items()):
            if ph == phase or not propagate:
                continue
            dst = read_nifti_volume(vp, frame_uid=pid)
            dtruth = true_boxes(dst, read_nifti_mask(mp, dst), margin)
            if not dtruth:
                continue
            c_true = boxes_centre(dst, dtruth)
            try:
                before, _ = propagate_boxes(src_boxes, vol, dst, register=False)
                after, info = propagate_boxes(src_boxes, vol, dst, register=True)
            except CcrccError as exc:  # counted as a miss, with the reason
                prop.append({"patient": pid, "phase": ph, "before_mm": None, "after_mm": None, "note": str(exc)})
                continue
            e0 = boxes_centre(dst, before) - c_true
            e1 = boxes_centre(dst, after) - c_true
            # what the workstation does next with a model: the registered box on the largest slice
            # seeds a walk on this phase
            k0 = max(after, key=lambda k: after[k].width * after[k].height)
            try:
                walked, _ = propose_series(dst, {k0: after[k0]}, model)
                e2 = boxes_centre(dst, {k: b for k, (b, _) in walked.items()}) - c_true
                walked_mm = round(float(np.linalg.norm(e2[:2])), 2)
            except CcrccError:
                walked_mm = None
            prop.append(
                {
                    "patient": pid,
                    "phase": ph,
                    "before_mm": round(float(np.linalg.norm(e0[:2])), 2),
                    "after_mm": round(float(np.linalg.norm(e1[:2])), 2),
                    "z_before_mm": round(float(e0[2]), 2),
                    "z_after_mm": round(float(e1[2]), 2),
                    "after_walk_mm": walked_mm,
                    "note": info.get("note", ""),
                }
            )
        patients.append(row)
    by_phase = {}
    for ph in sorted({p["phase"] for p in prop}):
        rows = [p for p in prop if p["phase"] == ph]
        ok = [r for r in rows if r["after_mm"] is not None]
        walk = [r for r in ok if r.get("after_walk_mm") is not None]
        by_phase[ph] = {
            "median_before_mm": round(float(np.median([r["before_mm"] for r in ok])), 2) if ok else None,
            "median_after_mm": round(float(np.median([r["after_mm"] for r in ok])), 2) if ok else None,
            "after_within_2mm": f"{sum(r['after_mm'] <= 2 for r in ok)}/{len(rows)}",
            "median_after_walk_mm": round(float(np.median([r["after_walk_mm"] for r in walk])), 2) if walk else None,
            "after_walk_within_2mm": f"{sum(r['after_walk_mm'] <= 2 for r in walk)}/{len(rows)}",
            "failed": len(rows) - len(ok),
        }
    out = {
        "patients": len(patients),
        "median_iou": round(float(np.median(ious)), 3) if ious else None,
        "slice_range_within_1": f"{sum(r <= 1 for r in ranges)}/{len(ranges)}",
        "seconds_per_phase": round(float(np.median(secs)), 3) if secs else None,
        "seconds_per_phase_40_slices": round(float(np.median(per_slice)) * 40, 3) if per_slice else None,
        "slices_median": int(np.median(n_slices)) if n_slices else 0,
        "propagation": by_phase,
        "propagation_rows": prop,
        "per_patient": patients,
    }
    if p_diff:
        out["p_high_within_0_05"] = f"{sum(d <= 0.05 for d in p_diff)}/{len(p_diff)}"
        out["p_high_max_difference"] = round(float(max(p_diff)), 4)
    return out
