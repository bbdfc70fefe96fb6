"""ccrcc_grade.model.inference: devices, CPU backends and fast inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.model.registry import create_model


@pytest.mark.parametrize("name", ["resnet34", "se_resnet34"])
def test_fast_cpu_inference_matches_fp32(name):
    """The inference form used by evaluate and predict gives the fp32 network's probabilities
    (bf16 rounding only), whichever backend it picks on this CPU."""
    from ccrcc_grade.model.inference import fast_inference_model

    torch.manual_seed(0)
    m, _ = create_model(name)
    m.eval()
    with torch.no_grad():  # trained-like BN statistics instead of the init's
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        ref = torch.softmax(m(x), 1)
        fast, amp = fast_inference_model(m, torch.device("cpu"))
        from ccrcc_grade.model.inference import autocast

        with autocast(torch.device("cpu"), amp):
            got = torch.softmax(fast(x).float(), 1)
    from ccrcc_grade.model.inference import CpuBf16Model, cpu_has_fast_bf16

    if cpu_has_fast_bf16():  # AVX-512/AMX: the bf16 runner, within bf16 rounding
        assert isinstance(fast, CpuBf16Model) and amp is None
        assert torch.allclose(got, ref, atol=0.03), (got - ref).abs().max()
    else:  # AVX2 (or ATEN_CPU_CAPABILITY=avx2): fp32 with BN folded, exact to float rounding
        assert not isinstance(fast, CpuBf16Model) and amp is None
        assert torch.allclose(got, ref, atol=1e-4), (got - ref).abs().max()


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_both_cpu_backends_give_the_fp32_probabilities(trained_run, work, backend):
    """Issue 12: predict/evaluate run a checkpoint on PyTorch or on ONNX Runtime (the choice for
    CPUs without bf16); both agree with the plain fp32 network and say which ran."""

    from ccrcc_grade.ingest.cache import CropCache
    from ccrcc_grade.model.inference import cpu_has_fast_bf16, load_model, predict_probs
    from ccrcc_grade.model.predict import load_predictor

    cache = CropCache.load(work)
    crops = np.asarray(cache.crops[[r["index"] for r in cache.select("parenchymal")][:24]])
    model, ck = load_model(trained_run / "best.pt", "cpu")
    ref = predict_probs(
        model, crops, ck["preprocess"]["image_size"], ck["preprocess"]["normalize"], torch.device("cpu")
    )
    predictor = load_predictor(trained_run, "cpu", backend=backend)
    fn, meta = predictor, predictor.meta
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


def test_onnx_backend_falls_back_for_a_model_it_cannot_run(resized_run, work, monkeypatch):
    """A crop size other than the network's input size needs an antialiased resize that the ONNX
    exporter cannot write: on a CPU without bf16 such a model runs on PyTorch fp32 and says so;
    asking for ONNX Runtime explicitly is refused with the reason."""

    from ccrcc_grade.ingest.cache import CropCache
    from ccrcc_grade.model.predict import load_predictor

    run = resized_run  # crops are 48 px: resized to 40
    monkeypatch.setenv("CCRCC_CPU_BACKEND", "onnxruntime")
    predictor = load_predictor(run, "cpu")
    fn, meta = predictor, predictor.meta
    assert meta["backend"].startswith("torch cpu") and "(ONNX Runtime not possible for this model" in meta["backend"]
    cache = CropCache.load(work)
    probs = fn(np.asarray(cache.crops[[r["index"] for r in cache.select("parenchymal")][:4]]))
    assert np.all((probs >= 0) & (probs <= 1))
    with pytest.raises(CcrccError, match="cannot run on ONNX Runtime"):
        load_predictor(run, "cpu", backend="onnxruntime")
