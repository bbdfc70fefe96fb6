"""ccrcc_grade.evidence.fusion: late fusion of the phase networks."""

from __future__ import annotations

import numpy as np
import pytest

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.evidence.fusion import fuse_logistic, fuse_mean
from ccrcc_grade.evidence.scores import ModelScores


def _phase_scores(rng, val_ids, test_ids, labels, missing=()):
    out = {}
    for k, ph in enumerate(("plain", "corticomedullary", "parenchymal", "excretory")):
        signal = 0.3 + 0.4 * k / 3

        def score(pid, signal=signal):
            return float(np.clip(0.5 + signal * (labels[pid] - 0.5) + rng.normal(0, 0.2), 0.01, 0.99))

        out[ph] = ModelScores(
            f"resnet34-{ph}",
            "phase",
            {i: score(i) for i in test_ids if (i, ph) not in missing},
            {i: score(i) for i in val_ids},
        )
    return out


@pytest.fixture
def toy():
    rng = np.random.default_rng(1)
    val = [f"V{i:02d}" for i in range(20)]
    test = [f"T{i:02d}" for i in range(20)]
    labels = {i: int(k % 3 == 0) for k, i in enumerate(val + test)}
    return rng, val, test, labels


def test_fusion_fits_on_validation_only(toy):
    rng, val, test, labels = toy
    phases = _phase_scores(rng, val, test, labels)
    val_labels = {i: labels[i] for i in val}  # the test patients' grades are not even given
    fused = fuse_logistic(phases, val_labels)
    assert set(fused.test) == set(test) and set(fused.val) == set(val)
    # a test patient's score does not depend on the other test patients' scores (no transduction)
    phases2 = {
        ph: ModelScores(m.name, m.kind, {i: (0.99 if i != "T01" else p) for i, p in m.test.items()}, m.val)
        for ph, m in phases.items()
    }
    assert fuse_logistic(phases2, val_labels).test["T01"] == pytest.approx(fused.test["T01"])
    # the mean needs no fitting at all
    mean = fuse_mean(phases)
    assert mean.test["T00"] == pytest.approx(np.mean([m.test["T00"] for m in phases.values()]))


def test_fusion_with_a_missing_phase(toy):
    rng, val, test, labels = toy
    phases = _phase_scores(rng, val, test, labels, missing={("T03", "excretory"), ("T04", "plain")})
    fused = fuse_logistic(phases, labels)
    mean = fuse_mean(phases)
    assert {"T03", "T04"} <= set(fused.test) and all(0 <= p <= 1 for p in fused.test.values())
    assert mean.test["T03"] == pytest.approx(
        np.mean([phases[ph].test["T03"] for ph in ("plain", "corticomedullary", "parenchymal")])
    )


@pytest.mark.parametrize(
    "val_labels, message",
    [
        ({f"V{i:02d}": 0 for i in range(20)}, "0 low- and 0 high-grade|20 low- and 0 high-grade"),
        ({**{f"V{i:02d}": 0 for i in range(19)}, "V19": 1}, "19 low- and 1 high-grade"),
    ],
)
def test_fusion_refuses_a_validation_set_without_both_grades(toy, val_labels, message):
    import re

    rng, val, test, labels = toy
    with pytest.raises(CcrccError, match=re.compile(message)):
        fuse_logistic(_phase_scores(rng, val, test, labels), val_labels)
