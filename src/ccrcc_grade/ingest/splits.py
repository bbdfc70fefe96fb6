"""Patient-level, label-stratified splits: train/val/test by ratio and grouped K-fold.

A patient's slices always stay together, so no patient's tumour is seen in training and
scored in testing (the leak that image-level splitting causes).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from ccrcc_grade.core.config import SPLIT_RATIOS
from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.fileio import atomic_write_json
from ccrcc_grade.core.paths import WorkDir
from ccrcc_grade.core.phases import CLASSES
from ccrcc_grade.ingest.cache import CropCache


def parse_ratios(text: str) -> tuple[float, float, float]:
    try:
        parts = [float(p) for p in text.replace("/", ":").split(":")]
    except ValueError:
        raise CcrccError(f"--ratios must look like 8:1:1, got {text!r}") from None
    if len(parts) != 3 or not all(math.isfinite(p) for p in parts) or any(p < 0 for p in parts) or parts[0] <= 0:
        raise CcrccError(f"--ratios must be three non-negative numbers with train > 0, got {text!r}")
    s = sum(parts)
    return parts[0] / s, parts[1] / s, parts[2] / s


def split_patients(
    labels: dict[str, int], ratios: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[str]]:
    """Stratified train/val/test split of patient ids; every non-empty part gets both classes."""
    ids = sorted(labels)
    y = np.array([labels[p] for p in ids])
    parts_needed = sum(r > 0 for r in ratios)
    for k, cls in enumerate(CLASSES):
        n = int((y == k).sum())
        if n < parts_needed:
            raise CcrccError(
                f"too few {cls}-grade patients ({n}) for a split into {parts_needed} parts "
                f"with both classes in each (ratios {':'.join(f'{r:g}' for r in ratios)})"
            )
    _, r_val, r_test = ratios
    rest, test = (ids, [])
    if r_test > 0:
        rest, test = _stratified_cut(ids, y, r_test, seed)
    train, val = rest, []
    if r_val > 0:
        y_rest = np.array([labels[p] for p in rest])
        train, val = _stratified_cut(rest, y_rest, r_val / (1 - r_test), seed + 1)
    out = {"train": sorted(train), "val": sorted(val), "test": sorted(test)}
    check_disjoint(out)
    return out


def _stratified_cut(ids: list[str], y: np.ndarray, frac: float, seed: int) -> tuple[list[str], list[str]]:
    """Split off ``frac`` of ids, stratified, with at least one patient of each class cut off."""
    n_classes = len(set(y.tolist()))
    n_cut = max(n_classes, int(round(frac * len(ids))))
    n_cut = min(n_cut, len(ids) - n_classes)
    if n_cut < n_classes:
        raise CcrccError(f"too few patients ({len(ids)}) for this split")
    keep, cut = train_test_split(ids, test_size=n_cut, stratify=y, random_state=seed)
    return list(keep), list(cut)


def kfold_patients(labels: dict[str, int], folds: int, seed: int = 0) -> dict[str, int]:
    """Patient -> fold number (0..K-1), stratified by label."""
    ids = sorted(labels)
    y = np.array([labels[p] for p in ids])
    if folds < 2:
        raise CcrccError(f"--folds must be >= 2, got {folds}")
    for k, cls in enumerate(CLASSES):
        if (y == k).sum() < folds:
            raise CcrccError(f"too few {cls}-grade patients ({int((y == k).sum())}) for {folds}-fold cross-validation")
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    assign: dict[str, int] = {}
    for f, (_, test_idx) in enumerate(skf.split(np.zeros(len(ids)), y)):
        for i in test_idx:
            assign[ids[i]] = f
    return assign


def fold_split(assign: dict[str, int], fold: int, labels: dict[str, int], seed: int = 0) -> dict[str, list[str]]:
    """Parts for one cross-validation fold: test = that fold, val = a stratified 1/(K-1) of the
    rest (for model selection), train = the remainder."""
    k = max(assign.values()) + 1
    test = sorted(p for p, f in assign.items() if f == fold)
    rest = sorted(p for p, f in assign.items() if f != fold)
    y = np.array([labels[p] for p in rest])
    train, val = _stratified_cut(rest, y, 1.0 / (k - 1), seed + fold)
    out = {"train": sorted(train), "val": sorted(val), "test": test}
    check_disjoint(out)
    return out


def check_disjoint(parts: dict[str, list[str]]) -> None:
    """Raise if any patient appears in two parts."""
    seen: dict[str, str] = {}
    for name in ("train", "val", "test"):
        for p in parts.get(name, []):
            if p in seen:
                raise CcrccError(f"patient {p!r} is in both {seen[p]} and {name}")
            seen[p] = name


def make_splits(work: Path, ratios: str = SPLIT_RATIOS, seed: int = 0, folds: int = 0) -> dict:
    """Write WORK/splits.json for an ingested cohort and return it."""
    cache = CropCache.load(work)
    labels = cache.patient_labels()
    out: dict = split_patients(labels, parse_ratios(ratios), seed)
    out["seed"] = seed
    out["ratios"] = ratios
    if folds:
        out["folds"] = kfold_patients(labels, folds, seed)
    atomic_write_json(WorkDir(work).splits, out)
    return out


def load_splits(path: Path, patients: set[str] | None = None) -> dict:
    """Read and check a splits file; with ``patients`` (the cache's), every listed patient must
    exist there (a split naming unknown patients belongs to another cohort)."""
    path = Path(path)
    if not path.is_file():
        raise CcrccError(f"{path}: no splits file; run `ccrcc-grade split WORK` first")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise CcrccError(f"{path}: not a readable JSON file ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise CcrccError(f"{path}: must be a JSON object with train, val and test lists, got a {type(data).__name__}")
    for part in ("train", "val", "test"):
        if not isinstance(data.get(part), list) or not all(isinstance(p, str) for p in data[part]):
            raise CcrccError(f"{path}: missing the {part!r} list of patient ids")
        if len(set(data[part])) != len(data[part]):
            raise CcrccError(f"{path}: the {part} list names a patient twice")
    check_disjoint(data)
    if patients is not None:
        unknown = sorted({p for part in ("train", "val", "test") for p in data[part]} - set(patients))
        if unknown:
            raise CcrccError(
                f"{path}: names {len(unknown)} patient(s) not in the ingested cohort "
                f"({', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}); a split of another cohort?"
            )
    return data
