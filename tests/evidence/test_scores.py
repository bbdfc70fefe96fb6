"""ccrcc_grade.evidence.scores: what a model's scores must be."""

from __future__ import annotations

import pytest

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.evidence.scores import ModelScores


@pytest.mark.parametrize(
    "scores, message",
    [
        ({"A": 1.5}, "P\\(high\\) of patient A"),
        ({"A": float("nan")}, "P\\(high\\) of patient A"),
    ],
)
def test_model_scores_refuse_bad_probabilities(scores, message):
    with pytest.raises(CcrccError, match=message):
        ModelScores("m", "fusion", scores)


def test_model_scores_refuse_an_unknown_kind():
    with pytest.raises(CcrccError, match="kind 'deep'"):
        ModelScores("m", "deep", {"A": 0.5})
