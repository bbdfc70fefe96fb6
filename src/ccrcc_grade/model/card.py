"""The model card: what a clinician should know about a trained model, from its checkpoint (or
ONNX metadata) and its run folder. Shown by the workstation and written beside exported models."""

from __future__ import annotations

import json
from pathlib import Path

from ccrcc_grade.core.paths import RunDir
from ccrcc_grade.core.threshold import policy_of
from ccrcc_grade.stats.metrics import metric

INTENDED_USE = (
    "Estimates the probability that a clear cell renal cell carcinoma is WHO/ISUP high grade (III-IV) "
    "from tumour boxes drawn on one contrast phase of a preoperative CT, to support (not replace) the "
    "assessment of a radiologist or urologist. Not validated for other tumour types, other modalities "
    "or paediatric patients."
)
DISCLAIMER = "research software, not a medical device"


def _metric(m: dict | None, level: str = "patient") -> dict | None:
    if not m or level not in m:
        return None
    auc = metric(m[level], "auc")
    return {"auc": auc["value"], "ci95": auc["ci95"], "n": m[level].get("n")}


def model_card(path: Path, meta: dict) -> dict:
    """What a clinician should know about a model, from its checkpoint and its run folder."""
    run = Path(path).parent
    splits = meta.get("splits") or {}
    test_metrics = RunDir(run).metrics("test")
    test = json.loads(test_metrics.read_text()) if test_metrics.is_file() else None
    val = meta.get("val") or {}
    policy, _ = policy_of(meta)
    return {
        "architecture": meta.get("model"),
        "phase": meta.get("phase"),
        "trained": meta.get("created"),
        "package_version": meta.get("package_version"),
        "weights_sha256": meta.get("weights_sha256"),
        "epoch": meta.get("epoch"),
        "data": {
            "train_patients": len(splits.get("train", [])),
            "validation_patients": len(splits.get("val", [])),
            "test_patients": len(splits.get("test", [])),
        },
        "validation": {"patient_auc": val.get("val_auc"), "image_auc": val.get("val_image_auc")},
        "test": _metric(test),
        "threshold": policy.to_dict(),
        "reference": meta.get("reference"),  # the training boxes and scanners (plausibility checks)
        "recalibration": meta.get("recalibration"),  # a site's update: which site, patients, method
        "federated": meta.get("federated"),
        "intended_use": INTENDED_USE,
        "disclaimer": DISCLAIMER,
    }


def trust_statement(card: dict) -> dict:
    """How far to trust the model, in words, from its card's test result: the patient AUC with
    its 95% CI and n, and ``warning`` (a red banner on the page and report) when that CI
    includes 0.5 or there is no test result: the model has not shown that it separates low from
    high grade."""
    t = card.get("test") or {}
    auc, ci, n = t.get("auc"), t.get("ci95"), t.get("n")
    if auc is None or not ci or ci[0] is None or ci[1] is None:
        return {
            "auc": auc,
            "ci95": ci,
            "n": n,
            "text": "This model has no test result with a confidence interval: how well it grades is unknown.",
            "warning": "this model has not shown that it separates low from high grade (no test result)",
        }
    text = (
        f"On {n} test patients the model ranked a random high-grade patient above a random low-grade one "
        f"{auc:.0%} of the time (patient AUC {auc:.2f}, 95% CI {ci[0]:.2f}-{ci[1]:.2f}; 0.5 is chance)."
    )
    warning = None
    if ci[0] <= 0.5:
        warning = (
            f"this model has not shown that it separates low from high grade: its test AUC's 95% CI "
            f"({ci[0]:.2f}-{ci[1]:.2f}) includes 0.5, chance"
        )
    return {"auc": auc, "ci95": ci, "n": n, "text": text, "warning": warning}
