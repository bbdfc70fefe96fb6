"""Radiomics baseline: the approach the study cites (hand-crafted features + LASSO + SVM/logistic).

Features: pyradiomics (van Griethuysen et al., Cancer Res 2017), whose features follow the IBSI
definitions (deviations documented by the library). Chosen over mirp because its texture
matrices are computed in C (~0.1-0.4 s per patient and phase here, mirp's pure-Python
matrices are several times slower) and because it is what the radiomics papers on ccRCC grade
that the study cites used. It builds from source: `make setup` installs it with
`--no-build-isolation` after numpy, versioneer and scikit-build.

ROI: the study's box crop of every annotated slice (the same crops the networks see: window
40/290 mapped back to HU, so 0 and 255 are the window's ends), stacked into one volume per
patient and phase (the crop's outermost pixel ring left out: `box_mask`); texture matrices per
slice and aggregated (``force2D``, as 5 mm slices are
far thicker than the pixels). Shape features are left out (the ROI is a resized box, not the
tumour outline). Grey levels: fixed bin width 10 HU (IBSI's recommendation for calibrated CT).

Model: per patient the features of all phases side by side; median imputation, standardisation,
LASSO-logistic feature selection (the 5 features of highest ANOVA F when the penalty keeps
none), then a logistic regression or an RBF SVM (Platt-scaled
probabilities); the LASSO strength and the classifier's C chosen by 5-fold cross-validation on
the **training** patients only (the validation set of a small cohort is too small to tune on).
"""

from __future__ import annotations

import csv
import io
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.fileio import atomic_write_json, atomic_write_text
from ccrcc_grade.core.paths import WorkDir
from ccrcc_grade.core.phases import PHASES
from ccrcc_grade.core.progress import progress
from ccrcc_grade.evidence.scores import ModelScores
from ccrcc_grade.ingest.cache import CropCache
from ccrcc_grade.ingest.splits import load_splits
from ccrcc_grade.stats.metrics import safe_auc

FEATURE_CLASSES = ("firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")
SETTINGS = {
    "binWidth": 10,
    "force2D": True,
    "force2Ddimension": 0,
    "label": 1,
    "minimumROIDimensions": 2,
    "minimumROISize": 4,
}


def _extractor():
    try:
        from radiomics import featureextractor
    except ImportError:
        raise CcrccError(
            "radiomics needs pyradiomics: run `make setup` (it builds pyradiomics with "
            "--no-build-isolation), or pip install versioneer scikit-build numpy && "
            "pip install --no-build-isolation pyradiomics==3.0.1"
        ) from None
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    ext = featureextractor.RadiomicsFeatureExtractor(**SETTINGS)
    ext.disableAllFeatures()
    for c in FEATURE_CLASSES:
        ext.enableFeatureClassByName(c)
    return ext


def features(hu: np.ndarray, mask: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    """IBSI features of an HU volume (z, y, x) or slice (y, x) inside ``mask``; spacing in mm
    (x, y[, z]) as SimpleITK orders it."""
    import SimpleITK as sitk

    hu = np.asarray(hu, dtype=np.float32)
    mask = np.asarray(mask).astype(np.uint8)
    if hu.ndim == 2:
        hu, mask, spacing = hu[None], mask[None], (*spacing[:2], 1.0)
    if hu.shape != mask.shape:
        raise CcrccError(f"radiomics: image {hu.shape} and mask {mask.shape} differ in shape")
    if mask.sum() < SETTINGS["minimumROISize"]:
        raise CcrccError(
            f"radiomics: the ROI holds {int(mask.sum())} voxels; at least {SETTINGS['minimumROISize']} needed"
        )
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing(tuple(float(s) for s in spacing))
    msk = sitk.GetImageFromArray(mask)
    msk.CopyInformation(img)
    out = _extractor().execute(img, msk)
    return {k.removeprefix("original_"): float(v) for k, v in out.items() if k.startswith("original_")}


def crops_to_hu(crops_u8: np.ndarray, level: float, width: float) -> np.ndarray:
    """Cached uint8 crops back to HU on the window's scale (0 -> level - width/2, 255 -> level + width/2)."""
    return (level - width / 2 + crops_u8.astype(np.float32) / 255.0 * width).astype(np.float32)


def _patient_phase(args: tuple) -> tuple[str, str, dict[str, float]]:
    pid, phase, crops, level, width = args
    hu = crops_to_hu(crops, level, width)
    return pid, phase, features(hu, box_mask(hu.shape), (1.0, 1.0, 5.0))


def box_mask(shape: tuple[int, ...]) -> np.ndarray:
    """The whole box but its outermost pixel ring (pyradiomics refuses a mask without background;
    the ring is the box's 1-2 mm margin outside the tumour anyway)."""
    m = np.zeros(shape, np.uint8)
    m[..., 1:-1, 1:-1] = 1
    return m


def cohort_features(
    work: Path, workers: int | None = None, show_progress: bool = True
) -> tuple[list[str], list[str], np.ndarray]:
    """(patient ids, feature names, matrix) of every patient of a WORK cache, all phases side by
    side (NaN where a patient lacks a phase). Cached in WORK/radiomics/features.csv."""
    work = Path(work)
    dest = work / "radiomics" / "features.csv"
    cache = CropCache.load(work)
    phases = cache.phases()
    if dest.is_file():
        with open(dest, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        names, ids = rows[0][1:], [r[0] for r in rows[1:]]
        if set(ids) == set(cache.patient_labels()):
            return ids, names, np.array([[float(v) for v in r[1:]] for r in rows[1:]], dtype=float)
    jobs = []
    by_key: dict[tuple[str, str], list[int]] = {}
    for r in cache.manifest:
        by_key.setdefault((r["patient_id"], r["phase"]), []).append(r["index"])
    pre = cache.preprocess
    for (pid, phase), idx in sorted(by_key.items()):
        jobs.append((pid, phase, np.asarray(cache.crops[sorted(idx)]), pre.window_level, pre.window_width))
    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    values: dict[str, dict[str, float]] = {}
    with ProcessPoolExecutor(workers) as pool:
        for pid, phase, f in progress(
            pool.map(_patient_phase, jobs, chunksize=4),
            total=len(jobs),
            desc="radiomics",
            unit="volume",
            enable=show_progress,
        ):
            values.setdefault(pid, {}).update({f"{phase}_{k}": v for k, v in f.items()})
    names = [n for ph in phases for n in sorted({k for v in values.values() for k in v if k.startswith(ph + "_")})]
    ids = sorted(values)
    x = np.array([[values[i].get(n, np.nan) for n in names] for i in ids], dtype=float)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["patient_id", *names])
    for i, row in zip(ids, x):
        w.writerow([i, *(f"{v:.8g}" for v in row)])
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dest, buf.getvalue())
    return ids, names, x


class LassoSelect:
    """LASSO-logistic feature selection (features with a non-zero coefficient). When the L1
    penalty keeps nothing - common on a few dozen patients - the ``fallback`` features with the
    highest ANOVA F are kept instead, so the classifier always has an input (recorded in
    ``used_fallback_``). A scikit-learn transformer (get_params/set_params for the grid search)."""

    def __init__(self, C: float = 0.3, fallback: int = 5, seed: int = 0):
        self.C, self.fallback, self.seed = C, fallback, seed

    def get_params(self, deep: bool = True) -> dict:
        return {"C": self.C, "fallback": self.fallback, "seed": self.seed}

    def set_params(self, **params) -> LassoSelect:
        for k, v in params.items():
            setattr(self, k, v)
        return self

    def fit(self, x: np.ndarray, y: np.ndarray) -> LassoSelect:
        import sklearn
        from sklearn.feature_selection import f_classif
        from sklearn.linear_model import LogisticRegression

        # scikit-learn 1.8 replaced penalty="l1" by l1_ratio=1 (and warns on the old spelling)
        l1 = (
            {"l1_ratio": 1.0}
            if tuple(int(v) for v in sklearn.__version__.split(".")[:2]) >= (1, 8)
            else {"penalty": "l1"}
        )
        lasso = LogisticRegression(**l1, solver="liblinear", C=self.C, class_weight="balanced", random_state=self.seed)
        lasso.fit(x, y)
        self.support_ = np.abs(lasso.coef_[0]) > 1e-6
        self.used_fallback_ = not self.support_.any()
        if self.used_fallback_:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # constant features give F = NaN: ranked last
                f = np.nan_to_num(f_classif(x, y)[0], nan=-1.0)
            self.support_ = np.zeros(x.shape[1], bool)
            self.support_[np.argsort(-f)[: self.fallback]] = True
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x)[:, self.support_]

    def fit_transform(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.fit(x, y).transform(x)

    def get_support(self) -> np.ndarray:
        return self.support_


def _pipeline(classifier: str, seed: int):
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    clf = (
        LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000)
        if classifier == "logistic"
        else SVC(C=1.0, kernel="rbf", class_weight="balanced", random_state=seed)
    )
    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="median")),
            ("scale", StandardScaler()),
            ("lasso", LassoSelect(seed=seed)),
            ("clf", clf),
        ]
    )


def fit_radiomics(
    ids: list[str],
    names: list[str],
    x: np.ndarray,
    labels: dict[str, int],
    splits: dict,
    classifier: str = "svm",
    seed: int = 0,
) -> tuple[ModelScores, dict]:
    """Tune and fit on training patients; scores for validation and test patients."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    row = {i: k for k, i in enumerate(ids)}
    train = [i for i in splits["train"] if i in row]
    y = np.array([labels[i] for i in train])
    n_min = int(min(np.sum(y == 0), np.sum(y == 1)))
    if n_min < 3:
        raise CcrccError(f"radiomics: the training patients hold {n_min} cases of a grade; at least 3 are needed")
    grid = {"lasso__C": [0.05, 0.1, 0.3, 1.0], "clf__C": [0.1, 1.0, 10.0]}
    search = GridSearchCV(
        _pipeline(classifier, seed),
        grid,
        scoring="roc_auc",
        error_score=0.5,
        cv=StratifiedKFold(min(5, n_min), shuffle=True, random_state=seed),
        n_jobs=1,
    )
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # folds where LASSO keeps no feature are scored 0.5, by design
        search.fit(x[[row[i] for i in train]], y)
    model = search.best_estimator_
    kept = [n for n, k in zip(names, model.named_steps["lasso"].get_support()) if k]
    selection = "ANOVA F top 5 (LASSO kept no feature)" if model.named_steps["lasso"].used_fallback_ else "LASSO"
    prob = model.predict_proba if classifier == "logistic" else _platt(search, x[[row[i] for i in train]], y, seed)
    out = {}
    for part in ("val", "test"):
        pids = [i for i in splits.get(part, []) if i in row]
        out[part] = dict(zip(pids, map(float, prob(x[[row[i] for i in pids]])[:, 1]))) if pids else {}
    info = {
        "classifier": classifier,
        "best_params": search.best_params_,
        "inner_cv_auc": float(search.best_score_),
        "selected_features": kept,
        "n_features": len(names),
        "selection": selection,
        "fitted_on": "training patients (5-fold inner CV)",
    }
    return ModelScores(
        f"radiomics-{classifier}",
        "radiomics",
        out["test"],
        out["val"],
        f"{len(kept)} of {len(names)} IBSI features ({selection}), "
        f"{'RBF SVM' if classifier == 'svm' else 'logistic regression'} (training patients, inner CV)",
    ), info


def _platt(search: object, x: np.ndarray, y: np.ndarray, seed: int) -> object:
    """Platt scaling of the SVM's decision values, fitted on its cross-validated decision values
    on the training patients. SVC(probability=True) does this internally, but on a few dozen
    patients its internal folds can invert the ranking (probabilities that disagree with the
    decision function); here the map is fitted once and must increase, else the in-sample
    decision values are used."""
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    model = search.best_estimator_
    n_min = int(min(np.sum(y == 0), np.sum(y == 1)))
    d = cross_val_predict(
        clone(model),
        x,
        y,
        method="decision_function",
        cv=StratifiedKFold(min(5, n_min), shuffle=True, random_state=seed),
    )
    lr = LogisticRegression(C=1e6, max_iter=1000).fit(d[:, None], y)
    if lr.coef_[0, 0] <= 0:
        lr = LogisticRegression(C=1e6, max_iter=1000).fit(model.decision_function(x)[:, None], y)

    def prob(xx: np.ndarray) -> np.ndarray:
        return lr.predict_proba(model.decision_function(xx)[:, None])

    return prob


def radiomics_study(work: Path, splits: dict | None = None, seed: int = 0, show_progress: bool = True) -> dict:
    """`ccrcc-grade radiomics WORK`: features, both classifiers, scores; written to WORK/radiomics/."""
    work = Path(work)
    cache = CropCache.load(work)
    labels = cache.patient_labels()
    splits = splits or load_splits(WorkDir(work).splits, set(labels))
    ids, names, x = cohort_features(work, show_progress=show_progress)
    result: dict = {
        "n_patients": len(ids),
        "n_features": len(names),
        "phases": [p for p in PHASES if any(n.startswith(p + "_") for n in names)],
        "models": {},
    }
    scores = {}
    for clf in ("logistic", "svm"):
        s, info = fit_radiomics(ids, names, x, labels, splits, clf, seed)
        scores[clf] = s
        result["models"][s.name] = {**info, "val": s.val, "test": s.test}
    atomic_write_json(WorkDir(work).radiomics / "results.json", result)
    return {"result": result, "scores": scores}


def summary(result: dict, labels: dict[str, int]) -> str:
    lines = [
        f"radiomics: {result['n_features']} features of {result['n_patients']} patients ({', '.join(result['phases'])})"
    ]
    for name, m in result["models"].items():
        ids = sorted(m["test"])
        auc = safe_auc(np.array([labels[i] for i in ids]), np.array([m["test"][i] for i in ids]))
        lines.append(
            f"  {name}: {len(m['selected_features'])} features kept, inner-CV AUC {m['inner_cv_auc']:.3f}, "
            f"test patient AUC {'n/a' if auc is None else f'{auc:.3f}'} on {len(ids)} patients"
        )
    return "\n".join(lines)
