"""The study report's "Robustness to the box" and "Reader agreement": for every test patient,
P(high) of the best-phase model over K plausible boxes (``model.robustness``), summarised with
percentile bootstrap CIs over patients; with a second reader, the readers' agreement
(``evidence.agreement``) and box shifts resampled from their observed differences."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ccrcc_grade.core.config import BOX_K, N_BOOT
from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.threshold import policy_of
from ccrcc_grade.evidence.agreement import agreement
from ccrcc_grade.ingest.layouts import read_cohort
from ccrcc_grade.model.predict import grade_rois, load_predictor
from ccrcc_grade.model.robustness import box_robustness


def _boot_mean(values: np.ndarray, n_boot: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def robustness_study(
    cohort: Path,
    run: Path,
    test_ids: list[str],
    k: int = BOX_K,
    observed_shifts_mm: np.ndarray | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    device: str = "auto",
) -> dict:
    """Per test patient: P(high) as drawn and over ``k`` plausible boxes; over patients: the mean
    range, SD and flip rate with bootstrap CIs, and the share of patients whose decision flips in
    at least one of the K box sets."""
    predictor = load_predictor(Path(run), device)
    phase = predictor.phase
    rois = [r for r in read_cohort(cohort).rois if r.patient_id in set(test_ids) and r.phase == phase]
    if not rois:
        raise CcrccError(f"{cohort}: no {phase} boxes of the test patients")
    by_patient: dict[str, list] = {}
    for r in rois:
        by_patient.setdefault(r.patient_id, []).append(r)
    policy, _ = policy_of(predictor.meta)
    patients = []
    for pid, prs in sorted(by_patient.items()):
        g = grade_rois(predictor, prs, pid, phase, box_k=0)
        b = box_robustness(predictor, prs, g["prob_high"], policy.threshold, k, seed, observed_shifts_mm)
        patients.append({"patient_id": pid, "prob_high": g["prob_high"], "slices": len(prs), **b})
    rng_ = np.array([p["p_max"] - p["p_min"] for p in patients])
    sd = np.array([p["sd"] for p in patients])
    flip = np.array([p["flip_rate"] for p in patients])
    any_flip = (flip > 0).astype(float)
    return {
        "model": str(run),
        "phase": phase,
        "k": k,
        "method": patients[0]["method"],
        "n_patients": len(patients),
        "seconds_per_patient": float(np.mean([p["seconds"] for p in patients])),
        "range": {"mean": float(rng_.mean()), "ci95": _boot_mean(rng_, n_boot, seed), "max": float(rng_.max())},
        "sd": {"mean": float(sd.mean()), "ci95": _boot_mean(sd, n_boot, seed)},
        "flip_rate": {"mean": float(flip.mean()), "ci95": _boot_mean(flip, n_boot, seed)},
        "patients_with_a_flip": {"share": float(any_flip.mean()), "n": int(any_flip.sum())},
        "bootstrap": {"resamples": n_boot, "unit": "patient"},
        "threshold": policy.threshold,
        "patients": patients,
    }


def reader_study(cohort: Path, second_reader: Path, run: Path, device: str = "auto") -> dict:
    """The readers' agreement for the report (boxes and, with the best-phase model, grades); the
    second reader's CSV names files relative to the cohort folder, as the cohort's boxes.csv does."""
    return agreement([str(cohort), str(second_reader)], str(run), device, root=cohort)
