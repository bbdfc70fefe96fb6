"""`ccrcc-grade agreement A B [C ...]`: how well readers agree on the boxes, and on the grade.

Each argument is one reader's boxes of the same patients: a cohort folder (labelme slices, or
DICOM with its boxes.csv) or a boxes.csv file whose ``file`` column is relative to the CSV's
folder. Boxes are matched by patient, phase and file (the path relative to the reader's root);
only slices every reader boxed enter the ICCs and IoU, and the slice ranges are compared
separately. With ``--model``, every reader's boxes are graded by the model (the images are read
from the first cohort folder among the readers, or from the folder of the first CSV when it is a
cohort) and the decisions compared.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path

import numpy as np

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.fileio import atomic_write_json, refuse_overwriting_inputs
from ccrcc_grade.core.threshold import policy_of
from ccrcc_grade.ingest.cache import crop_rois
from ccrcc_grade.ingest.cohort import Roi
from ccrcc_grade.ingest.layouts import read_cohort
from ccrcc_grade.io.boxes import Box, read_boxes_csv
from ccrcc_grade.stats.agreement import box_measures, icc, iou, prediction_agreement, slice_range_agreement, summary
from ccrcc_grade.stats.metrics import aggregate_patients

MEASURES = ("width", "height", "area", "center_x", "center_y")
Key = tuple[str, str, str]  # patient, phase, file relative to the reader's root


@dataclasses.dataclass
class Reader:
    """One reader's boxes: key -> box; the cohort folder whose images they box, when there is one,
    and its ROIs when this reader was read from it (so the cohort is read once)."""

    name: str
    boxes: dict[Key, Box]
    cohort_root: Path | None
    multiple: int = 0  # slices where this reader drew more than one box (the largest is compared)
    rois: dict[Key, Roi] | None = None


def _keep_largest(boxes: dict[Key, Box], key: Key, box: Box) -> bool:
    old = boxes.get(key)
    if old is None or box.width * box.height > old.width * old.height:
        boxes[key] = box
    return old is not None


def read_reader(path: Path | str, root: Path | None = None) -> Reader:
    """A reader's boxes from a cohort folder or a boxes.csv file (its ``file`` paths relative to
    ``root``, by default the CSV's folder)."""
    path = Path(path)
    boxes: dict[Key, Box] = {}
    multiple = 0
    if path.is_file():
        root = Path(root or path.parent).resolve()
        for r in read_boxes_csv(path, root):
            key = (r["patient_id"], r["phase"], str(Path(r["file"]).relative_to(root)))
            multiple += _keep_largest(boxes, key, r["box"])
        cohort_root = root if (root / "clinical.csv").is_file() else None
        rois = None
    elif path.is_dir():
        rois = {}
        for roi in read_cohort(path).rois:
            key = (roi.patient_id, roi.phase, roi.source)
            multiple += _keep_largest(boxes, key, roi.box)
            rois[key] = roi
        cohort_root = path.resolve()
    else:
        raise CcrccError(f"{path}: reader's boxes not found (give a cohort folder or a boxes.csv file)")
    if not boxes:
        raise CcrccError(f"{path}: no boxes")
    return Reader(str(path), boxes, cohort_root, multiple, rois)


def _spacing(rois: dict[Key, Roi], key: Key) -> tuple[float, float]:
    roi = rois.get(key)
    return roi.spacing if roi is not None and roi.spacing else (1.0, 1.0)


def box_agreement(readers: list[Reader], rois: dict[Key, Roi] | None = None) -> dict:
    """ICCs of box size and position, IoU and slice-range agreement across readers."""
    rois = rois or {}
    shared = sorted(set.intersection(*(set(r.boxes) for r in readers)))
    groups: dict[tuple[str, str], list[set]] = defaultdict(lambda: [set() for _ in readers])
    for i, r in enumerate(readers):
        for pid, phase, f in r.boxes:
            groups[(pid, phase)][i].add(f)
    common_groups = [g for g, sets in groups.items() if all(sets)]
    if not shared:
        raise CcrccError("the readers share no boxed slice (matched by patient, phase and file)")
    ratings = {m: np.zeros((len(shared), len(readers))) for m in MEASURES}
    ious, side_diffs = [], []
    for t, key in enumerate(shared):
        row_mm, col_mm = _spacing(rois, key)
        for j, r in enumerate(readers):
            for m, v in box_measures(r.boxes[key].as_tuple(), row_mm, col_mm).items():
                ratings[m][t, j] = v
        for a, b in zip(readers[:-1], readers[1:]):
            ba, bb = a.boxes[key].as_tuple(), b.boxes[key].as_tuple()
            ious.append(iou(ba, bb))
            # side differences in mm, outward positive for b relative to a (box robustness resamples them)
            side_diffs.extend(
                [(ba[0] - bb[0]) * col_mm, (ba[1] - bb[1]) * row_mm, (bb[2] - ba[2]) * col_mm, (bb[3] - ba[3]) * row_mm]
            )
    ranges = [slice_range_agreement(groups[g]) for g in common_groups]
    return {
        "readers": [r.name for r in readers],
        "n_patients": len({k[0] for k in shared}),
        "n_slices": len(shared),
        "unit": "mm" if any(rois.get(k) is not None and rois[k].spacing for k in shared) else "pixels",
        "icc": {m: icc(ratings[m]) for m in MEASURES},
        "iou": summary(ious),
        "slice_range": {
            "patient_phases": len(common_groups),
            "jaccard": summary([r["jaccard"] for r in ranges]),
            "slices_one_reader_only": int(sum(r["slices_one_reader_only"] for r in ranges)),
            "slices_per_reader": [len(r.boxes) for r in readers],
        },
        "side_differences_mm": summary(side_diffs) | {"values": [round(v, 3) for v in side_diffs]},
        "multiple_boxes_per_slice": [r.multiple for r in readers],
    }


def template_rois(readers: list[Reader]) -> dict[Key, Roi]:
    """The ROIs (how to decode each slice) of the first reader with a cohort folder: those it was
    read with, or - for a CSV lying in a cohort folder - the cohort's, read now."""
    first = next((r for r in readers if r.cohort_root is not None), None)
    if first is None:
        return {}
    if first.rois is not None:
        return first.rois
    return {(r.patient_id, r.phase, r.source): r for r in read_cohort(first.cohort_root).rois}


def reader_predictions(predictor: object, readers: list[Reader], rois: dict[Key, Roi]) -> dict:
    """P(high) per patient for every reader's boxes of the model's phase (slices all readers boxed)."""
    phase = predictor.phase
    keys = sorted(k for k in set.intersection(*(set(r.boxes) for r in readers)) if k[1] == phase or phase == "combined")
    keys = [k for k in keys if k in rois]
    if not keys:
        raise CcrccError(
            f"--model: no slice of the model's phase ({phase}) boxed by every reader with an image to read "
            "(give a cohort folder as one of the readers)"
        )
    agg = (predictor.meta.get("config") or {}).get("patient_aggregate", "mean")
    pids = [k[0] for k in keys]
    per_reader = []
    for r in readers:
        crops = crop_rois(
            [dataclasses.replace(rois[k], box=r.boxes[k]) for k in keys], predictor.preprocess, [], show_progress=False
        )
        ids, _, p = aggregate_patients(pids, predictor(crops), np.zeros(len(keys), int), agg)
        per_reader.append(p)
    return {"patients": ids, "prob_high": np.column_stack(per_reader)}


def agreement(paths: list[str], model: str | None = None, device: str = "auto", root: Path | None = None) -> dict:
    """The ``agreement`` command's result (the JSON contract of the issue). ``root``: the folder
    that the CSVs' file paths are relative to (default: each CSV's own folder)."""
    if len(paths) < 2:
        raise CcrccError("agreement needs the boxes of at least two readers")
    readers = [read_reader(p, root) for p in paths]
    rois = template_rois(readers)
    out = box_agreement(readers, rois)
    if model:
        from ccrcc_grade.model.predict import load_predictor

        predictor = load_predictor(Path(model), device)
        policy, _ = policy_of(predictor.meta)
        pr = reader_predictions(predictor, readers, rois)
        out["prediction"] = prediction_agreement(pr["prob_high"], policy.threshold) | {
            "model": str(model),
            "phase": predictor.phase,
            "per_patient": {pid: [float(v) for v in row] for pid, row in zip(pr["patients"], pr["prob_high"])},
        }
    else:
        out["prediction"] = {"note": "no --model given: the grades of the readers' boxes were not compared"}
    return out


def icc_text(x: dict, interval: str = "[{lo:.3f}, {hi:.3f}]") -> str:
    """'0.984 [0.978, 0.988]' (``interval`` sets how the CI reads), or why there is no value or
    no interval."""
    if x["value"] is None:
        return x["note"]
    if x["ci95"] is None:
        return f"{x['value']:.3f} ({x['ci_note']})"
    return f"{x['value']:.3f} " + interval.format(lo=x["ci95"][0], hi=x["ci95"][1])


def format_agreement(a: dict) -> str:
    lines = [
        f"{len(a['readers'])} readers, {a['n_patients']} patients, {a['n_slices']} slices boxed by all "
        f"(sizes in {a['unit']})",
        f"{'measure':<10}{'ICC(2,1) [95% CI]':>26}{'ICC(3,1) [95% CI]':>26}",
    ]
    for m, e in a["icc"].items():
        cells = [icc_text(e[t]) for t in ("ICC2", "ICC3")]
        lines.append(f"{m:<10}{cells[0]:>26}{cells[1]:>26}")
    i = a["iou"]
    if i["n"]:
        lines.append(f"IoU per slice: mean {i['mean']:.3f} (SD {i['sd']:.3f}, min {i['min']:.3f}, n={i['n']})")
    sr = a["slice_range"]
    if sr["jaccard"]["n"]:
        lines.append(
            f"slice ranges: Jaccard {sr['jaccard']['mean']:.3f} over {sr['patient_phases']} patient-phases; "
            f"{sr['slices_one_reader_only']} slices boxed by one reader only"
        )
    pr = a["prediction"]
    if "icc_prob_high" in pr:
        ic = icc_text(pr["icc_prob_high"]["ICC2"])
        kappa = f"{pr['kappa']:.3f}" if pr["kappa"] is not None else pr.get("kappa_note", "n/a")
        lines.append(
            f"grades ({pr['n_patients']} patients, {pr['phase']}): ICC(2,1) of P(high) {ic}; "
            f"Cohen's kappa {kappa}; decision differs in {100 * pr['flip_rate']:.1f}% of patients"
        )
    else:
        lines.append(pr["note"])
    return "\n".join(lines)


def agreement_command(paths: list[str], model: str | None = None, json_out: str | None = None) -> str:
    refuse_overwriting_inputs([("--json", json_out)], [*paths, model])
    a = agreement(paths, model)
    if json_out:
        atomic_write_json(Path(json_out), a)
    return format_agreement(a)
