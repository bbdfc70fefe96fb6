"""predict on a patient never seen in training, Grad-CAM, ONNX export, and prediction errors."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.model.predict import predict_patient

from conftest import run_cli


@pytest.fixture(scope="module")
def evaluated(trained_run):
    if not (trained_run / "eval-test" / "predictions_patient.csv").is_file():
        assert run_cli("evaluate", trained_run, "--bootstrap", "50") == 0
    rows = list(csv.DictReader(open(trained_run / "eval-test" / "predictions_patient.csv")))
    return {r["patient_id"]: float(r["prob_high"]) for r in rows}


def test_predict_matches_evaluate_for_unseen_patients(trained_run, slices_cohort, evaluated, tmp_path, capsys):
    ckpt = torch.load(trained_run / "best.pt", weights_only=True)
    for pid in ckpt["splits"]["test"]:
        assert pid not in ckpt["splits"]["train"]
        assert run_cli("predict", trained_run / "best.pt", slices_cohort / pid, "--json", tmp_path / f"{pid}.json") == 0
        r = json.loads((tmp_path / f"{pid}.json").read_text())
        assert r["patient_id"] == pid and r["phase"] == "parenchymal"
        assert r["prob_high"] == pytest.approx(evaluated[pid], abs=1e-5)
        assert r["grade"] == ("high" if r["prob_high"] >= r["threshold"] else "low")
        assert r["threshold"] == pytest.approx(ckpt["threshold"]) == 0.5   # tiny validation: the study default
        assert r["threshold_policy"]["method"] == "default" and "(study default)" in r["decision"]
        assert len(r["slices"]) == len(list((slices_cohort / pid / "parenchymal").glob("*.json")))
        assert r["model"]["architecture"] == "resnet34" and r["model"]["val_auc"] is not None
    out = capsys.readouterr().out
    assert "P(high) = " in out and "(study default) -> " in out


def test_predict_dicom_series_with_boxes(trained_run, dicom_cohort, slices_cohort, tmp_path):
    pid = torch.load(trained_run / "best.pt", weights_only=True)["splits"]["test"][0]
    boxes = tmp_path / "boxes.csv"
    rows = [r for r in csv.DictReader(open(dicom_cohort / "boxes.csv")) if r["patient_id"] == pid]
    with open(boxes, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    r = predict_patient(trained_run / "best.pt", dicom_cohort / pid / "parenchymal", boxes=boxes)
    ref = predict_patient(trained_run / "best.pt", slices_cohort / pid / "parenchymal")
    assert len(r["slices"]) == len(ref["slices"])
    assert r["prob_high"] == pytest.approx(ref["prob_high"], abs=0.03)   # DICOM vs exported PNG of the same scan


def test_gradcam_overlays_heat_inside_the_box(trained_run, slices_cohort, tmp_path):
    from ccrcc_grade.model.explain import box_heatmap, gradcam
    from ccrcc_grade.model.inference import load_model

    pid = torch.load(trained_run / "best.pt", weights_only=True)["splits"]["test"][0]
    r = predict_patient(trained_run / "best.pt", slices_cohort / pid, cam_dir=tmp_path / "cam")
    pngs = sorted(p for p in (tmp_path / "cam").glob("*.png") if not p.name.endswith("_heat.png"))
    assert len(pngs) == len(r["slices"]) and all(s["cam"].endswith(".png") for s in r["slices"])
    assert len(list((tmp_path / "cam").glob("*_heat.png"))) == len(r["slices"])   # the viewer's heat layers
    model, ckpt = load_model(trained_run / "best.pt")
    crops = np.random.default_rng(0).integers(0, 256, (2, 48, 48)).astype(np.uint8)
    cams = gradcam(model, crops, ckpt["preprocess"]["image_size"], ckpt["preprocess"]["normalize"])
    assert cams.shape == (2, 48, 48) and cams.min() >= 0 and cams.max() <= 1
    box = r["slices"][0]["box"]
    heat = box_heatmap((128, 128), tuple(box), np.ones((48, 48)))
    inside = np.zeros((128, 128), bool)
    inside[int(np.floor(box[1])):int(np.ceil(box[3])), int(np.floor(box[0])):int(np.ceil(box[2]))] = True
    assert heat[~inside].sum() == 0 and heat[inside].min() > 0.9


def test_onnx_export_and_prediction(trained_run, slices_cohort, tmp_path, capsys):
    onnx_path = tmp_path / "m.onnx"
    assert run_cli("export", trained_run / "best.pt", "--onnx", onnx_path) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["max_abs_diff"] < 1e-4
    card = json.loads((tmp_path / "m.card.json").read_text())     # the workstation's model card beside it
    assert card["architecture"] == "resnet34" and card["disclaimer"] == "research software, not a medical device"
    pid = torch.load(trained_run / "best.pt", weights_only=True)["splits"]["test"][0]
    a = predict_patient(onnx_path, slices_cohort / pid)
    b = predict_patient(trained_run / "best.pt", slices_cohort / pid)
    assert a["prob_high"] == pytest.approx(b["prob_high"], abs=0.02)   # fp32 ONNX vs bf16 PyTorch on this CPU
    assert a["model"]["architecture"] == "resnet34" and a["threshold"] == b["threshold"]


def _err(capsys, *args):
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_prediction_errors(trained_run, slices_cohort, tmp_path, capsys):
    pid = torch.load(trained_run / "best.pt", weights_only=True)["splits"]["test"][0]
    junk = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(2)}, junk)
    assert "not a ccrcc-grade model file" in _err(capsys, "predict", junk, slices_cohort / pid)
    ck = torch.load(trained_run / "best.pt", weights_only=True)
    ck["format_version"] = 99
    torch.save(ck, tmp_path / "future.pt")
    assert "incompatible ccrcc-grade version" in _err(capsys, "predict", tmp_path / "future.pt", slices_cohort / pid)
    (tmp_path / "x.onnx").write_bytes(b"nope")
    assert "not a readable ONNX model" in _err(capsys, "predict", tmp_path / "x.onnx", slices_cohort / pid)
    assert "trained on the parenchymal phase" in _err(capsys, "predict", trained_run / "best.pt",
                                                      slices_cohort / pid / "plain")
    p = tmp_path / "pat"
    shutil.copytree(slices_cohort / pid, p / pid)
    for j in (p / pid / "parenchymal").glob("*.json"):
        j.unlink()
    assert "no tumour boxes" in _err(capsys, "predict", trained_run / "best.pt", p / pid / "parenchymal")
    shutil.rmtree(p / pid / "parenchymal")
    assert "no parenchymal folder" in _err(capsys, "predict", trained_run / "best.pt", p / pid)
    q = tmp_path / "q"
    shutil.copytree(slices_cohort / pid / "parenchymal", q)
    img = sorted(q.glob("*.png")) or sorted(q.glob("*.bmp"))
    for f in img:
        f.write_bytes(b"\x89PNG broken")
    assert "unreadable or truncated image" in _err(capsys, "predict", trained_run / "best.pt", q)
    assert "input not found" in _err(capsys, "predict", trained_run / "best.pt", tmp_path / "missing")
    assert "a folder without best.pt" in _err(capsys, "predict", tmp_path, slices_cohort / pid)


def test_predict_accepts_a_run_folder(trained_run, slices_cohort):
    """Issue #16: `predict RUN_FOLDER` said 'model file not found'."""
    pid = torch.load(trained_run / "best.pt", weights_only=True)["splits"]["test"][0]
    a = predict_patient(trained_run, slices_cohort / pid)
    b = predict_patient(trained_run / "best.pt", slices_cohort / pid)
    assert a["prob_high"] == b["prob_high"] and a["decision"] == b["decision"]


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_both_cpu_backends_give_the_fp32_probabilities(trained_run, work, backend):
    """Issue 12: predict/evaluate run a checkpoint on PyTorch or on ONNX Runtime (the choice for
    CPUs without bf16); both agree with the plain fp32 network and say which ran."""
    import numpy as np

    from ccrcc_grade.ingest.cache import CropCache
    from ccrcc_grade.model.inference import cpu_has_fast_bf16, load_model, predict_probs
    from ccrcc_grade.model.predict import load_predictor

    cache = CropCache.load(work)
    crops = np.asarray(cache.crops[[r["index"] for r in cache.select("parenchymal")][:24]])
    model, ck = load_model(trained_run / "best.pt", "cpu")
    ref = predict_probs(model, crops, ck["preprocess"]["image_size"], ck["preprocess"]["normalize"],
                        torch.device("cpu"))
    fn, meta, _ = load_predictor(trained_run, "cpu", backend=backend)
    got = fn(crops)
    bf16 = backend == "torch" and cpu_has_fast_bf16()
    assert np.max(np.abs(got - ref)) < (0.03 if bf16 else 1e-4)
    assert meta["backend"].startswith(backend if backend == "onnxruntime" else "torch cpu")


@pytest.mark.parametrize("env, expected", [("torch", "torch"), ("onnxruntime", "onnxruntime"), ("", None)])
def test_cpu_backend_choice(monkeypatch, env, expected):
    from ccrcc_grade.model.inference import cpu_backend, cpu_has_fast_bf16

    monkeypatch.setenv("CCRCC_CPU_BACKEND", env)
    assert cpu_backend() == (expected or ("torch" if cpu_has_fast_bf16() else "onnxruntime"))


def test_cpu_backend_refuses_an_unknown_override(monkeypatch):
    from ccrcc_grade.model.inference import cpu_backend

    monkeypatch.setenv("CCRCC_CPU_BACKEND", "tensorrt")
    with pytest.raises(CcrccError, match="CCRCC_CPU_BACKEND must be torch or onnxruntime"):
        cpu_backend()


def test_int8_export_is_checked_on_validation_and_recorded(trained_run, slices_cohort, tmp_path, capsys):
    onnx_path = tmp_path / "m8.onnx"
    code = run_cli("export", trained_run, "--onnx", onnx_path, "--int8")
    out, err = capsys.readouterr()
    if code == 2:   # refused: the int8 model lost more than 0.01 validation AUC - then nothing is written
        assert "is more than 0.01 below fp32" in err and not onnx_path.exists()
        return
    info = json.loads(out)["int8"]
    assert info["val_image_auc_fp32"] - info["val_image_auc_int8"] <= 0.01 and info["calibration_crops"] > 0
    from ccrcc_grade.model.onnx_runtime import read_onnx_metadata

    assert read_onnx_metadata(onnx_path)["int8"] == info                     # travels with the model
    pid = torch.load(trained_run / "best.pt", weights_only=True)["splits"]["test"][0]
    r = predict_patient(onnx_path, slices_cohort / pid)
    assert r["model"]["backend"] == "onnxruntime int8 (exported model)" and 0 <= r["prob_high"] <= 1
    import onnx

    ops = {n.op_type for n in onnx.load(str(onnx_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_int8_export_needs_the_training_cohort(trained_run, tmp_path, capsys):
    ck = torch.load(trained_run / "best.pt", weights_only=True)
    ck["config"]["work"] = str(tmp_path / "gone")
    run = tmp_path / "run"
    run.mkdir()
    torch.save(ck, run / "best.pt")
    assert run_cli("export", run, "--onnx", tmp_path / "m8.onnx", "--int8") == 2
    assert "is not there" in capsys.readouterr().err and not (tmp_path / "m8.onnx").exists()


def test_onnx_backend_falls_back_for_a_model_it_cannot_run(work, tmp_path, monkeypatch):
    """A crop size other than the network's input size needs an antialiased resize that the ONNX
    exporter cannot write: on a CPU without bf16 such a model runs on PyTorch fp32 and says so;
    asking for ONNX Runtime explicitly is refused with the reason."""
    import numpy as np

    from ccrcc_grade.ingest.cache import CropCache
    from ccrcc_grade.core.config import TrainConfig
    from ccrcc_grade.model.predict import load_predictor
    from ccrcc_grade.model.train import fit

    run = tmp_path / "r"
    fit(TrainConfig(work=str(work), phase="parenchymal", model="resnet34", out=str(run), weights="none", epochs=1,
                    image_size=40, batch_size=16, progress=False))       # crops are 48 px: resized to 40
    monkeypatch.setenv("CCRCC_CPU_BACKEND", "onnxruntime")
    fn, meta, _ = load_predictor(run, "cpu")
    assert meta["backend"].startswith("torch cpu") and "(ONNX Runtime not possible for this model" in meta["backend"]
    cache = CropCache.load(work)
    probs = fn(np.asarray(cache.crops[[r["index"] for r in cache.select("parenchymal")][:4]]))
    assert np.all((probs >= 0) & (probs <= 1))
    with pytest.raises(CcrccError, match="cannot run on ONNX Runtime"):
        load_predictor(run, "cpu", backend="onnxruntime")


def test_export_refuses_a_model_the_exporter_cannot_write(work, tmp_path, capsys):
    from ccrcc_grade.core.config import TrainConfig
    from ccrcc_grade.model.train import fit

    run = tmp_path / "r"
    fit(TrainConfig(work=str(work), phase="parenchymal", model="resnet34", out=str(run), weights="none", epochs=1,
                    image_size=40, batch_size=16, progress=False))
    assert run_cli("export", run, "--onnx", tmp_path / "m.onnx") == 2
    assert "cannot export to ONNX" in capsys.readouterr().err and not (tmp_path / "m.onnx").exists()
