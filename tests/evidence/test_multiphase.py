"""ccrcc_grade.evidence.multiphase: the multi-phase network."""

from __future__ import annotations

import json
import shutil

import pytest


def test_multiphase_network_trains_and_grades_a_patient_missing_a_phase(read_rows, write_rows, work, tmp_path):
    from ccrcc_grade.evidence.multiphase import MultiPhaseConfig, train_multiphase

    w = tmp_path / "w"
    shutil.copytree(work, w)
    rows = read_rows(w / "manifest.csv")
    splits = json.loads((w / "splits.json").read_text())
    gone = splits["test"][0]
    write_rows(w / "manifest.csv", [r for r in rows if not (r["patient_id"] == gone and r["phase"] == "excretory")])
    cfg = MultiPhaseConfig(
        work=str(w),
        out=str(tmp_path / "run"),
        epochs=1,
        image_size=32,
        repeats=1,
        weights="none",
        lr=1e-2,
        progress=False,
    )
    s = train_multiphase(cfg, splits)
    assert set(s.test) == set(splits["test"]) and gone in s.test and 0 <= s.test[gone] <= 1
    assert (tmp_path / "run" / "best.pt").is_file() and (
        tmp_path / "run" / "eval-test" / "predictions_patient.csv"
    ).is_file()
    again = train_multiphase(cfg, splits)  # a finished run is reused, with the same scores
    assert again.test == pytest.approx(s.test, abs=1e-6)


def test_multiphase_forward_masks_absent_phases():
    import torch

    from ccrcc_grade.evidence.multiphase import MultiPhaseNet

    torch.manual_seed(0)
    net = MultiPhaseNet().eval()
    x = torch.rand(2, 4, 3, 32, 32)
    present = torch.tensor([[True, True, True, False], [True, True, True, False]])
    with torch.no_grad():
        a = net(x, present)
        x2 = x.clone()
        x2[:, 3] = torch.rand(2, 3, 32, 32)  # what an absent phase holds is ignored
        assert torch.allclose(a, net(x2, present))
