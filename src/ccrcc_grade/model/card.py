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
        "intended_use": INTENDED_USE,
        "disclaimer": DISCLAIMER,
    }
