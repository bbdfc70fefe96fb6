"""One table of every model on the same test patients: discrimination (AUC with DeLong CI),
classification at each model's validation-chosen threshold (exact CIs), calibration (Brier with
CI, ECE, slope, intercept) and a paired DeLong test against the best single phase, with Holm's
correction across the comparisons (Holm, Scand J Stat 1979)."""

from __future__ import annotations

import math

import numpy as np

from ccrcc_grade.core.config import N_BOOT
from ccrcc_grade.evidence.calibration import calibration_summary
from ccrcc_grade.evidence.scores import ModelScores
from ccrcc_grade.stats.metrics import bootstrap_metrics, delong_paired_test, metric


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted P values (step-down, monotone, capped at 1); NaN stays NaN."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and np.isfinite(p)]
    order = sorted(idx, key=lambda i: pvalues[i])
    m = len(order)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def model_entry(m: ModelScores, labels: dict[str, int], n_boot: int, seed: int) -> dict:
    ids, y, p = m.arrays(labels)
    met = bootstrap_metrics(y, p, ids, m.threshold, n_boot, seed)
    e = {
        "name": m.name,
        "kind": m.kind,
        "description": m.description,
        "n": len(ids),
        "threshold": m.threshold,
        "threshold_source": m.threshold_source,
        "patient": {
            **{k: metric(met, k) for k in ("auc", "accuracy", "sensitivity", "specificity", "brier")},
            **calibration_summary(y, p),
        },
    }
    return e


def compare_models(
    models: list[ModelScores], labels: dict[str, int], reference: str, n_boot: int = N_BOOT, seed: int = 0
) -> list[dict]:
    """The ``models`` list of results.json: one entry per model, each with its DeLong P against
    ``reference`` (the best single phase, chosen on validation) and the Holm-adjusted P."""
    ref = next(m for m in models if m.name == reference)
    entries = []
    for m in models:
        e = model_entry(m, labels, n_boot, seed)
        if m.name == reference:
            e["delong_p_vs_best_phase"] = None
            e["delong_note"] = "the reference (best single phase on validation)"
        else:
            shared = sorted(set(m.test) & set(ref.test))
            y = np.array([labels[i] for i in shared])
            if len(shared) < 2 or len(np.unique(y)) < 2:
                d = {
                    "p": math.nan,
                    "estimable": False,
                    "reason": f"only {len(shared)} shared test patients",
                    "auc_diff": math.nan,
                    "auc_diff_ci95": [math.nan, math.nan],
                }
            else:
                d = delong_paired_test(
                    y, np.array([m.test[i] for i in shared]), np.array([ref.test[i] for i in shared])
                )
            e["delong_p_vs_best_phase"] = d["p"] if d["estimable"] else None
            ci = (
                [max(-1.0, d["auc_diff_ci95"][0]), min(1.0, d["auc_diff_ci95"][1])]
                if d["estimable"]
                else d["auc_diff_ci95"]
            )
            e["auc_diff_vs_best_phase"] = {"value": d["auc_diff"], "ci95": ci, "n": len(shared)}
            e["delong_note"] = d.get("reason", "")
        entries.append(e)
    adj = holm([e["delong_p_vs_best_phase"] if e["delong_p_vs_best_phase"] is not None else math.nan for e in entries])
    for e, a in zip(entries, adj):
        e["delong_p_holm"] = None if math.isnan(a) else a
    return entries
