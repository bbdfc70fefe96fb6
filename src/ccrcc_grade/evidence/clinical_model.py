"""Clinical and combined (clinical + deep learning) logistic models.

* clinical: tumour size (the variable that differs between grades in the study's Table 2) plus
  every other numeric or two-valued clinical variable whose univariable test on the **training**
  patients gives P < 0.05 (Mann-Whitney U / Fisher's exact); fitted on the training patients
  (clinical variables are not scores of a network, so the training patients are unbiased for them);
* combined ("nomogram"): the best phase network's patient logit plus the clinical predictors,
  fitted on the **validation** patients, whose network scores are out of sample. Test patients
  are never used for fitting. Missing values are imputed with the fitting patients' median.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ccrcc_grade.core.config import LOGISTIC_C
from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.evidence.fusion import MIN_FIT_PER_CLASS
from ccrcc_grade.evidence.scores import ModelScores
from ccrcc_grade.io.clinical import ClinicalTable
from ccrcc_grade.stats.calibration import logit

SIZE_COLUMNS = (
    "tumor_size_cm",
    "tumour_size_cm",
    "tumor_size",
    "tumour_size",
    "size_cm",
    "max_diameter_cm",
    "tumor_size_mm",
    "tumour_size_mm",
)
SKIP = {"patient_id", "who_isup_grade", "grade", "center", "centre", "side"}


@dataclass
class Predictor:
    column: str
    level: str | None = None  # two-valued variables: 1 when the value equals this level

    @property
    def name(self) -> str:
        return self.column if self.level is None else f"{self.column}={self.level}"

    def value(self, row: dict[str, str]) -> float:
        v = (row.get(self.column) or "").strip()
        if v == "":
            return math.nan
        if self.level is not None:
            return float(v == self.level)
        try:
            return float(v)
        except ValueError:
            return math.nan


def size_column(table: ClinicalTable) -> str | None:
    lower = {c.lower(): c for c in table.columns}
    return next((lower[c] for c in SIZE_COLUMNS if c in lower), None)


def choose_predictors(table: ClinicalTable, train_ids: list[str]) -> tuple[list[Predictor], dict[str, float]]:
    """Tumour size plus the variables that differ (P < 0.05) between grades on training patients."""
    size = size_column(table)
    if size is None:
        raise CcrccError(
            f"{table.path}: no tumour size column ({', '.join(SIZE_COLUMNS[:3])}, ...); the clinical model needs it"
        )
    y = np.array([table.labels[i] for i in train_ids])
    chosen, pvals = [Predictor(size)], {}
    for col in table.columns:
        if col.lower() in SKIP or col == size:
            continue
        values = [(table.rows[i].get(col) or "").strip() for i in train_ids]
        levels = sorted({v for v in values if v})
        nums = []
        for v in values:
            try:
                nums.append(float(v) if v else math.nan)
            except ValueError:
                nums = None
                break
        if nums is not None and len(levels) > 2:
            x = np.array(nums)
            a, b = x[(y == 0) & np.isfinite(x)], x[(y == 1) & np.isfinite(x)]
            if len(a) < 2 or len(b) < 2:
                continue
            p = float(stats.mannwhitneyu(a, b).pvalue)
            pred = Predictor(col)
        elif len(levels) == 2:
            hit = np.array([v == levels[1] for v in values])
            known = np.array([bool(v) for v in values])
            t = [[int(np.sum(hit & known & (y == k))), int(np.sum(~hit & known & (y == k)))] for k in (0, 1)]
            p = float(stats.fisher_exact(t).pvalue)
            pred = Predictor(col, levels[1])
        else:
            continue
        pvals[pred.name] = p
        if p < 0.05:
            chosen.append(pred)
    return chosen, pvals


def _matrix(table: ClinicalTable, ids: list[str], preds: list[Predictor], medians: np.ndarray | None = None):
    x = np.array([[p.value(table.rows.get(i, {})) for p in preds] for i in ids], dtype=float).reshape(
        len(ids), len(preds)
    )
    if medians is None:
        medians = np.array([np.nanmedian(c) if np.any(np.isfinite(c)) else 0.0 for c in x.T])
    return np.where(np.isfinite(x), x, medians), medians


def _fit(x: np.ndarray, y: np.ndarray, what: str):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if min(np.sum(y == 0), np.sum(y == 1)) < MIN_FIT_PER_CLASS:
        raise CcrccError(
            f"{what}: its fitting patients hold {int(np.sum(y == 0))} low- and {int(np.sum(y == 1))} "
            f"high-grade cases; fitting needs >= {MIN_FIT_PER_CLASS} of each"
        )
    return make_pipeline(StandardScaler(), LogisticRegression(C=LOGISTIC_C, max_iter=1000)).fit(x, y)


def clinical_model(table: ClinicalTable, splits: dict) -> tuple[ModelScores, dict]:
    """The clinical model's scores and its description (predictors, univariable P, coefficients)."""
    train = [i for i in splits["train"] if i in table.labels]
    preds, pvals = choose_predictors(table, train)
    x, med = _matrix(table, train, preds)
    model = _fit(x, np.array([table.labels[i] for i in train]), "clinical model")
    out = {}
    for part in ("val", "test"):
        ids = [i for i in splits.get(part, []) if i in table.labels]
        out[part] = (
            dict(zip(ids, map(float, model.predict_proba(_matrix(table, ids, preds, med)[0])[:, 1]))) if ids else {}
        )
    info = {
        "predictors": [p.name for p in preds],
        "univariable_p_train": pvals,
        "fitted_on": "training patients",
        "coefficients_per_sd": dict(zip([p.name for p in preds], map(float, model[-1].coef_[0]))),
        "model": model,
        "medians": med,
        "predictor_objects": preds,
    }
    return ModelScores(
        "clinical",
        "clinical",
        out["test"],
        out["val"],
        "logistic regression of " + ", ".join(p.name for p in preds) + " (training patients)",
    ), info


def combined_model(
    table: ClinicalTable, dl: ModelScores, clinical_info: dict, splits: dict
) -> tuple[ModelScores, dict]:
    """Network logit + clinical predictors, fitted on validation patients."""
    preds = clinical_info["predictor_objects"]
    val = [i for i in splits.get("val", []) if i in dl.val and i in table.labels]

    def design(ids: list[str], scores: dict[str, float], med: np.ndarray | None = None) -> tuple:
        xc, med = _matrix(table, ids, preds, med)
        return np.column_stack([logit(np.array([scores[i] for i in ids])), xc]), med

    xv, med = design(val, dl.val)
    model = _fit(xv, np.array([table.labels[i] for i in val]), "combined model")
    test = [i for i in splits.get("test", []) if i in dl.test]
    pt = model.predict_proba(design(test, dl.test, med)[0])[:, 1] if test else []
    names = [f"{dl.name} logit"] + [p.name for p in preds]
    info = {
        "predictors": names,
        "fitted_on": "validation patients",
        "model": model,
        "medians": med,
        "coefficients_per_sd": dict(zip(names, map(float, model[-1].coef_[0]))),
    }
    return ModelScores(
        "nomogram (DL + clinical)",
        "combined",
        dict(zip(test, map(float, pt))),
        dict(zip(val, map(float, model.predict_proba(xv)[:, 1]))),
        f"logistic regression of the {dl.name} logit and "
        + ", ".join(p.name for p in preds)
        + " (validation patients)",
    ), info
