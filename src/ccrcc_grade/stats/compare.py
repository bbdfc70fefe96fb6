"""Paired comparison of two models on the same patients: DeLong for AUC, McNemar for accuracy,
and at image level their clustered versions (``stats.clustered``).
(`ccrcc-grade compare`, which also loads runs, lives in ``model.evaluate``.)"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.stats.clustered import cluster_bootstrap_auc_diff, clustered_auc_test, clustered_mcnemar
from ccrcc_grade.stats.format import format_p, signed
from ccrcc_grade.stats.metrics import delong_paired_test, mcnemar
from ccrcc_grade.stats.predictions import is_image_level, patient_level


def _image_key(r: dict) -> tuple:
    return (
        r["patient_id"],
        r.get("phase", ""),
        r.get("source", ""),
        *(str(r.get(k, "")) for k in ("x_min", "y_min", "x_max", "y_max")),
    )


MIN_SHARED = 0.5  # below half of the cases shared, two prediction sets are not the same patients

PATIENT_UNIT = "patient (one probability per patient; patients independent)"
IMAGE_UNIT = "image (slices clustered within patients)"


def _shared(a: list[dict], b: list[dict], key: Callable[[dict], object]) -> tuple[dict, dict, list]:
    """Both sides keyed, the keys they share (checked: each case once, enough shared, labels agree)."""
    da = {key(r): r for r in a}
    db = {key(r): r for r in b}
    if len(da) != len(a) or len(db) != len(b):
        raise CcrccError("a prediction set lists the same case twice; each case must appear once")
    common = sorted(set(da) & set(db))
    union = len(set(da) | set(db))
    if len(common) < 2 or len(common) < MIN_SHARED * union:
        raise CcrccError(
            f"the two prediction sets share only {len(common)} of {union} cases; compare needs (nearly) "
            f"the same patients (at least {MIN_SHARED:.0%} shared)"
        )
    y = np.array([da[k]["label"] for k in common])
    if np.any(y != np.array([db[k]["label"] for k in common])):
        raise CcrccError("the two prediction sets disagree on the true labels of shared cases")
    if len(np.unique(y)) < 2:
        raise CcrccError("the shared cases hold only one class; AUCs cannot be compared")
    return da, db, common


def compare_level(a: list[dict], b: list[dict], key: Callable[[dict], object], clustered: bool = False) -> dict:
    """Paired tests on the rows both sides share (matched by ``key``); labels must agree.

    ``clustered`` (image level): the rows are slices of patients, so the AUC test is Obuchowski's
    clustered DeLong, the difference's CI a patient-cluster bootstrap and the accuracy test
    Durkalski's clustered McNemar; otherwise (one row per patient) DeLong and the exact McNemar."""
    da, db, common = _shared(a, b, key)
    y = np.array([da[k]["label"] for k in common])
    pa = np.array([da[k]["prob_high"] for k in common])
    pb = np.array([db[k]["prob_high"] for k in common])
    ca, cb = (pa >= 0.5) == y, (pb >= 0.5) == y
    out: dict = {"unit": IMAGE_UNIT if clustered else PATIENT_UNIT, "n": len(common)}
    if clustered:
        pids = [da[k]["patient_id"] for k in common]
        out["n_patients"] = len(set(pids))
        d = clustered_auc_test(y, pa, pb, pids)
        ci_method = "Obuchowski"  # the interval of the test's own variance, so it agrees with its P
        boot = cluster_bootstrap_auc_diff(y, pa, pb, pids)
        out["auc_diff_bootstrap_ci95"] = boot["ci95"]
        out["bootstrap"] = {k: boot[k] for k in ("method", "resamples", "resamples_used", "seed")}
        mc = clustered_mcnemar(ca, cb, pids)
    else:
        out["n_patients"] = len(common)
        d = delong_paired_test(y, pa, pb) | {"test": "DeLong paired"}
        ci_method = "DeLong"
        mc = mcnemar(ca, cb) | {"test": "McNemar exact (binomial)"}
    return out | {
        "auc_a": d["auc_a"],
        "auc_b": d["auc_b"],
        "auc_diff": d["auc_diff"],
        "auc_diff_ci95": d["auc_diff_ci95"] if d["estimable"] else [math.nan, math.nan],
        "auc_diff_ci_method": ci_method if d["estimable"] else "none",
        "auc_test": d["test"],
        "auc_z": d["z"],
        "auc_p": d["p"],
        "auc_estimable": d["estimable"],
        "auc_note": d.get("reason", ""),
        "acc_a": float(np.mean(ca)),
        "acc_b": float(np.mean(cb)),
        "accuracy_test": mc["test"],
        "accuracy_p": mc["p"],
        "accuracy_discordant": [mc["a_only_correct"], mc["b_only_correct"]],
        "only_in_a": len(set(da) - set(common)),
        "only_in_b": len(set(db) - set(common)),
    }


def compare(a_rows: list[dict], b_rows: list[dict]) -> dict:
    """{"patient": C, "image": C}; image only when both sides are image level and match. The
    patient level is primary; the image level holds only tests valid for clustered slices."""
    out = {"patient": compare_level(patient_level(a_rows), patient_level(b_rows), lambda r: r["patient_id"])}
    if is_image_level(a_rows) and is_image_level(b_rows):
        try:
            out["image"] = compare_level(a_rows, b_rows, _image_key, clustered=True)
        except CcrccError as exc:
            out["image_skipped"] = str(exc)
    return out


def format_comparison(c: dict, name_a: str, name_b: str) -> str:
    lines = [f"A = {name_a}", f"B = {name_b}"]
    for lv in ("patient", "image"):
        if lv not in c:
            continue
        x = c[lv]
        if x["auc_estimable"]:
            lo, hi = x["auc_diff_ci95"]
            auc = f"[{signed(lo)}, {signed(hi)}] ({x['auc_diff_ci_method']}"
            if "auc_diff_bootstrap_ci95" in x:
                blo, bhi = x["auc_diff_bootstrap_ci95"]
                auc += f"; patient-cluster bootstrap [{signed(blo)}, {signed(bhi)}]"
            auc += f"); {x['auc_test']} P {format_p(x['auc_p'])}"
        else:
            auc = f"{x['auc_test']} {x['auc_note']}"
        n = f"n={x['n']}" + (f" slices of {x['n_patients']} patients" if lv == "image" else " patients")
        lines.append(
            f"{lv:<8} {n}: AUC A {x['auc_a']:.3f} B {x['auc_b']:.3f} diff {signed(x['auc_diff'])} {auc}; "
            f"ACC A {x['acc_a']:.3f} B {x['acc_b']:.3f}, {x['accuracy_test']} P {format_p(x['accuracy_p'])}"
        )
        if x["only_in_a"] or x["only_in_b"]:
            lines.append(
                f"{'':<8} note: only the {x['n']} shared cases are compared ({x['only_in_a']} only in A, "
                f"{x['only_in_b']} only in B)"
            )
    if "image" in c:
        lines.append("The patient level is primary; image-level tests treat each patient's slices as one cluster.")
    return "\n".join(lines)
