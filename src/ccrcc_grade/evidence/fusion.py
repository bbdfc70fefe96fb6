"""Late fusion of the per-phase networks' patient probabilities.

* ``mean``: the mean of a patient's available phase probabilities (nothing is fitted);
* ``logistic``: a logistic regression (L2, standardised logits) of the phase logits, fitted on
  the **validation** patients only - the networks' training patients would give optimistic
  scores, and the test patients are never used for fitting. A phase missing for a patient is
  imputed with that phase's mean validation logit (its missingness carries no grade signal).
"""

from __future__ import annotations

import numpy as np

from ccrcc_grade.core.config import LOGISTIC_C
from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.evidence.scores import ModelScores
from ccrcc_grade.stats.calibration import logit

MIN_FIT_PER_CLASS = 2  # a logistic model needs both grades among its fitting patients


def fuse_mean(phase_scores: dict[str, ModelScores], name: str = "fusion-mean") -> ModelScores:
    def mean(part: str) -> dict[str, float]:
        ids = sorted(set().union(*(getattr(m, part) for m in phase_scores.values())))
        return {
            i: float(np.mean([getattr(m, part)[i] for m in phase_scores.values() if i in getattr(m, part)]))
            for i in ids
        }

    return ModelScores(
        name,
        "fusion",
        mean("test"),
        mean("val"),
        f"mean of the {len(phase_scores)} phase models' patient probabilities",
    )


def _design(phase_scores: dict[str, ModelScores], ids: list[str], part: str, fill: dict[str, float]) -> np.ndarray:
    cols = []
    for ph, m in phase_scores.items():
        scores = getattr(m, part)
        cols.append([logit(np.array([scores[i]]))[0] if i in scores else fill[ph] for i in ids])
    return np.array(cols, dtype=float).T


def fuse_logistic(
    phase_scores: dict[str, ModelScores], labels: dict[str, int], name: str = "fusion-logistic"
) -> ModelScores:
    """Fit on validation patients (labels looked up for them only), predict validation and test."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    val_ids = sorted(set().union(*(m.val for m in phase_scores.values())))
    y = np.array([labels[i] for i in val_ids])
    if min(np.sum(y == 0), np.sum(y == 1)) < MIN_FIT_PER_CLASS:
        raise CcrccError(
            f"{name}: the validation patients hold {int(np.sum(y == 0))} low- and "
            f"{int(np.sum(y == 1))} high-grade cases; fitting needs >= {MIN_FIT_PER_CLASS} of each"
        )
    fill = {
        ph: float(np.mean(logit(np.array(list(m.val.values()))))) if m.val else 0.0 for ph, m in phase_scores.items()
    }
    model = make_pipeline(StandardScaler(), LogisticRegression(C=LOGISTIC_C, max_iter=1000))
    model.fit(_design(phase_scores, val_ids, "val", fill), y)
    test_ids = sorted(set().union(*(m.test for m in phase_scores.values())))
    p_test = model.predict_proba(_design(phase_scores, test_ids, "test", fill))[:, 1]
    p_val = model.predict_proba(_design(phase_scores, val_ids, "val", fill))[:, 1]
    coef = model[-1].coef_[0]
    return ModelScores(
        name,
        "fusion",
        dict(zip(test_ids, map(float, p_test))),
        dict(zip(val_ids, map(float, p_val))),
        "logistic regression of the phase logits fitted on validation patients ("
        + ", ".join(f"{ph} {c:+.2f}" for ph, c in zip(phase_scores, coef))
        + " per SD)",
    )
