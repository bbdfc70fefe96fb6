"""ccrcc_grade.model.export: ONNX export, fp32 and int8."""

from __future__ import annotations

import json

import pytest
import torch

from ccrcc_grade.model.predict import predict_patient


def test_onnx_export_and_prediction(run_cli, trained_run, slices_cohort, tmp_path, capsys):
    onnx_path = tmp_path / "m.onnx"
    assert run_cli("export", trained_run / "best.pt", "--onnx", onnx_path) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["max_abs_diff"] < 1e-4
    card = json.loads((tmp_path / "m.card.json").read_text())  # the workstation's model card beside it
    assert card["architecture"] == "resnet34" and card["disclaimer"] == "research software, not a medical device"
    pid = torch.load(trained_run / "best.pt", weights_only=True)["splits"]["test"][0]
    a = predict_patient(onnx_path, slices_cohort / pid)
    b = predict_patient(trained_run / "best.pt", slices_cohort / pid)
    assert a["prob_high"] == pytest.approx(b["prob_high"], abs=0.02)  # fp32 ONNX vs bf16 PyTorch on this CPU
    assert a["model"]["architecture"] == "resnet34" and a["threshold"] == b["threshold"]


def test_int8_export_is_checked_on_validation_and_recorded(run_cli, trained_run, slices_cohort, tmp_path, capsys):
    onnx_path = tmp_path / "m8.onnx"
    code = run_cli("export", trained_run, "--onnx", onnx_path, "--int8")
    out, err = capsys.readouterr()
    if code == 2:  # refused: the int8 model lost more than 0.01 validation AUC - then nothing is written
        assert "is more than 0.01 below fp32" in err and not onnx_path.exists()
        return
    info = json.loads(out)["int8"]
    assert info["val_image_auc_fp32"] - info["val_image_auc_int8"] <= 0.01 and info["calibration_crops"] > 0
    from ccrcc_grade.model.onnx_runtime import read_onnx_metadata

    assert read_onnx_metadata(onnx_path)["int8"] == info  # travels with the model
    pid = torch.load(trained_run / "best.pt", weights_only=True)["splits"]["test"][0]
    r = predict_patient(onnx_path, slices_cohort / pid)
    assert r["model"]["backend"] == "onnxruntime int8 (exported model)" and 0 <= r["prob_high"] <= 1
    import onnx

    ops = {n.op_type for n in onnx.load(str(onnx_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_int8_export_needs_the_training_cohort(run_cli, trained_run, tmp_path, capsys):
    ck = torch.load(trained_run / "best.pt", weights_only=True)
    ck["config"]["work"] = str(tmp_path / "gone")
    run = tmp_path / "run"
    run.mkdir()
    torch.save(ck, run / "best.pt")
    assert run_cli("export", run, "--onnx", tmp_path / "m8.onnx", "--int8") == 2
    assert "is not there" in capsys.readouterr().err and not (tmp_path / "m8.onnx").exists()


def test_export_refuses_a_model_the_exporter_cannot_write(run_cli, resized_run, tmp_path, capsys):
    run = resized_run
    assert run_cli("export", run, "--onnx", tmp_path / "m.onnx") == 2
    assert "cannot export to ONNX" in capsys.readouterr().err and not (tmp_path / "m.onnx").exists()
