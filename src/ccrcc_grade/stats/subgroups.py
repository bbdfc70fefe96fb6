"""Performance by centre, scanner, slice thickness and tumour size, and its heterogeneity.

Reporting standards for models used across sites (TRIPOD+AI item 23a, CLAIM 2024 item 39,
PROBAST+AI) ask for discrimination and calibration in each setting, not one pooled number: between
hospitals an AUC typically moves by about 0.1 and calibration drifts. ``subgroup_metrics`` gives,
for every value of a patient attribute, the usual patient-level metrics block
(``metrics.bootstrap_metrics``: AUC with DeLong CI, accuracy, ... with their CIs and
``n_patients``) plus calibration intercept, slope, O/E and ECE (``calibration.calibration_with_ci``),
or ``{"estimable": false, "reason"}`` for a group with fewer than ``MIN_PER_GRADE`` patients of a
grade. ``heterogeneity`` tests whether the AUC differs between groups: Cochran's Q on the groups'
AUCs weighted by their inverse DeLong variances, with I^2 (Higgins & Thompson, Stat Med 2002),
the usual meta-analytic summary of between-site heterogeneity.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from ccrcc_grade.core.config import N_BOOT
from ccrcc_grade.core.threshold import DEFAULT_THRESHOLD
from ccrcc_grade.stats.calibration import calibration_with_ci
from ccrcc_grade.stats.metrics import bootstrap_metrics, delong

SUBGROUPS = ("center", "manufacturer", "slice_thickness", "tumor_size")
MIN_PER_GRADE = 2  # below this, an AUC rests on one patient of a grade: reported as not estimable
UNKNOWN = "unknown"


def tumor_size_band(cm: float | None) -> str:
    """The size bands of renal tumour staging: T1a <= 4 cm, T1b 4-7 cm, T2+ > 7 cm."""
    if cm is None:
        return UNKNOWN
    return "<=4 cm" if cm <= 4 else "4-7 cm" if cm <= 7 else ">7 cm"


def slice_thickness_band(mm: float | None) -> str:
    """Thin (<= 1.5 mm, volumetric), intermediate (1.5-3 mm) or thick (> 3 mm, the study's 5 mm)."""
    if mm is None:
        return UNKNOWN
    return "<=1.5 mm" if mm <= 1.5 else "1.5-3 mm" if mm <= 3 else ">3 mm"


def patient_groups(attributes: dict[str, dict], patients: list[str]) -> dict[str, dict[str, str]]:
    """subgroup -> patient -> group name, from ``ingest.acquisition.patient_attributes``; a
    patient without the attribute is in the group 'unknown'."""
    out: dict[str, dict[str, str]] = {k: {} for k in SUBGROUPS}
    for pid in patients:
        a = attributes.get(pid, {})
        out["center"][pid] = a.get("center") or UNKNOWN
        out["manufacturer"][pid] = a.get("manufacturer") or UNKNOWN
        out["slice_thickness"][pid] = slice_thickness_band(a.get("slice_thickness_mm"))
        out["tumor_size"][pid] = tumor_size_band(a.get("tumor_size_cm"))
    return out


def group_block(
    y: np.ndarray,
    p: np.ndarray,
    ids: list[str],
    threshold: float = DEFAULT_THRESHOLD,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict:
    """The metrics block of one group of patients (one row per patient), or why there is none."""
    n_high, n_low = int(np.sum(y == 1)), int(np.sum(y == 0))
    if min(n_high, n_low) < MIN_PER_GRADE:
        return {
            "estimable": False,
            "reason": f"{n_high} high- and {n_low} low-grade patients; an estimate needs >= {MIN_PER_GRADE} of each",
            "n_patients": int(len(y)),
            "n_high": n_high,
        }
    block = bootstrap_metrics(y, p, ids, threshold, n_boot, seed)
    block["estimable"] = True
    block["n_high"] = n_high
    block["calibration"] = calibration_with_ci(y, p)
    return block


def subgroup_metrics(
    rows: list[dict],
    attributes: dict[str, dict],
    threshold: float = DEFAULT_THRESHOLD,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict:
    """``{"center": {"<name>": M}, "manufacturer": ..., "slice_thickness": ..., "tumor_size": ...}``
    from patient-level prediction rows (patient_id, label, prob_high)."""
    ids = [r["patient_id"] for r in rows]
    y = np.array([int(r["label"]) for r in rows])
    p = np.array([float(r["prob_high"]) for r in rows])
    groups = patient_groups(attributes, ids)
    out: dict = {}
    for name in SUBGROUPS:
        members: dict[str, list[int]] = {}
        for i, pid in enumerate(ids):
            members.setdefault(groups[name][pid], []).append(i)
        out[name] = {
            g: group_block(y[idx], p[idx], [ids[i] for i in idx], threshold, n_boot, seed)
            for g, idx in sorted(members.items())
        }
    return out


def heterogeneity(rows: list[dict], groups: dict[str, str]) -> dict:
    """Cochran's Q test of equal AUCs across groups (patient -> group) and I^2; groups with fewer
    than 3 patients of a grade (no DeLong variance) or a degenerate AUC are left out and named."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        g = groups.get(r["patient_id"], UNKNOWN)
        if g != UNKNOWN:
            by.setdefault(g, []).append(r)
    used, left_out, aucs, vars_ = [], {}, [], []
    for g, rs in sorted(by.items()):
        y = np.array([int(r["label"]) for r in rs])
        p = np.array([float(r["prob_high"]) for r in rs])
        n_high, n_low = int(np.sum(y == 1)), int(np.sum(y == 0))
        if min(n_high, n_low) < 3:
            left_out[g] = f"{n_high} high- and {n_low} low-grade patients (a DeLong variance needs >= 3 of each)"
            continue
        auc, cov = delong(y, p)
        if not cov[0, 0] > 0:
            left_out[g] = f"AUC {float(auc[0]):.3f} with zero variance (the grades are separated)"
            continue
        used.append(g)
        aucs.append(float(auc[0]))
        vars_.append(float(cov[0, 0]))
    out: dict = {
        "test": "Cochran's Q on the groups' AUCs (inverse DeLong variance weights), I^2",
        "groups_used": used,
        "groups_left_out": left_out,
    }
    if len(used) < 2:
        out.update(estimable=False, reason=f"{len(used)} group(s) with an AUC variance; the test needs >= 2")
        return out
    a, w = np.array(aucs), 1 / np.array(vars_)
    pooled = float(np.sum(w * a) / np.sum(w))
    q = float(np.sum(w * (a - pooled) ** 2))
    df = len(used) - 1
    out.update(
        estimable=True,
        q=q,
        df=df,
        p=float(stats.chi2.sf(q, df)),
        i2=max(0.0, (q - df) / q) if q > 0 else 0.0,
        pooled_auc=pooled,
        pooled_auc_ci95=[pooled - 1.96 / math.sqrt(np.sum(w)), pooled + 1.96 / math.sqrt(np.sum(w))],
    )
    return out
