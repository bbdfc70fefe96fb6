"""The models a workstation serves: each loaded once per process (through `predict`'s loader, so
the server and the command line run the same network the same way), with its model card."""

from __future__ import annotations

import re
import threading
from pathlib import Path

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.model.card import model_card
from ccrcc_grade.model.predict import load_predictor
from ccrcc_grade.serve.errors import NotFound


class ModelRegistry:
    """id -> (predictor, card). Ids come from the run folder name (``resnet34-parenchymal``)."""

    def __init__(self, paths: list[str | Path], device: str = "auto"):
        self.models: dict[str, dict] = {}
        self.lock = threading.Lock()
        for p in paths:
            predictor = load_predictor(Path(p), device)  # a run folder resolves to its best.pt there
            meta = predictor.meta
            path = Path(meta["path"])
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
            raise NotFound(f"model {model_id!r} not loaded (loaded: {', '.join(self.models)})")
        return self.models[model_id]

    def listing(self) -> list[dict]:
        return [
            {
                "id": m["id"],
                "model": m["card"]["architecture"],
                "phase": m["card"]["phase"],
                "threshold": m["card"]["threshold"]["threshold"],
                "card": m["card"],
                "backend": m["predictor"].backend,
            }
            for m in self.models.values()
        ]
