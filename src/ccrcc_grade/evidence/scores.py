"""Patient-level scores of any model (a phase network, a fusion, radiomics, clinical), the one
currency in which the study's models are compared."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ccrcc_grade.core.errors import CcrccError, check_number
from ccrcc_grade.core.threshold import DEFAULT_THRESHOLD

KINDS = ("phase", "fusion", "radiomics", "clinical", "combined")


@dataclass
class ModelScores:
    """P(high) per patient on the validation and test patients of one model."""

    name: str
    kind: str
    test: dict[str, float]
    val: dict[str, float] = field(default_factory=dict)
    description: str = ""
    threshold: float = DEFAULT_THRESHOLD
    threshold_source: str = "study default"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise CcrccError(f"model {self.name}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        for part in (self.test, self.val):
            for pid, p in part.items():
                part[pid] = check_number(p, f"model {self.name}: P(high) of patient {pid}", 0, 1)

    def arrays(self, labels: dict[str, int], part: str = "test") -> tuple[list[str], np.ndarray, np.ndarray]:
        scores = self.test if part == "test" else self.val
        ids = sorted(scores)
        missing = [i for i in ids if i not in labels]
        if missing:
            raise CcrccError(f"model {self.name}: patients without a grade: {', '.join(missing[:5])}")
        return ids, np.array([labels[i] for i in ids]), np.array([scores[i] for i in ids])
