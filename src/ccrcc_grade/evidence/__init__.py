"""Evidence beyond the study's Table 3: every model on the same test patients.

scores (patient-level P(high) of any model) -> fusion (late fusion of the phase networks),
multiphase (one network over the four phases), radiomics (pyradiomics + LASSO + SVM/logistic),
clinical_model (clinical and DL + clinical nomogram) -> calibration (slope, intercept, ECE,
Brier, decision curves) -> comparison (one table, DeLong against the best phase, Holm) ->
run (what `study` calls).
"""

from ccrcc_grade.evidence.calibration import calibration_summary, net_benefit, treat_all
from ccrcc_grade.evidence.comparison import compare_models, holm
from ccrcc_grade.evidence.scores import KINDS, ModelScores

__all__ = ["ModelScores", "KINDS", "calibration_summary", "net_benefit", "treat_all", "compare_models", "holm"]
