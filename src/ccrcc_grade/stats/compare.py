"""Paired comparison of two models on the same patients: DeLong for AUC, McNemar for accuracy.
(`ccrcc-grade compare`, which also loads runs, lives in ``model.evaluate``.)"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ccrcc_grade.core.errors import CcrccError
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


def compare_level(a: list[dict], b: list[dict], key: Callable[[dict], object]) -> dict:
    """Paired tests on the rows both sides share (matched by ``key``); labels must agree."""
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
    pa = np.array([da[k]["prob_high"] for k in common])
    pb = np.array([db[k]["prob_high"] for k in common])
    d = delong_paired_test(y, pa, pb)
    mc = mcnemar((pa >= 0.5) == y, (pb >= 0.5) == y)
    return {
        "n": len(common),
        "auc_a": d["auc_a"],
        "auc_b": d["auc_b"],
        "auc_diff": d["auc_diff"],
        "auc_diff_ci95": d["auc_diff_ci95"],
        "delong_z": d["z"],
        "delong_p": d["p"],
        "delong_estimable": d["estimable"],
        "delong_note": d.get("reason", ""),
        "acc_a": float(np.mean((pa >= 0.5) == y)),
        "acc_b": float(np.mean((pb >= 0.5) == y)),
        "mcnemar_p": mc["p"],
        "mcnemar_discordant": [mc["a_only_correct"], mc["b_only_correct"]],
        "only_in_a": len(set(da) - set(db)),
        "only_in_b": len(set(db) - set(da)),
    }


def compare(a_rows: list[dict], b_rows: list[dict]) -> dict:
    """{"patient": C, "image": C}; image only when both sides are image level and match."""
    out = {"patient": compare_level(patient_level(a_rows), patient_level(b_rows), lambda r: r["patient_id"])}
    if is_image_level(a_rows) and is_image_level(b_rows):
        try:
            out["image"] = compare_level(a_rows, b_rows, _image_key)
        except CcrccError as exc:
            out["image_skipped"] = str(exc)
    return out


def format_comparison(c: dict, name_a: str, name_b: str) -> str:
    lines = [f"A = {name_a}", f"B = {name_b}"]
    for lv in ("patient", "image"):
        if lv in c:
            x = c[lv]
            delong = (
                f"[{x['auc_diff_ci95'][0]:+.3f}, {x['auc_diff_ci95'][1]:+.3f}] DeLong Z {x['delong_z']:.3f} "
                f"p {x['delong_p']:.4f}"
                if x.get("delong_estimable", True)
                else f"DeLong {x['delong_note']}"
            )
            lines.append(
                f"{lv:<8} n={x['n']:<5} AUC A {x['auc_a']:.3f} B {x['auc_b']:.3f} "
                f"diff {x['auc_diff']:+.3f} {delong}; ACC A {x['acc_a']:.3f} "
                f"B {x['acc_b']:.3f} McNemar p {x['mcnemar_p']:.4f}"
            )
            if x["only_in_a"] or x["only_in_b"]:
                lines.append(
                    f"{'':<8} note: only the {x['n']} shared cases are compared ({x['only_in_a']} only in A, "
                    f"{x['only_in_b']} only in B)"
                )
    return "\n".join(lines)
