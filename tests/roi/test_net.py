"""ccrcc_grade.roi.net: the proposal network's checkpoint, its ONNX export and what loading refuses."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.io.boxes import Box
from ccrcc_grade.roi.net import load_roi_model, make_input
from ccrcc_grade.roi.volume import read_nifti_volume


def test_checkpoint_carries_its_preprocessing_and_the_onnx_export_agrees(roi_run, nifti_cohort):
    summary = json.loads((roi_run / "roi_train.json").read_text())
    assert summary["kind"] == "ccrcc-grade roi-proposal" and summary["cfg"]["size"] == 64
    assert len(summary["weights_sha256"]) == 64 and summary["log"][-1]["val_dice"] > 0.5
    pt, onnx = load_roi_model(roi_run, "torch"), load_roi_model(roi_run, "onnx")
    assert (pt.backend, onnx.backend) == ("torch", "onnx") and load_roi_model(roi_run).backend == "onnx"
    v = read_nifti_volume(nifti_cohort / "SYN001" / "parenchymal.nii.gz")
    x, _ = make_input(v.hu[len(v.hu) // 2], Box(60, 60, 100, 100), v.spacing, pt.cfg)
    a, b = pt.masks(x[None]), onnx.masks(x[None])
    assert a.shape == (1, 64, 64) and np.abs(a - b).max() < 1e-3


def _bad_onnx_size(run, tmp_path):
    import onnx

    from ccrcc_grade.model.onnx_runtime import ONNX_META_KEY

    proto = onnx.load(str(run / "roi_model.onnx"))
    prop = next(p for p in proto.metadata_props if p.key == ONNX_META_KEY)
    meta = json.loads(prop.value)
    meta["cfg"]["size"] = 96  # the graph was exported for 64 x 64 inputs
    prop.value = json.dumps(meta)
    out = tmp_path / "other-size.onnx"
    onnx.save(proto, str(out))
    return out


def _altered_weights(run, tmp_path):
    import torch

    ckpt = torch.load(run / "roi_model.pt", weights_only=False)
    k = next(iter(ckpt["state_dict"]))
    ckpt["state_dict"][k] = ckpt["state_dict"][k] + 0.01
    out = tmp_path / "altered.pt"
    torch.save(ckpt, out)
    return out


def _odd_size(run, tmp_path):
    import torch

    ckpt = torch.load(run / "roi_model.pt", weights_only=False)
    ckpt["cfg"]["size"] = 60  # three poolings need a multiple of 8
    out = tmp_path / "odd.pt"
    torch.save(ckpt, out)
    return out


BAD_MODELS = [
    ("a grading model", lambda run, tmp, graded: graded / "best.pt", "a grading model, not a tumour proposal model"),
    ("a text file", lambda run, tmp, graded: (tmp / "x.pt").write_text("hello") and tmp / "x.pt", "not a readable"),
    ("no model in the folder", lambda run, tmp, graded: tmp, "no roi_model.pt"),
    ("altered weights", lambda run, tmp, graded: _altered_weights(run, tmp), "checksum"),
    ("ONNX for another input size", lambda run, tmp, graded: _bad_onnx_size(run, tmp), "the graph takes input"),
    ("an input size the network cannot take", lambda run, tmp, graded: _odd_size(run, tmp), "input size 60"),
]


@pytest.mark.parametrize("case, make, needle", BAD_MODELS, ids=[b[0] for b in BAD_MODELS])
def test_what_is_not_a_usable_proposal_model_is_refused(roi_run, trained_run, tmp_path, case, make, needle):
    with pytest.raises(CcrccError) as e:
        load_roi_model(make(roi_run, tmp_path, trained_run))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_crops_of_another_size_are_refused(roi_run):
    m = load_roi_model(roi_run)
    with pytest.raises(CcrccError, match=r"input \(2, 96, 96\) but the model takes \(2, 64, 64\)"):
        m.masks(np.zeros((1, 2, 96, 96), np.float32))


def test_train_roi_refuses_a_cohort_without_masks_and_a_used_folder(run_cli, refused, capsys, tmp_path, dicom_cohort):
    refused(capsys, ["train-roi", dicom_cohort, "--out", tmp_path / "r"], "no volumes with tumour masks")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("mine")
    refused(capsys, ["train-roi", dicom_cohort, "--out", tmp_path / "used"], "not empty")
    assert (tmp_path / "used" / "x").read_text() == "mine"
    shutil.rmtree(tmp_path / "used")


def test_train_roi_reads_kits_case_folders_with_real_masks(kits_dir, tmp_path):
    """KiTS23's real tumour masks (label 2; the survey's imaging volumes are stand-ins of the same
    geometry): every case folder is read, the tumour label alone is the target."""
    import numpy as np

    from ccrcc_grade.io.nifti import load_ras
    from ccrcc_grade.roi.net import cohort_volumes, train_roi

    items = cohort_volumes(kits_dir)
    assert len(items) == 6 and {phase for _, phase, _, _ in items} == {"kits"}
    summary = train_roi(kits_dir, tmp_path / "roi", epochs=1, seed=0)
    assert summary["trained_on"]["volumes"] == 6 and len(summary["validation_patients"]) == 1
    seg, _ = load_ras(items[0][3])
    assert (seg == 2).any() and (seg == 1).any()  # kidney (1) and tumour (2) in the masks read
    assert np.isfinite(summary["log"][0]["loss"]) and (tmp_path / "roi" / "roi_model.onnx").is_file()
