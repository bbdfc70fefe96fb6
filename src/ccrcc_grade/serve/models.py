"""The models a workstation serves: each loaded once per process (through `predict`'s loader, so
the server and the command line run the same network the same way), with its model card."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

from ..errors import CcrccError
from ..predict import load_predictor
from ..threshold import policy_of

INTENDED_USE = ("Estimates the probability that a clear cell renal cell carcinoma is WHO/ISUP high grade (III-IV) "
                "from tumour boxes drawn on one contrast phase of a preoperative CT, to support (not replace) the "
                "assessment of a radiologist or urologist. Not validated for other tumour types, other modalities "
                "or paediatric patients.")
DISCLAIMER = "research software, not a medical device"


def _metric(m: dict | None, level: str = "patient") -> dict | None:
    if not m or level not in m:
        return None
    auc = m[level]["high"]["auc"]
    return {"auc": auc["value"], "ci95": auc["ci95"], "n": m[level].get("n")}


def model_card(path: Path, meta: dict) -> dict:
    """What a clinician should know about a model, from its checkpoint and its run folder."""
    run = Path(path).parent
    splits = meta.get("splits") or {}
    test_metrics = run / "eval-test" / "metrics.json"
    test = json.loads(test_metrics.read_text()) if test_metrics.is_file() else None
    val = meta.get("val") or {}
    policy, _ = policy_of(meta)
    return {"architecture": meta.get("model"), "phase": meta.get("phase"), "trained": meta.get("created"),
            "package_version": meta.get("package_version"), "epoch": meta.get("epoch"),
            "data": {"train_patients": len(splits.get("train", [])), "validation_patients": len(splits.get("val", [])),
                     "test_patients": len(splits.get("test", []))},
            "validation": {"patient_auc": val.get("val_auc"), "image_auc": val.get("val_image_auc")},
            "test": _metric(test),
            "threshold": policy.to_dict(), "intended_use": INTENDED_USE, "disclaimer": DISCLAIMER}


class ModelRegistry:
    """id -> (predictor, card). Ids come from the run folder name (``resnet34-parenchymal``)."""

    def __init__(self, paths: list[str | Path], device: str = "auto"):
        self.models: dict[str, dict] = {}
        self.lock = threading.Lock()
        for p in paths:
            path = Path(p)
            if path.is_dir():
                path = path / "best.pt"
            predictor = load_predictor(path, device)
            meta = predictor[1]
            base = re.sub(r"[^A-Za-z0-9._-]", "_", path.parent.name if path.suffix == ".pt" else path.stem)
            mid, k = base, 2
            while mid in self.models:
                mid, k = f"{base}-{k}", k + 1
            self.models[mid] = {"id": mid, "path": path, "predictor": predictor, "card": model_card(path, meta)}
        if not self.models:
            raise CcrccError("serve needs at least one model (--models RUN/best.pt ...)")

    def get(self, model_id: str | None) -> dict:
        if model_id is None and len(self.models) == 1:
            return next(iter(self.models.values()))
        if model_id not in self.models:
            from .store import NotFound

            raise NotFound(f"model {model_id!r} not loaded (loaded: {', '.join(self.models)})")
        return self.models[model_id]

    def listing(self) -> list[dict]:
        return [{"id": m["id"], "model": m["card"]["architecture"], "phase": m["card"]["phase"],
                 "threshold": m["card"]["threshold"]["threshold"], "card": m["card"]} for m in self.models.values()]
