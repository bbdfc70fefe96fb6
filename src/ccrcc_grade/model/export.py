"""ONNX export: the classifier with its input transform, preprocessing recorded as metadata.

The exported graph takes crops exactly as the cache stores them - float (B, S, S) holding
0..255 grey values - and returns P(high grade) (B,), so ONNX Runtime needs nothing but the
shared crop code in front of it.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

import numpy as np
import torch
from torch import nn

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.fileio import atomic_write, atomic_write_json, refuse_overwriting_inputs
from ccrcc_grade.core.paths import RunDir, WorkDir
from ccrcc_grade.ingest.cache import CropCache
from ccrcc_grade.model.card import model_card
from ccrcc_grade.model.data import to_model_input
from ccrcc_grade.model.inference import load_model, read_checkpoint
from ccrcc_grade.model.onnx_runtime import ONNX_META_KEY, onnx_probs, onnx_weights_sha256
from ccrcc_grade.stats.metrics import aggregate_patients, safe_auc


class ProbabilityModel(nn.Module):
    """crops (B, S, S) in 0..255 -> P(high) (B,): the model input path + softmax in one graph."""

    def __init__(self, model: nn.Module, image_size: int, normalize: bool):
        super().__init__()
        self.model, self.image_size, self.normalize = model, image_size, normalize

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        x = to_model_input(crops, self.image_size, self.normalize)
        return torch.softmax(self.model(x), dim=1)[:, 1]


def onnx_graph(model: nn.Module, ckpt: dict) -> onnx.ModelProto:
    """The ONNX graph (ModelProto) of a network with its input transform and softmax, metadata attached."""
    import onnx

    pre = ckpt["preprocess"]
    wrapper = ProbabilityModel(model, pre["image_size"], pre["normalize"]).eval()
    size = pre["size"]
    example = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, size, size)).astype(np.uint8))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on the constant-size branch of the input transform
        torch.onnx.export(
            wrapper,
            (example.float(),),
            buf,
            input_names=["crops"],
            output_names=["prob_high"],
            dynamic_axes={"crops": {0: "batch"}, "prob_high": {0: "batch"}},
            opset_version=18,
            dynamo=False,
        )
    proto = onnx.load_from_string(buf.getvalue())
    meta = proto.metadata_props.add()
    meta.key = ONNX_META_KEY
    meta.value = json.dumps({**onnx_metadata(ckpt), "onnx_weights_sha256": onnx_weights_sha256(proto)})
    return proto


def onnx_metadata(ckpt: dict) -> dict:
    """What predict needs from the checkpoint, without the weights."""
    return {
        k: ckpt.get(k)
        for k in (
            "format",
            "format_version",
            "package_version",
            "created",
            "model",
            "classes",
            "phase",
            "preprocess",
            "threshold",
            "threshold_policy",
            "epoch",
            "best_epoch",
            "val",
            "weights_sha256",
            "reference",
        )
    }


INT8_MAX_AUC_LOSS = 0.01  # an int8 model is kept only within this validation AUC of fp32
INT8_CALIBRATION_CROPS = 256  # training crops that calibrate the activation ranges


def export_onnx(model_path: Path, out: Path, check: bool = True, int8: bool = False) -> dict:
    """Export ``best.pt`` to ONNX, write atomically and report the max |ONNX - PyTorch| difference.
    ``int8``: static int8 quantization (QDQ) calibrated on training crops, written only when its
    validation AUC is within ``INT8_MAX_AUC_LOSS`` of the fp32 model's (recorded in its metadata)."""
    import onnx

    model_path = Path(model_path)
    if model_path.is_dir():
        model_path = RunDir(model_path).best
    # the checkpoint read; an earlier export in the run folder may be replaced
    refuse_overwriting_inputs([("--onnx", out), ("--onnx", Path(out).with_suffix(".card.json"))], [model_path])
    if int8:
        return _export_int8(model_path, Path(out))
    model, ckpt = load_model(model_path, "cpu")
    pre = ckpt["preprocess"]
    wrapper = ProbabilityModel(model, pre["image_size"], pre["normalize"]).eval()
    size = pre["size"]
    try:
        proto = onnx_graph(model, ckpt)
    except Exception as exc:  # noqa: BLE001 - the exporter's own error types
        raise CcrccError(
            f"{model_path}: cannot export to ONNX ({exc.__class__.__name__}); a crop size other than the "
            f"network's input size ({size} vs {pre['image_size']} px) needs an antialiased resize the "
            "ONNX exporter cannot write - train with --image-size equal to the crop size"
        ) from None
    onnx.checker.check_model(proto)
    atomic_write(Path(out), lambda fh: fh.write(proto.SerializeToString()))
    card = Path(out).with_suffix(".card.json")  # the workstation's model card, beside the file
    atomic_write_json(card, {**model_card(Path(model_path), ckpt), "onnx_weights_sha256": _meta_value(proto)})
    info = {"onnx": str(out), "card": str(card), "model": ckpt["model"], "phase": ckpt["phase"]}
    if check:
        crops = np.random.default_rng(1).integers(0, 256, (8, size, size)).astype(np.uint8)
        with torch.no_grad():
            ref = wrapper(torch.from_numpy(crops).float()).numpy()
        got = onnx_probs(Path(out), crops)
        info["max_abs_diff"] = float(np.max(np.abs(ref - got)))
        if info["max_abs_diff"] > 1e-3:
            raise CcrccError(f"{out}: ONNX Runtime and PyTorch disagree (max |diff| {info['max_abs_diff']:.2e})")
    return info


def _meta_value(proto: onnx.ModelProto) -> str:
    return json.loads(next(m for m in proto.metadata_props if m.key == ONNX_META_KEY).value)["onnx_weights_sha256"]


def _cohort_crops(ckpt: dict, part: str) -> tuple[np.ndarray, list[dict]]:
    """The model's own crops of one split part (its phase), from the WORK cache it was trained on."""
    work = ckpt.get("config", {}).get("work")
    if not work or not WorkDir(work).is_ingested():
        raise CcrccError(
            f"--int8 calibrates on the model's training crops and checks its validation AUC, but its "
            f"WORK folder {work!r} is not there; export on the machine that holds it"
        )
    cache = CropCache.load(work)
    rows = cache.select(ckpt["phase"], set(ckpt["splits"][part]))
    if not rows:
        raise CcrccError(f"{work}: no {ckpt['phase']} crops of the {part} patients")
    return np.asarray(cache.crops[[r["index"] for r in rows]]), rows


def _export_int8(model_path: Path, out: Path) -> dict:
    """fp32 export -> ONNX Runtime static quantization (QDQ, per-channel int8 weights, uint8
    activations, MinMax calibration on training crops) -> validation AUC check -> write."""
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    ckpt = read_checkpoint(model_path)
    train, _ = _cohort_crops(ckpt, "train")
    val, val_rows = _cohort_crops(ckpt, "val")
    pick = np.random.default_rng(0).permutation(len(train))[:INT8_CALIBRATION_CROPS]
    calib = train[np.sort(pick)].astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"crops": calib[i : i + 32]} for i in range(0, len(calib), 32)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        fp32, pre, q = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        export_onnx(model_path, fp32, check=False)
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(q),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        labels = np.array([r["label"] for r in val_rows])
        pids = [r["patient_id"] for r in val_rows]
        aucs = {}
        for name, path in (("fp32", fp32), ("int8", q)):
            probs = onnx_probs(path, val)
            _, py, pp = aggregate_patients(pids, probs, labels, ckpt.get("config", {}).get("patient_aggregate", "mean"))
            aucs[name] = {"image": safe_auc(labels, probs), "patient": safe_auc(py, pp)}
        a32, a8 = aucs["fp32"]["image"], aucs["int8"]["image"]
        if a32 is None or a8 is None:
            raise CcrccError(
                f"{model_path}: the validation crops hold one grade only; the int8 model cannot be checked"
            )
        record = {
            "calibration_crops": int(len(calib)),
            "calibration": "MinMax on training crops",
            "format": "QDQ, per-channel int8 weights, uint8 activations",
            "val_image_auc_fp32": a32,
            "val_image_auc_int8": a8,
            "val_patient_auc_fp32": aucs["fp32"]["patient"],
            "val_patient_auc_int8": aucs["int8"]["patient"],
            "max_auc_loss": INT8_MAX_AUC_LOSS,
            "val_crops": int(len(val)),
        }
        if a32 - a8 > INT8_MAX_AUC_LOSS:
            raise CcrccError(
                f"{model_path}: int8 validation image AUC {a8:.4f} is more than {INT8_MAX_AUC_LOSS} below "
                f"fp32's {a32:.4f}; the int8 model is not written (export without --int8)"
            )
        proto = onnx.load(str(q))
        meta = next(m for m in proto.metadata_props if m.key == ONNX_META_KEY)
        meta.value = json.dumps(
            {**json.loads(meta.value), "int8": record, "onnx_weights_sha256": onnx_weights_sha256(proto)}
        )
        atomic_write(out, lambda fh: fh.write(proto.SerializeToString()))
    card = out.with_suffix(".card.json")
    atomic_write_json(card, {**model_card(model_path, ckpt), "int8": record, "onnx_weights_sha256": _meta_value(proto)})
    return {"onnx": str(out), "card": str(card), "model": ckpt["model"], "phase": ckpt["phase"], "int8": record}
